// The bed of the in-process fault tests (test/unit/executor-faults.test.ts, and the sweep over every
// step in test/integration/executor-sweep.test.ts): one local host with release A live, restored
// before each case, and `cutShip`, which ships release B with a fault and then checks the host as the
// guarantees demand (README "Guarantees"): failed, the old release still current (switched back if it
// had switched), nothing left behind by the cut run; the cut-off step not run again; a lock a cut
// unlock left is the run's own, and the next run (another process) takes it over; the next run
// without faults ships B and leaves nothing behind.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import type { StoredArtifact } from '../../src/artifact/store.js';
import { setupHosts, ship } from './executor.js';
import { HEALTHY_FILE, localFleet, type LocalFleet, type LocalSession } from './local-fleet.js';
import type { Fault } from './local-remote.js';
import { requirePython, TEST_PYTHONS } from './pythons.js';
import { writeRelease, type TreeEntry } from './release.js';

export const PYTHON = requirePython(TEST_PYTHONS.find((p) => p.label === 'python3')!);
export const ID_A = '20260101000000Z-aaaaaaaa';
export const ID_B = '20260102000000Z-bbbbbbbb';
export const ID_BAD = '20260103000000Z-bad00000';
export const ID_OLD = '20251231000000Z-01d00000';

export function tree(label: string, healthy = true): Record<string, TreeEntry> {
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
export function deadPid(): number {
  return Number(execFileSync('sh', ['-c', 'sh -c "echo \\$\\$"'], { encoding: 'utf8' }).trim());
}

/** Where the host's root holds anything an operation leaves behind when cut. */
export function leftovers(dir: string): string[] {
  const releases = readdirSync(path.join(dir, 'releases')).filter((n) => n.startsWith('.'));
  const tmpDir = path.join(dir, '.ckan-release', 'tmp');
  const tmp = existsSync(tmpDir) ? readdirSync(tmpDir).map((n) => `tmp/${n}`) : [];
  const root = readdirSync(dir).filter((n) => n.startsWith('.current'));
  return [...releases, ...tmp, ...root];
}

export function lockOf(dir: string): { token: string; pid: number } | null {
  const f = path.join(dir, '.ckan-release', 'lock', 'owner.json');
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { token: string; pid: number }) : null;
}

export interface FaultBed {
  fleet: LocalFleet;
  host: string;
  /** The host's directory (its root). */
  dir: string;
  A: StoredArtifact;
  B: StoredArtifact;
  /** The host as it was with A live. */
  restore(): void;
  /** Ships B with the fault, checks the host, ships B again without faults (see above). */
  cutShip(fault: Fault): Promise<{ s: LocalSession; failed: Error | undefined }>;
  close(): Promise<void>;
}

export async function faultBed(HOST = 'at-one'): Promise<FaultBed> {
  const fleet = await localFleet([HOST]);
  const dir = fleet.hosts[0]!.dir;
  const A = await writeRelease(fleet.store, ID_A, tree('A'), { python: PYTHON, root: fleet.config.root });
  const B = await writeRelease(fleet.store, ID_B, tree('B'), { python: PYTHON, root: fleet.config.root });
  setupHosts(fleet, PYTHON);
  await ship(fleet.session(), A);
  expect(fleet.current(HOST)).toBe(`releases/${ID_A}`);
  // An older release beside A (a copy of it, under an older ID): a ship of B with keep_releases 2
  // prunes it, so every ship of B has a prune step to cut (the plan names nothing when nothing is due).
  cpSync(path.join(dir, 'releases', ID_A), path.join(dir, 'releases', ID_OLD), {
    recursive: true,
    verbatimSymlinks: true,
  });
  const template = `${dir}.template`;
  cpSync(dir, template, { recursive: true, verbatimSymlinks: true });

  function restore(): void {
    rmSync(dir, { recursive: true, force: true });
    cpSync(template, dir, { recursive: true, verbatimSymlinks: true });
  }

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
      // The failed run cleaned up after itself: no partial directory, no uploaded manifest, no link
      // (unless the cut was the clean-up itself: the next run's prune removes what it left).
      if (!/\.py clean '/.test(cutCommand)) expect(leftovers(dir)).toEqual([]);
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
    // (After its prune of the older release.)
    expect(
      fleet
        .ledger(HOST)
        .filter((e) => e.event !== 'pruned')
        .at(-1),
    ).toMatchObject({ release: ID_B });
    expect(leftovers(dir)).toEqual([]);
    expect(lockOf(dir)).toBe(null);
    expect(readFileSync(path.join(dir, 'current', 'app.py'), 'utf8')).toBe('RELEASE = "B"\n');
    return { s, failed };
  }

  return {
    fleet,
    host: HOST,
    dir,
    A,
    B,
    restore,
    cutShip,
    async close() {
      rmSync(template, { recursive: true, force: true });
      await fleet.close();
    },
  };
}
