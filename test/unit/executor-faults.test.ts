// The executor (ship, rollback and prune: src/deploy/deploy.ts) run in-process against the real host
// agent on local hosts (test/support/local-fleet.ts), with the connection cut or the command killed at
// chosen steps (test/support/local-remote.ts). After each fault the host must be as the guarantees
// demand (README "Guarantees"): current still the old release (or switched back to it), no partial
// directory left, the cut-off step not run again, the lock released; and the next run succeeds.
// One host for the faults at each step (the executor's per-host sequence is deterministic there);
// two hosts, each in its own mount namespace over the same root, for what one host's failure does to
// the other. No Docker, no SSH.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoredArtifact } from '../../src/artifact/store.js';
import { rollback, setupHosts, ship } from '../support/executor.js';
import {
  faultBed,
  ID_A,
  ID_B,
  ID_BAD,
  ID_OLD,
  leftovers,
  lockOf,
  PYTHON,
  tree,
  type FaultBed,
} from '../support/fault-bed.js';
import { localFleet, type LocalFleet } from '../support/local-fleet.js';
import { agentStep } from '../support/local-remote.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';
import { writeRelease } from '../support/release.js';

describe('one local host: a fault at each step of a ship', () => {
  let bed: FaultBed;
  let fleet: LocalFleet;
  let A: StoredArtifact;
  let B: StoredArtifact;
  let dir: string;
  const HOST = 'at-one';
  let restore: () => void;
  let cutShip: FaultBed['cutShip'];

  beforeAll(async () => {
    bed = await faultBed(HOST);
    ({ fleet, A, B, dir, restore, cutShip } = bed);
  });
  afterAll(() => bed?.close());

  it.each([
    // One step of each phase (every command, before and after: test/integration/executor-sweep.test.ts).
    ['lock', 'after'],
    ['receive', 'after'],
    ['finalize', 'after'],
    ['switch', 'after'],
    ['health', 'after'],
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
    // The receive runs in the host's agent session (one channel): the drop ends that channel, so no
    // exit status comes back (the agent itself sees its data end inside a frame and stops).
    const cutChannel = dropped.s.remotes[HOST]!.log.find((c) => c.outcome === 'dropped');
    expect(cutChannel?.command).toMatch(/ serve\b/);
    expect(cutChannel?.code).toBe(null);
  });

  it('a rollback cut after its switch: back on the release it left, and the next rollback goes through', async () => {
    restore();
    await ship(fleet.session(), B);
    const cut = fleet.session({ [HOST]: [{ match: agentStep('switch'), when: 'after' }] });
    await expect(rollback(cut, A)).rejects.toThrow(/rollback failed after switching; every switched host/);
    expect(fleet.current(HOST)).toBe(`releases/${ID_B}`);
    expect(fleet.ledger(HOST).filter((e) => e.event === 'bad')).toEqual([]);
    expect(leftovers(dir)).toEqual([]);
    const r = await rollback(fleet.session(), A);
    expect(r.hosts).toEqual([{ host: HOST, previous: ID_B, current: ID_A }]);
    expect(fleet.current(HOST)).toBe(`releases/${ID_A}`);
    expect(fleet.restarts(HOST).at(-1)).toBe(ID_A);
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
    // A ship of B prunes BAD and the bed's older release (keep_releases 2: B current, A the rollback
    // target); a rollback then goes back to A, marks B bad, and keeps both (A current, B the newest other).
    const shipped = await ship(fleet.session(), B);
    expect(shipped.pruned).toEqual([
      { host: HOST, release: ID_BAD, why: 'beyond keep_releases=2' },
      { host: HOST, release: ID_OLD, why: 'beyond keep_releases=2' },
    ]);
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

describe('the agent on Python 2.7 (CentOS 7), driven by the executor', () => {
  it('ships, survives a cut receive, rolls back', async () => {
    const py27 = requirePython(TEST_PYTHONS.find((p) => p.label === '2.7')!);
    const fleet = await localFleet(['at-py27']);
    try {
      const opts = { python: py27, root: fleet.config.root };
      const A = await writeRelease(fleet.store, ID_A, tree('A'), opts);
      const B = await writeRelease(fleet.store, ID_B, tree('B'), opts);
      setupHosts(fleet, py27);
      await ship(fleet.session(), A);
      const cut = fleet.session({ 'at-py27': [{ match: agentStep('receive'), when: 'after' }] });
      await expect(ship(cut, B)).rejects.toThrow(/failed before any host switched/);
      expect(fleet.current('at-py27')).toBe(`releases/${ID_A}`);
      expect(leftovers(fleet.hosts[0]!.dir)).toEqual([]);
      await ship(fleet.session(), B);
      expect(fleet.current('at-py27')).toBe(`releases/${ID_B}`);
      await rollback(fleet.session(), A);
      expect(fleet.current('at-py27')).toBe(`releases/${ID_A}`);
      expect(fleet.ledger('at-py27').at(-1)).toMatchObject({ event: 'bad', release: ID_B });
      // Every agent session of the run was 2.7's (the artifact's python runs the agent).
      const sessions = cut.remotes['at-py27']!.log.filter((c) => / serve\b/.test(c.command));
      expect(sessions.length).toBeGreaterThan(0);
      for (const c of sessions) expect(c.command, c.command).toContain(`exec ${py27} `);
    } finally {
      await fleet.close();
    }
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
