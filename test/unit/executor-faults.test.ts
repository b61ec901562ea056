// The executor (ship, rollback and prune: src/deploy/deploy.ts) run in-process against the real host
// agent on local hosts (test/support/local-fleet.ts), with the connection cut or the command killed at
// chosen steps (test/support/local-remote.ts). After each fault the host must be as the guarantees
// demand (README "Guarantees"): current still the old release (or switched back to it), no partial
// directory left, the cut-off step not run again, the lock released; and the next run succeeds.
// One host for the faults at each step (the executor's per-host sequence is deterministic there);
// two hosts, each in its own mount namespace over the same root, for what one host's failure does to
// the other. No Docker, no SSH.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoredArtifact } from '../../src/artifact/store.js';
import { rollback, setupHosts, ship } from '../support/executor.js';
import { HEALTHY_FILE, localFleet, type LocalFleet, type LocalSession } from '../support/local-fleet.js';
import { agentStep, type Fault } from '../support/local-remote.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';
import { writeRelease, type TreeEntry } from '../support/release.js';

const PYTHON = requirePython(TEST_PYTHONS.find((p) => p.label === 'python3')!);
const ID_A = '20260101000000Z-aaaaaaaa';
const ID_B = '20260102000000Z-bbbbbbbb';
const ID_BAD = '20260103000000Z-bad00000';

function tree(label: string, healthy = true): Record<string, TreeEntry> {
  // Big enough that the archive arrives in several chunks (a cut in the middle of it is a real cut).
  const big = Array.from({ length: 4000 }, (_, i) => `${label} line ${i} ${'x'.repeat(i % 97)}`).join('\n');
  return {
    ...(healthy ? { [HEALTHY_FILE]: 'yes\n' } : {}),
    'app.py': `RELEASE = ${JSON.stringify(label)}\n`,
    'bin/tool': { content: '#!/bin/sh\necho tool\n', mode: '0755' },
    'lib/data.txt': big,
    'lib/link': { link: '../app.py' },
  };
}

/** A dead process's pid: what a later run of the tool finds as the holder of a lock a cut run left. */
function deadPid(): number {
  return Number(execFileSync('sh', ['-c', 'sh -c "echo \\$\\$"'], { encoding: 'utf8' }).trim());
}

/** Where the host's root holds anything an operation leaves behind when cut. */
function leftovers(dir: string): string[] {
  const releases = readdirSync(path.join(dir, 'releases')).filter((n) => n.startsWith('.'));
  const tmpDir = path.join(dir, '.ckan-release', 'tmp');
  const tmp = existsSync(tmpDir) ? readdirSync(tmpDir).map((n) => `tmp/${n}`) : [];
  const root = readdirSync(dir).filter((n) => n.startsWith('.current'));
  return [...releases, ...tmp, ...root];
}

function lockOf(dir: string): { token: string; pid: number } | null {
  const f = path.join(dir, '.ckan-release', 'lock', 'owner.json');
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { token: string; pid: number }) : null;
}

