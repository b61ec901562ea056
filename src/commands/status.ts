// `status ENV`: per host, current, rollback target (plan.ts hostRollbackTarget), releases, lock holder.
import type { Command } from 'commander';
import { deadLocalHolder } from '../deploy/lock.js';
import type { Io } from '../io.js';
import { describeLock, hostRollbackTarget } from '../plan.js';
import { globals } from './common.js';
import { allFacts, load, withSession } from './hosts.js';

export async function statusCommand(io: Io, envName: string, _opts: unknown, c: Command): Promise<void> {
  const l = load(c, envName);
  await withSession(l, {}, io, async (s) => {
    const facts = await allFacts(s);
    const hosts = facts.map((f, i) => ({
      host: s.hosts[i]!.name,
      current: f.current,
      rollback_target: hostRollbackTarget(f),
      releases: f.releases.map((r) => ({ id: r.id, state: r.state, time: r.time ?? null })),
      lock: f.lock,
      // Held by a ckan-release of this machine that no longer runs (killed, crashed).
      lock_stale: deadLocalHolder(f.lock) !== undefined,
    }));
    if (globals(c).json) {
      io.out(JSON.stringify({ environment: envName, hosts }) + '\n');
      return;
    }
    for (const h of hosts) {
      io.out(
        `${h.host}\n  current:         ${h.current ?? 'none'}\n  rollback target: ${h.rollback_target ?? 'none'}\n`,
      );
      const stale = h.lock_stale
        ? ' - its process is gone: the next operation from this machine takes it over (elsewhere: `ckan-release unlock`)'
        : '';
      io.out(`  lock:            ${h.lock ? describeLock(h.lock) + stale : 'none'}\n  releases:\n`);
      for (const r of [...h.releases].reverse()) {
        io.out(
          `    ${r.id}  ${r.state.padEnd(11)} ${r.time ?? ''}${r.id === h.current ? '  <- current' : ''}\n`,
        );
      }
    }
  });
}
