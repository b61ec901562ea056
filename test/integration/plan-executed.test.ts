// The plan is the program: the plan `--dry-run --json` prints is the plan the executor then carries out
// (the real run's result event carries the plan it executed), for setup, ship, promote, rollback, the
// prune each of them ends with, and unlock; and the hosts end as the plan said (current, the releases
// and leftovers prune removed, the rollback target). A real sandbox fleet: production is two hosts
// (plan-web1, plan-web2), staging one (plan-stage); ports 2420-2422 / 8420-8422.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DeployPlan, SetupPlan, UnlockPlan } from '../../src/plan.js';
import { sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const STAGE = 'plan-stage';
const PROD = ['plan-web1', 'plan-web2'];

let docker: Docker;
let project: TestProject;
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0

type Json = { type: string; [k: string]: unknown };

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return project.cli('--config', project.config, ...argv);
}

async function ok(...argv: string[]): Promise<string> {
  const r = await run(...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** The result event (the last line) of a --json command. */
async function result(...argv: string[]): Promise<Json> {
  const lines = (await ok('--json', ...argv)).trim().split('\n');
  const last = JSON.parse(lines.at(-1)!) as Json;
  expect(last).toMatchObject({ type: 'result', ok: true });
  return last;
}

/**
 * Runs `argv` with --dry-run, then for real, and checks that the executed plan is the dry run's (but
 * for dry_run itself). Answers the real run's result event.
 */
async function sameplan<P extends { dry_run: boolean }>(
  ...argv: string[]
): Promise<{ plan: P; result: Json }> {
  const dry = (await result(...argv, '--dry-run')).plan as P;
  expect(dry.dry_run).toBe(true);
  const real = await result(...argv);
  const executed = real.plan as P;
  expect(executed).toBeDefined();
  expect(executed.dry_run).toBe(false);
  expect({ ...executed, dry_run: true }).toEqual(dry);
  return { plan: executed, result: real };
}

async function releasesOn(host: string): Promise<string[]> {
  const r = await onHost(docker, host, `ls -A ${ROOT}/releases`);
  return r.out.split('\n').filter(Boolean);
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  let text = readFileSync(project.config, 'utf8');
  text = text
    .replace('ssh_port: 2201, http_port: 8001', 'ssh_port: 2420, http_port: 8420')
    .replace('ssh_port: 2202, http_port: 8002', 'ssh_port: 2421, http_port: 8421')
    .replace('ssh_port: 2203, http_port: 8003', 'ssh_port: 2422, http_port: 8422')
    .replaceAll('sandbox-staging', STAGE)
    .replaceAll('sandbox-web1', PROD[0]!)
    .replaceAll('sandbox-web2', PROD[1]!)
    // One release kept besides the current one and the rollback target: prune has work to do.
    .replace('keep_releases: 3', 'keep_releases: 1')
    // A hook on every host after the switch, and one once: the plan says which host runs which.
    .replace(
      "db upgrade', once: true }\n",
      "db upgrade', once: true }\n    after_switch:\n      - { run: 'true after {{ host }}' }\n      - { run: 'true once', once: true }\n",
    );
  expect(text).toContain('true once');
  writeFileSync(project.config, text);
  A = (await ok('build')).trim();
  B = (
    await ok(
      '--config',
      project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')),
      'build',
    )
  ).trim();
  expect(await ok('sandbox', 'up')).toMatch(new RegExp(`^${STAGE}: ssh 127\\.0\\.0\\.1:2420`, 'm'));
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('the plan --dry-run prints is the plan the executor runs', () => {
  it('setup', async () => {
    const { plan } = await sameplan<SetupPlan>('setup', 'production');
    expect(plan.hosts.map((h) => h.host)).toEqual(PROD);
    expect(plan.hosts[0]!.make).toContain(`${ROOT}/releases`);
    for (const h of PROD) expect(await releasesOn(h)).toEqual([]);
    await ok('setup', 'staging');
  });

  it('ship: both hosts get the full archive, the once hooks run on the first host only', async () => {
    const { plan, result: r } = await sameplan<DeployPlan>('ship', 'production', A, '--force');
    expect(plan.hosts.map((h) => [h.host, h.current, h.target, h.transfer.mode])).toEqual([
      [PROD[0], null, A, 'full archive'],
      [PROD[1], null, A, 'full archive'],
    ]);
    expect(plan.hosts.map((h) => h.hooks.after_switch)).toEqual([
      ['true after {{ host }}', 'true once'],
      ['true after {{ host }}'],
    ]);
    expect(r.pruned).toEqual([]);
    for (const h of PROD) expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
  });

  it('promote: staging runs B; production gets exactly that, A stays as the rollback target', async () => {
    await ok('ship', 'staging', B);
    const { plan } = await sameplan<DeployPlan>('promote', 'staging', 'production');
    expect(plan.release).toBe(B);
    expect(plan.hosts.map((h) => [h.current, h.rollback_target_after, h.prune])).toEqual([
      [A, A, []],
      [A, A, []],
    ]);
    for (const h of PROD) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${B}`);
      expect(await releasesOn(h)).toEqual([A, B]);
    }
  });

  it("rollback, and its prune: B goes (bad, beyond keep_releases), and an interrupted run's leftovers", async () => {
    // What an operation cut off would leave on web1: a partial directory and a temporary file.
    await onHost(
      docker,
      PROD[0]!,
      `mkdir -p ${ROOT}/releases/.partial-${B}-0badf00d ${ROOT}/.ckan-release/tmp && ` +
        `echo '{}' > ${ROOT}/.ckan-release/tmp/0badf00d-manifest.json`,
    );
    const { plan, result: r } = await sameplan<DeployPlan>('rollback', 'production');
    expect(plan.release).toBe(A);
    const [w1, w2] = plan.hosts;
    expect(w1!.prune).toEqual([
      { release: B, why: `beyond keep_releases=1; kept: ${A} (current)` },
      {
        release: null,
        path: `.partial-${B}-0badf00d`,
        why: 'partial directory left by an interrupted operation',
      },
      {
        release: null,
        path: '.ckan-release/tmp/0badf00d-manifest.json',
        why: 'temporary file left by an interrupted operation',
      },
    ]);
    expect(w2!.prune).toEqual([{ release: B, why: `beyond keep_releases=1; kept: ${A} (current)` }]);
    expect(plan.hosts.map((h) => h.rollback_target_after)).toEqual([null, null]);
    // What the agent removed is what the plan said, on each host.
    expect(r.pruned).toEqual(
      expect.arrayContaining([
        { host: PROD[0], release: B, why: 'beyond keep_releases=1' },
        {
          host: PROD[0],
          release: `.partial-${B}-0badf00d`,
          why: 'partial directory left by an interrupted operation',
        },
        {
          host: PROD[0],
          release: '.ckan-release/tmp/0badf00d-manifest.json',
          why: 'temporary file left by an interrupted operation',
        },
        { host: PROD[1], release: B, why: 'beyond keep_releases=1' },
      ]),
    );
    expect(r.pruned).toHaveLength(4);
    for (const h of PROD) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
      expect(await releasesOn(h)).toEqual([A]);
      expect((await onHost(docker, h, `ls -A ${ROOT}/.ckan-release/tmp 2>/dev/null; true`)).out).toBe('');
    }
    // status decides the rollback target with the same rule: none left (B is bad and gone).
    const status = JSON.parse(await ok('--json', 'status', 'production')) as {
      hosts: { rollback_target: string | null }[];
    };
    expect(status.hosts.map((h) => h.rollback_target)).toEqual([null, null]);
  });

  it('ship again: the release pruned is sent again, the one current stays as the rollback target', async () => {
    const { plan } = await sameplan<DeployPlan>('ship', 'production', B, '--force');
    expect(plan.hosts.map((h) => [h.transfer.mode, h.rollback_target_after, h.prune.length])).toEqual([
      ['full archive', A, 0],
      ['full archive', A, 0],
    ]);
    for (const h of PROD) expect(await releasesOn(h)).toEqual([A, B]);
  });

  it('unlock: the lock the plan names is the one removed', async () => {
    await onHost(
      docker,
      PROD[1]!,
      `mkdir ${ROOT}/.ckan-release/lock && printf '%s' '{"user": "alice", "machine": "laptop", "pid": 4242, "operation": "ship production X", "token": "t0", "since": 1700000000, "expires": 1700000600}' > ${ROOT}/.ckan-release/lock/owner.json`,
    );
    const dry = JSON.parse(await ok('--json', 'unlock', 'production', '--dry-run')) as { plan: UnlockPlan };
    expect(dry.plan.hosts).toEqual([
      { host: PROD[0], lock: null },
      {
        host: PROD[1],
        lock: {
          holder: 'alice@laptop (pid 4242, ship production X, since 2023-11-14T22:13:20Z)',
          expired: true,
          token: 't0',
        },
      },
    ]);
    expect(await ok('unlock', 'production')).toBe(
      `${PROD[0]}: was not locked\n${PROD[1]}: removed the lock of alice@laptop (pid 4242, ship production X, since 2023-11-14T22:13:20Z)\n`,
    );
    expect(
      (await onHost(docker, PROD[1]!, `test -e ${ROOT}/.ckan-release/lock && echo held; true`)).out,
    ).toBe('');
  });
});