describe('one local host: a fault at each step of a ship', () => {
  let fleet: LocalFleet;
  let A: StoredArtifact;
  let B: StoredArtifact;
  let template: string;
  const HOST = 'at-one';
  let dir: string;

  beforeAll(async () => {
    fleet = await localFleet([HOST]);
    dir = fleet.hosts[0]!.dir;
    A = await writeRelease(fleet.store, ID_A, tree('A'), { python: PYTHON, root: fleet.config.root });
    B = await writeRelease(fleet.store, ID_B, tree('B'), { python: PYTHON, root: fleet.config.root });
    setupHosts(fleet, PYTHON);
    await ship(fleet.session(), A);
    expect(fleet.current(HOST)).toBe(`releases/${ID_A}`);
    template = `${dir}.template`;
    cpSync(dir, template, { recursive: true, verbatimSymlinks: true });
  });
  afterAll(async () => {
    if (template) rmSync(template, { recursive: true, force: true });
    await fleet?.close();
  });

  /** The host as it was with A live, before each case. */
  function restore(): void {
    rmSync(dir, { recursive: true, force: true });
    cpSync(template, dir, { recursive: true, verbatimSymlinks: true });
  }

  /**
   * Ships B with the fault; then checks the host as the guarantees demand and ships B again without
   * faults. Returns the cut run's session and whether it failed.
   */
  async function cutShip(fault: Fault): Promise<{ s: LocalSession; failed: Error | undefined }> {
    restore();
    const s = fleet.session({ [HOST]: [fault] });
    const log = s.remotes[HOST]!.log;
    let failed: Error | undefined;
    try {
      await ship(s, B);
    } catch (e) {
      failed = e as Error;
    }
    const cut = log.findIndex((c) => c.outcome !== 'ok');
    expect(
      cut,
      `the fault fired: ${JSON.stringify(log.map((c) => [c.outcome, c.command.slice(0, 90)]))}`,
    ).toBeGreaterThanOrEqual(0);
    const cutCommand = log[cut]!.command;
    // The step that was cut off is never run again by this run (the restart's command line is the
    // same for the switch back's restart, a step of its own).
    if (!cutCommand.includes('restarts.log'))
      expect(log.slice(cut + 1).map((c) => c.command)).not.toContain(cutCommand);
    if (failed) {
      // Failed: the old release serves, as before the run (switched back if it had switched).
      expect(fleet.current(HOST), failed.message).toBe(`releases/${ID_A}`);
      expect(fleet.ledger(HOST).filter((e) => e.event === 'healthy' && e.release === ID_B)).toEqual([]);
      // The failed run cleaned up after itself: no partial directory, no uploaded manifest, no link.
      expect(leftovers(dir)).toEqual([]);
    } else {
      // Cut after B was found healthy (the ledger, prune or unlock step): B serves.
      expect(fleet.current(HOST)).toBe(`releases/${ID_B}`);
    }
    // A lock a cut unlock left behind belongs to this run's token; the next run (another process)
    // finds its holder gone and takes it over.
    const lock = lockOf(dir);
    if (lock) {
      expect(lock.token).toBe(s.op);
      const f = path.join(dir, '.ckan-release', 'lock', 'owner.json');
      writeFileSync(f, JSON.stringify({ ...JSON.parse(readFileSync(f, 'utf8')), pid: deadPid() }));
    }
    const next = fleet.session();
    await ship(next, B);
    expect(fleet.current(HOST)).toBe(`releases/${ID_B}`);
    expect(fleet.restarts(HOST).at(-1)).toBe(ID_B);
    expect(fleet.ledger(HOST).at(-1)).toMatchObject({ release: ID_B });
    expect(leftovers(dir)).toEqual([]);
    expect(lockOf(dir)).toBe(null);
    expect(readFileSync(path.join(dir, 'current', 'app.py'), 'utf8')).toBe('RELEASE = "B"\n');
    return { s, failed };
  }

  it.each([
    ['lock', 'after'],
    ['receive', 'before'],
    ['receive', 'after'],
    ['finalize', 'after'],
    ['switch', 'before'],
    ['switch', 'after'],
    ['health', 'after'],
    ['ledger', 'after'],
    ['prune', 'before'],
    ['unlock', 'before'],
  ] as const)('the connection cut at %s (%s it runs)', async (step, when) => {
    const { failed } = await cutShip({ match: agentStep(step), when });
    // Steps up to the health check fail the ship; after it, the release stays live.
    expect(!!failed, failed?.message).toBe(!['ledger', 'prune', 'unlock'].includes(step));
  });

  it('the connection cut at the restart, after it ran: switched back, restarted on the old release', async () => {
    const { failed } = await cutShip({ match: 'restarts.log', when: 'after' });
    expect(failed?.message).toMatch(
      /failed after switching; every switched host \(at-one\) was switched back/,
    );
    // A's first activation, the cut restart (on B), the switch back's (on A), the next run's (on B).
    expect(fleet.restarts(HOST)).toEqual([ID_A, ID_B, ID_A, ID_B]);
  });

  it('the agent killed in the middle of the archive, and the connection dropped there', async () => {
    const killed = await cutShip({ match: agentStep('receive'), when: 'kill', afterBytes: 2_000 });
    expect(killed.failed?.message).toMatch(/failed before any host switched; nothing changed on any host/);
    // Cut mid-archive: the agent reads what arrived, then the end of its input, and refuses.
    const dropped = await cutShip({ match: agentStep('receive'), when: 'drop', afterBytes: 2_000 });
    expect(dropped.failed?.message).toMatch(/failed before any host switched/);
    expect(dropped.s.remotes[HOST]!.log.find((c) => c.outcome === 'dropped')?.code).toBe(3);
  });

  it('a release that never becomes healthy is switched back, marked failed, and rolled back from', async () => {
    restore();
    const bad = await writeRelease(fleet.store, ID_BAD, tree('bad', false), {
      python: PYTHON,
      root: fleet.config.root,
    });
    await expect(ship(fleet.session(), bad)).rejects.toThrow(/did not become healthy within 1s: HTTP 500/);
    expect(fleet.current(HOST)).toBe(`releases/${ID_A}`);
    expect(fleet.ledger(HOST).slice(-4)).toMatchObject([
      { event: 'activated', release: ID_BAD },
      { event: 'activated', release: ID_A },
      { event: 'failed', release: ID_BAD },
      { event: 'rolled_back', release: ID_A },
    ]);
    expect(fleet.restarts(HOST).slice(-2)).toEqual([ID_BAD, ID_A]);
    // A ship of B prunes BAD (keep_releases 2: B current, A the rollback target); a rollback then goes
    // back to A, marks B bad, and keeps both (A current, B the newest other).
    const shipped = await ship(fleet.session(), B);
    expect(shipped.pruned).toEqual([{ host: HOST, release: ID_BAD, why: 'beyond keep_releases=2' }]);
    const r = await rollback(fleet.session(), A);
    expect(r.hosts).toEqual([{ host: HOST, previous: ID_B, current: ID_A }]);
    expect(fleet.current(HOST)).toBe(`releases/${ID_A}`);
    expect(fleet.restarts(HOST).at(-1)).toBe(ID_A);
    expect(
      fleet
        .ledger(HOST)
        .filter((e) => e.event === 'bad')
        .map((e) => e.release),
    ).toEqual([ID_B]);
    expect(readdirSync(path.join(dir, 'releases')).sort()).toEqual([ID_A, ID_B]);
    expect(r.pruned).toEqual([]);
    expect(leftovers(dir)).toEqual([]);
  });
});

