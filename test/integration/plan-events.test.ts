// --dry-run plans and progress events against real sandbox hosts (e5-stage for staging, e5-prod for
// production). Every dry run is checked to change nothing: the whole <root> tree (paths, sizes, mtimes),
// the ledger and /etc/ckan/default are compared before and after. The plans are checked against what
// the hosts really have (current -> target, archive bytes, prune candidates, rollback targets), and the
// events of a real ship: JSON lines ending in a result, or timestamped plain lines on stderr.
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import type { DeployPlan, SetupPlan } from '../../src/plan.js';
import { freePorts, sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';
import { screen } from '../support/terminal.js';

const ROOT = '/usr/lib/ckan';
const STAGE = 'e5-stage';
const PROD = 'e5-prod';

let docker: Docker;
let project: TestProject;
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return project.cli('--config', project.config, ...argv);
}

async function ok(...argv: string[]): Promise<string> {
  const r = await run(...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** Everything a deploy could touch on a host: the tree under <root>, the ledger, the server files. */
async function snapshot(host: string): Promise<string> {
  const r = await onHost(
    docker,
    host,
    `find ${ROOT} /etc/ckan/default -printf '%p %s %T@ %m %u\\n' 2>&1 | sort; ` +
      `cat ${ROOT}/.ckan-release/ledger.jsonl 2>&1; readlink ${ROOT}/current; ` +
      `md5sum /etc/ckan/default/* 2>&1`,
  );
  return r.out;
}

function manifestOf(id: string): Manifest {
  return JSON.parse(
    readFileSync(path.join(project.dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
  ) as Manifest;
}

function jsonLines(out: string): { time: string; type: string; [k: string]: unknown }[] {
  return out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { time: string; type: string });
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  const ports = await freePorts(4);
  let text = readFileSync(project.config, 'utf8');
  text = text
    .replace('ssh_port: 2201, http_port: 8001', `ssh_port: ${ports[0]}, http_port: ${ports[1]}`)
    .replace('ssh_port: 2202, http_port: 8002', `ssh_port: ${ports[2]}, http_port: ${ports[3]}`)
    .replace('hosts: [sandbox-web1, sandbox-web2]', 'hosts: [sandbox-web1]')
    .replace(/^ {6}sandbox-web2: .*\n/m, '')
    .replaceAll('sandbox-staging', STAGE)
    .replaceAll('sandbox-web1', PROD)
    // One release besides the current one and the rollback target: prune has something to do.
    .replace('keep_releases: 3', 'keep_releases: 1');
  // A server file whose rendering changes with every release, to see the plan name it.
  writeFileSync(path.join(project.dir, 'templates/release.txt.j2'), 'release {{ release_id }}\n');
  text += `\nserver:\n  files:\n    - { template: templates/release.txt.j2, dest: /etc/ckan/default/release.txt }\n`;
  writeFileSync(project.config, text);

  // The build without a terminal: its step lines as before, the other lines timestamped.
  const a = await run('build');
  expect(a.code, a.err).toBe(0);
  A = a.out.trim();
  expect(a.err).toMatch(/^\[ *\d+\.\ds\] resolve$/m);
  expect(a.err).toMatch(/^\[ *\d+\.\ds\] pack$/m);
  expect(a.err).toMatch(
    new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ built ${A} in \\d+\\.\\d s: `, 'm'),
  );
  // The build with --json: step events, and the artifact in the last one.
  const b = await run(
    '--json',
    '--config',
    project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')),
    'build',
  );
  expect(b.code, b.err).toBe(0);
  const events = jsonLines(b.out);
  const steps = events.filter((e) => e.type === 'step');
  expect(steps.map((e) => e.step)).toEqual(expect.arrayContaining(['resolve', 'install', 'pack', 'store']));
  for (const e of steps)
    expect(e).toMatchObject({ count: 12, index: expect.any(Number), elapsed: expect.any(Number) });
  const result = events.at(-1)!;
  expect(result).toMatchObject({ type: 'result', command: 'build', ok: true, bytes: expect.any(Number) });
  B = String(result.id);
  expect(B).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
  expect(result.sha256).toBe(manifestOf(B).archive.sha256);
  expect(await ok('sandbox', 'up')).toMatch(new RegExp(`^${STAGE}: ssh 127\\.0\\.0\\.1:\\d+`, 'm'));
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('before setup', () => {
  it('setup --dry-run names what it would make and changes nothing', async () => {
    const before = await snapshot(STAGE);
    const out = await ok('setup', 'staging', '--dry-run');
    expect(out).toMatch(/^plan: setup staging \(dry run: nothing is changed\)$/m);
    // The sandbox image has an empty <root>: everything under it is to be made.
    const rootThere = (await onHost(docker, STAGE, `test -d ${ROOT}`)).code === 0;
    const dirs = ['.ckan-release', '.ckan-release/agent', 'releases', 'shared', 'shared/storage'];
    expect(out).toContain(
      `  ${STAGE}: would make ${[...(rootThere ? [] : [ROOT]), ...dirs.map((d) => `${ROOT}/${d}`)].join(', ')}\n`,
    );
    expect(out).toContain(`    adopt: nothing to adopt: no ${ROOT}/default/bin/python\n`);
    expect(out).toMatch(
      /^ {4}server file \/etc\/ckan\/default\/release\.txt: would be installed if different/m,
    );
    expect(await snapshot(STAGE)).toBe(before);
    const json = jsonLines(await ok('--json', 'setup', 'staging', '--dry-run'));
    const result = json.at(-1)!;
    expect(result).toMatchObject({ type: 'result', command: 'setup', ok: true });
    expect((result.plan as SetupPlan).hosts[0]!.make).toContain(`${ROOT}/releases`);
    expect(await snapshot(STAGE)).toBe(before);
  });

  it('ship --dry-run on a host never set up reads its facts without installing the agent', async () => {
    const before = await snapshot(PROD);
    const out = await ok('ship', 'production', A, '--force', '--dry-run');
    expect(out).toContain(`  ${PROD}: current none -> ${A}\n`);
    expect(out).toContain('    WOULD FAIL: not set up: run `ckan-release setup production` first\n');
    expect(await snapshot(PROD)).toBe(before);
  });
});

describe('plans and events', () => {
  it('setup, then --json ship emits parseable events ending in the result', async () => {
    await ok('setup', 'staging');
    await ok('setup', 'production');
    const r = await run('--json', 'ship', 'staging', A);
    expect(r.code, r.err).toBe(0);
    const events = jsonLines(r.out);
    for (const e of events) expect(e.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const types = events.map((e) => e.type);
    expect(types.at(-1)).toBe('result');
    expect(types.filter((t) => t === 'result')).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({
      command: 'ship',
      ok: true,
      environment: 'staging',
      release: A,
      hosts: [{ host: STAGE, previous: null, current: A }],
    });
    const phases = events.filter((e) => e.type === 'phase' && e.host === STAGE).map((e) => e.phase);
    expect(phases).toEqual(
      expect.arrayContaining([
        'preflight',
        'lock',
        'upload',
        'finalize',
        'staged',
        'switch',
        'restart',
        'health',
      ]),
    );
    expect(phases.indexOf('upload')).toBeLessThan(phases.indexOf('switch'));
    const uploads = events.filter((e) => e.type === 'upload');
    expect(uploads.at(-1)).toMatchObject({ host: STAGE, sent: manifestOf(A).archive.bytes });
    expect(events).toContainEqual(
      expect.objectContaining({ type: 'host-done', host: STAGE, previous: null, current: A }),
    );
    // The secrets of staging never appear in an event.
    const secrets = readFileSync(path.join(project.dir, 'secrets/staging.yml'), 'utf8');
    const values = [...secrets.matchAll(/^\w+: (\S+)$/gm)].map((m) => m[1]!);
    expect(values.length).toBeGreaterThan(0);
    for (const v of values) expect(r.out + r.err).not.toContain(v);
    expect(await currentOf(docker, STAGE)).toBe(`${ROOT}/releases/${A}`);
  });

  it('ship --dry-run: current -> target, the archive bytes, hooks, the server file; nothing changes', async () => {
    const before = await snapshot(STAGE);
    const out = await ok('ship', 'staging', B, '--dry-run');
    const bytes = manifestOf(B).archive.bytes;
    expect(out).toMatch(new RegExp(`^plan: ship ${B} to staging \\(dry run: nothing is changed\\)$`, 'm'));
    expect(out).toContain(`  ${STAGE}: current ${A} -> ${B}\n`);
    expect(out).toContain(
      `    transfer: ${(bytes / 1e6).toFixed(1)} MB (${bytes} bytes, ${manifestOf(B).files.length} files): at most the full archive; only the files the host lacks when it holds earlier releases\n`,
    );
    expect(out).toMatch(/^ {4}before_switch: .*db upgrade$/m);
    expect(out).toContain(
      '    server file /etc/ckan/default/release.txt: would be installed before the switch\n',
    );
    expect(out).toContain('    prune: nothing\n');
    expect(out).toContain(`    rollback target afterwards: ${A}\n`);
    expect(await snapshot(STAGE)).toBe(before);

    const json = jsonLines(await ok('--json', 'ship', 'staging', B, '--dry-run'));
    const plan = json.at(-1)!.plan as DeployPlan;
    expect(plan.hosts[0]).toMatchObject({
      host: STAGE,
      current: A,
      target: B,
      transfer: { mode: 'full archive', bytes },
      prune: [],
      rollback_target_after: A,
      server_files: [{ dest: '/etc/ckan/default/release.txt', change: 'install' }],
    });
    expect(await snapshot(STAGE)).toBe(before);
  });

  it('without a terminal, a ship reports in timestamped lines on stderr', async () => {
    const r = await run('ship', 'staging', B);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe(`${STAGE}: ${A} -> ${B}\n`);
    const stamp = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ';
    expect(r.err).toMatch(new RegExp(`^${stamp} connected to ${STAGE}$`, 'm'));
    expect(r.err).toMatch(new RegExp(`^${stamp} ${STAGE}: upload: \\d+ bytes$`, 'm'));
    expect(r.err).toMatch(
      new RegExp(
        `^${stamp} ${STAGE}: upload 100% \\d+\\.\\d MB/s \\(\\d+\\.\\d of \\d+\\.\\d MB, in \\d+\\.\\d s\\)$`,
        'm',
      ),
    );
    expect(r.err).toMatch(new RegExp(`^${stamp} ${STAGE}: done: runs ${B} \\(was ${A}\\)$`, 'm'));
    // Every line but the build's own is timestamped.
    for (const line of r.err.trim().split('\n')) expect(line).toMatch(new RegExp(`^${stamp} `));
  });

  it('rollback --dry-run: back to A, B would be pruned, no rollback target left; nothing changes', async () => {
    const before = await snapshot(STAGE);
    const out = await ok('rollback', 'staging', '--dry-run');
    expect(out).toContain(`  ${STAGE}: current ${B} -> ${A}\n`);
    expect(out).toContain('    transfer: none (already on the host)\n');
    // After the rollback B is bad, so it is no rollback target, and keep_releases=1 keeps only A.
    expect(out).toContain(`    prune: ${B} (beyond keep_releases=1; kept: ${A} (current))\n`);
    expect(out).toContain('    rollback target afterwards: none\n');
    expect(await snapshot(STAGE)).toBe(before);
  });

  it('promote --dry-run: production from none to what staging runs; nothing changes on either', async () => {
    const before = [await snapshot(STAGE), await snapshot(PROD)];
    const out = await ok('promote', 'staging', 'production', '--dry-run');
    expect(out).toMatch(new RegExp(`^plan: promote ${B} to production`, 'm'));
    expect(out).toContain(`  ${PROD}: current none -> ${B}\n`);
    expect(out).toContain(`    transfer: ${(manifestOf(B).archive.bytes / 1e6).toFixed(1)} MB`);
    expect(out).toContain('    rollback target afterwards: none\n');
    expect([await snapshot(STAGE), await snapshot(PROD)]).toEqual(before);
  });

  it('the real rollback does what its plan said', async () => {
    const r = await run('--json', 'rollback', 'staging');
    expect(r.code, r.err).toBe(0);
    const result = jsonLines(r.out).at(-1)!;
    expect(result).toMatchObject({ type: 'result', command: 'rollback', ok: true, release: A });
    expect(result.pruned).toEqual([{ host: STAGE, release: B, why: 'beyond keep_releases=1' }]);
    expect(await currentOf(docker, STAGE)).toBe(`${ROOT}/releases/${A}`);
    expect((await onHost(docker, STAGE, `ls ${ROOT}/releases`)).out.trim()).toBe(A);
  });

  it('on a terminal, a ship is a live display redrawn in place', async () => {
    // script(1) gives the command a pseudo-terminal, as an operator's shell would.
    const bin = path.resolve('bin/ckan-release');
    const line = `${bin} --config ${project.config} ship staging ${B}`;
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        'script',
        ['-qefc', line, '/dev/null'],
        { cwd: project.dir, env: { ...process.env, COLUMNS: '120', TERM: 'xterm' } },
        (err, stdout) => (err ? reject(new Error(`${String(err)}\n${stdout}`)) : resolve(stdout)),
      ),
    );
    const text = out.replace(/\r\n/g, '\n');
    // Rows are redrawn: the cursor goes up over them and clears, again and again.
    expect(text.split('\x1b[1A\r\x1b[J').length - 1).toBeGreaterThan(3);
    const rows = screen(text);
    expect(rows).toContain(`${STAGE}  done    runs ${B}`);
    expect(rows).toContain(`${STAGE}: ${A} -> ${B}`);
    expect(await currentOf(docker, STAGE)).toBe(`${ROOT}/releases/${B}`);
  });

  it('a failing --json command still ends in a result event', async () => {
    const r = await run('--json', 'ship', 'staging', 'nosuchid');
    expect(r.code).toBe(2);
    const last = jsonLines(r.out).at(-1)!;
    expect(last).toMatchObject({ type: 'result', command: 'ship', ok: false, exit_code: 2 });
    expect(String(last.error)).toMatch(/nosuchid/);
  });
});
