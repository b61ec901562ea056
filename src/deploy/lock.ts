// The host lock (<root>/.ckan-release/lock): taken before anything changes on a host, renewed before
// phase 2, released at the end; a lock of a ckan-release of this machine that is gone is taken over.
import os from 'node:os';
import { OperationError } from '../errors.js';
import { describeLock } from '../plan.js';
import { callAgent } from './agent.js';
import { agentFor, failures, message, settleAll, type HostSession, type Session } from './session.js';

export function lockOwner(s: Session, operation: string): Record<string, unknown> {
  return { user: os.userInfo().username, machine: os.hostname(), pid: process.pid, operation, token: s.op };
}

const LOCK_TTL_SECONDS = 3600;

/**
 * A lock held by a process of this very machine that no longer exists (a killed ckan-release) is
 * stale whatever its expiry says: its token is passed so the agent may take it over.
 */
export function deadLocalHolder(lock: Record<string, unknown> | null): string | undefined {
  if (
    !lock ||
    lock.machine !== os.hostname() ||
    typeof lock.pid !== 'number' ||
    typeof lock.token !== 'string'
  )
    return undefined;
  try {
    process.kill(lock.pid, 0);
    return undefined; // alive
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH' ? lock.token : undefined;
  }
}

/** Takes (or renews: same token) the lock of one host; `held`: the lock its facts showed. */
export async function lockHost(
  s: Session,
  h: HostSession,
  python: string,
  operation: string,
  held: Record<string, unknown> | null = null,
): Promise<void> {
  const stale = deadLocalHolder(held);
  const r = await callAgent<{ taken_over: Record<string, unknown> | null }>(
    agentFor(s, h, python),
    'lock',
    'lock',
    {
      root: s.config.root,
      owner: lockOwner(s, operation),
      ttl: LOCK_TTL_SECONDS,
      ...(stale ? { stale_token: stale } : {}),
    },
  );
  h.locked = true;
  if (r.taken_over) {
    const why =
      stale && r.taken_over.token === stale ? 'the lock of a process that is gone' : 'an expired lock';
    s.say(`${h.name}: took over ${why}: ${describeLock(r.taken_over)}`);
  }
}

/** Extends every held lock (same token): operations longer than the lock's TTL keep it. */
export async function renewLocks(s: Session, python: string, operation: string): Promise<void> {
  const results = await settleAll(
    s.hosts.filter((h) => h.locked),
    s.env.parallel,
    (h) => lockHost(s, h, python, operation),
  );
  const f = failures(s.hosts, results);
  if (f.length) throw new OperationError(`lost a lock: ${f.map((x) => message(x.error)).join('; ')}`);
}

/** Releases every lock this operation holds (only its own: the token is checked). */
export async function unlockAll(s: Session, python: string): Promise<void> {
  await settleAll(
    s.hosts.filter((h) => h.locked),
    s.env.parallel,
    async (h) => {
      await callAgent(agentFor(s, h, python), 'unlock', 'unlock', { root: s.config.root, token: s.op });
      h.locked = false;
    },
  );
}
