// Remote command builders: every value reaches the host's shell as one literal argument.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { agentCommand, agentPath } from '../../src/deploy/agent.js';
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