describe('two local hosts on one root (a mount namespace each)', () => {
  let fleet: LocalFleet;
  let A: StoredArtifact;
  let B: StoredArtifact;
  const HOSTS = ['at-web1', 'at-web2'];

  beforeAll(async () => {
    fleet = await localFleet(HOSTS);
    A = await writeRelease(fleet.store, ID_A, tree('A'), { python: PYTHON, root: fleet.config.root });
    B = await writeRelease(fleet.store, ID_B, tree('B'), { python: PYTHON, root: fleet.config.root });
    setupHosts(fleet, PYTHON);
    const r = await ship(fleet.session(), A);
    expect(r.hosts.map((h) => [h.host, h.current])).toEqual(HOSTS.map((h) => [h, ID_A]));
  });
  afterAll(() => fleet?.close());

  it('each host has its own root; the shared mount point stays empty', () => {
    expect(readdirSync(fleet.config.root)).toEqual([]);
    for (const h of fleet.hosts) {
      expect(fleet.current(h.name)).toBe(`releases/${ID_A}`);
      expect(readFileSync(path.join(h.dir, 'current', 'ckan.ini'), 'utf8')).toBe(
        `[app:main]\nckan.site_id = ${ID_A}\n`,
      );
      // The shared link names the root's path, as on a real host.
      expect(readdirSync(path.join(h.dir, 'releases'))).toEqual([ID_A]);
    }
  });

  it('one host cut during its receive: no host switches, both cleaned, and the next run ships both', async () => {
    const s = fleet.session({ 'at-web2': [{ match: agentStep('receive'), when: 'after' }] });
    await expect(ship(s, B)).rejects.toThrow(/failed before any host switched; nothing changed on any host/);
    for (const h of fleet.hosts) {
      expect(fleet.current(h.name), h.name).toBe(`releases/${ID_A}`);
      expect(leftovers(h.dir), h.name).toEqual([]);
      expect(lockOf(h.dir), h.name).toBe(null);
      expect(fleet.ledger(h.name).filter((e) => e.release === ID_B && e.event === 'activated')).toEqual([]);
    }
    await ship(fleet.session(), B);
    for (const h of fleet.hosts) expect(fleet.current(h.name)).toBe(`releases/${ID_B}`);
  });

  it('one host cut after its switch: every switched host is switched back and restarted', async () => {
    await rollback(fleet.session(), A);
    const before = Object.fromEntries(HOSTS.map((h) => [h, fleet.restarts(h).length]));
    const s = fleet.session({ 'at-web2': [{ match: agentStep('switch'), when: 'after' }] });
    await expect(ship(s, B)).rejects.toThrow(/failed after switching; every switched host/);
    for (const h of HOSTS) {
      expect(fleet.current(h), h).toBe(`releases/${ID_A}`);
      // Whatever it served meanwhile, the last restart was on A.
      expect(fleet.restarts(h).slice(before[h]!).at(-1), h).toBe(ID_A);
      expect(fleet.ledger(h).at(-1), h).toMatchObject({ event: 'rolled_back', release: ID_A });
    }
  });
});
