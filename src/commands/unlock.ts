// `unlock ENV`: removes the lock each host holds (plan.ts planUnlock: whose, from the facts), that lock
// only: it is named by its token, so a lock taken since the plan was made stays.
import type { Command } from 'commander';
import { callAgent, HOST_PYTHON } from '../deploy/agent.js';
import { agentFor, allOrThrow, settleAll } from '../deploy/session.js';
import type { Io } from '../io.js';
import { describeLock, formatUnlockPlan, planUnlock } from '../plan.js';
import { globals } from './common.js';
import { allFacts, load, named, withSession } from './hosts.js';

export async function unlockCommand(
  io: Io,
  envName: string,
  opts: { dryRun?: boolean },
  c: Command,
): Promise<void> {
  const l = load(c, envName);
  const json = globals(c).json;
  await withSession(l, {}, io, async (s) => {
    const plan = planUnlock(envName, named(s, await allFacts(s, HOST_PYTHON, !!opts.dryRun)), !!opts.dryRun);
    if (opts.dryRun) {
      io.out(json ? JSON.stringify({ plan }) + '\n' : formatUnlockPlan(plan));
      return;
    }
    const results = await settleAll(s.hosts, s.env.parallel, async (h, i) => {
      const lock = plan.hosts[i]!.lock;
      if (!lock) return `${h.name}: was not locked\n`;
      const r = await callAgent<{ unlocked: boolean; holder: Record<string, unknown> | null }>(
        agentFor(s, h, HOST_PYTHON),
        'unlock',
        'unlock',
        { root: l.config.root, ...(lock.token ? { token: lock.token } : {}) },
      );
      return `${h.name}: ${r.unlocked && r.holder ? `removed the lock of ${describeLock(r.holder)}` : 'was not locked'}\n`;
    });
    for (const line of allOrThrow(s.hosts, results, `unlock failed on some hosts`)) io.out(line);
  });
}
