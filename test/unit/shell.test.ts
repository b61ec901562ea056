// Remote command builders: every value reaches the host's shell as one literal argument.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentCommand, agentPath, HOST_PYTHON } from '../../src/deploy/agent.js';
import { cmd, maybeSudo, shq } from '../../src/deploy/shell.js';

const HOSTILE = [
  "it's",
  'a b',
  '$(touch /tmp/pwned)',
  '`id`',
  'x; rm -rf /',
  'line1\nline2',
  '"double"',
  "'",
  '',
  '*',
  '~root',
  '--flag',
  'a\\b',
];

describe('shell quoting', () => {
  it('leaves plain words alone and quotes everything else', () => {
    expect(shq('/usr/lib/ckan/releases/20261121234439Z-b6fc347d')).toBe(
      '/usr/lib/ckan/releases/20261121234439Z-b6fc347d',
    );
    expect(shq("it's")).toBe(`'it'\\''s'`);
    expect(shq('')).toBe(`''`);
    expect(cmd(['ls', '-l', 'a b'])).toBe(`ls -l 'a b'`);
  });

  it.each(HOSTILE)('a real sh receives %j as one unchanged argument', (value) => {
    // printf prints each argument between markers; a split, expanded or executed value would differ.
    const out = execFileSync('sh', ['-c', cmd(['printf', '[%s]', value, 'end'])], { encoding: 'utf8' });
    expect(out).toBe(`[${value}][end]`);
  });

  it('sudo -n goes in front, never prompting, and ends option parsing', () => {
    expect(maybeSudo(['rm', '-f', 'x'], true)).toEqual(['sudo', '-n', '--', 'rm', '-f', 'x']);
    expect(maybeSudo(['rm', '-f', 'x'], false)).toEqual(['rm', '-f', 'x']);
  });
});

describe('agent commands', () => {
  it('pass the arguments as one quoted JSON word to the agent of this version', () => {
    const line = agentCommand({ root: '/usr/lib/ckan', python: '/usr/bin/python3', sudo: true }, 'facts', {
      root: "/srv/it's here",
    });
    expect(line).toBe(
      `sudo -n -- /usr/bin/python3 ${agentPath('/usr/lib/ckan')} facts '{"root":"/srv/it'\\''s here"}'`,
    );
    expect(agentPath('/usr/lib/ckan')).toMatch(/^\/usr\/lib\/ckan\/\.ckan-release\/agent\/[0-9a-f]{12}\.py$/);
  });

  it('a hostile value inside the JSON arrives intact', () => {
    const args = { id: '$(touch /tmp/pwned)`id`', note: "x'; rm -rf / #\n" };
    const line = agentCommand({ root: '/r', python: 'python3', sudo: false }, 'ledger', args);
    const argv = execFileSync('sh', ['-c', line.replace(/^python3 \S+ /, `printf '%s\\n' `)], {
      encoding: 'utf8',
    });
    expect(argv.split('\n').slice(0, 1)).toEqual(['ledger']);
    expect(JSON.parse(argv.slice('ledger\n'.length, -1))).toEqual(args);
  });
});

describe("the agent without an artifact runs with the host's first python3, python2 or python", () => {
  /** Runs the command line in sh with PATH holding only fake interpreters that print how they ran. */
  function runWith(names: string[]) {
    const bin = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-pythons-'));
    try {
      for (const name of names) {
        writeFileSync(path.join(bin, name), `#!/bin/sh\nprintf '%s\\n' ${name} "$@"\n`);
        chmodSync(path.join(bin, name), 0o755);
      }
      symlinkSync('/bin/sh', path.join(bin, 'sh'));
      const line = agentCommand({ root: '/r', python: HOST_PYTHON, sudo: false }, 'facts', { root: "/it's" });
      // Only sh, the fakes and the shell's own builtins on PATH.
      return spawnSync('/bin/sh', ['-c', line], { encoding: 'utf8', env: { PATH: bin } });
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  }

  it.each([
    [['python3', 'python2', 'python'], 'python3'],
    [['python2', 'python'], 'python2'],
    [['python'], 'python'],
  ])('on a host with %j it is %s, in the one shell that runs the agent', (names, chosen) => {
    const r = runWith(names);
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n').slice(0, 4)).toEqual([chosen, agentPath('/r'), 'facts', `{"root":"/it's"}`]);
  });

  it('a host with none says so and exits 127', () => {
    const r = runWith([]);
    expect(r.status).toBe(127);
    expect(r.stderr).toMatch(
      /none of python3, python2, python on its PATH: the host agent needs Python 2\.7/,
    );
  });
});

describe('hook and restart templates', () => {
  it('render every variable as one literal shell word', async () => {
    const { shellVars } = await import('../../src/deploy/deploy.js');
    const { renderString } = await import('../../src/render/template.js');
    const vars = shellVars({
      release: '/usr/lib/ckan/releases/X',
      site: "a'b $(touch /tmp/pwned); `id`",
      plugins: ['a b', 'c'],
    });
    const line = renderString(
      "printf '[%s]' {{ release }}/bin/ckan {{ site }} {{ plugins | join(' ') }}",
      vars,
      'hook',
    );
    expect(execFileSync('sh', ['-c', line], { encoding: 'utf8' })).toBe(
      "[/usr/lib/ckan/releases/X/bin/ckan][a'b $(touch /tmp/pwned); `id`][a b][c]",
    );
  });
});

describe('credentials in URLs', () => {
  it('are redacted', async () => {
    const { redactUrls } = await import('../../src/redact.js');
    expect(redactUrls('fatal: https://bob:s3cret@git.example.org/x.git and ssh://git@h/y')).toBe(
      'fatal: https://***@git.example.org/x.git and ssh://***@h/y',
    );
    expect(redactUrls('git@github.com:ckan/ckan.git')).toBe('git@github.com:ckan/ckan.git');
  });
});
