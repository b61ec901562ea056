// Phase 2 of a deploy on one host: switch `current`, health check, write the ledger; and the prune that
// follows, as the plan says.
import type { Manifest } from '../artifact/manifest.js';
import { pruneInstructions, type HostPlan } from '../plan.js';
import { callAgent } from './agent.js';
import { agentFor, type HostSession, type Session } from './session.js';
import { healthcheckFor } from './vars.js';

/** Points current at releases/<id> (null: at nothing) by rename(2); answers the release it replaced. */
export async function switchHost(
  s: Session,
  h: HostSession,
  python: string,
  id: string | null,
): Promise<{ previous: string | null }> {
  return callAgent<{ previous: string | null }>(agentFor(s, h, python), 'switch', 'switch', {
    root: s.config.root,
    id,
    op: s.op,
  });
}

export async function healthOnHost(
  s: Session,
  h: HostSession,
  m: Manifest,
  python: string,
): Promise<Record<string, unknown>> {
  const { url, host } = healthcheckFor(s, h.name, m);
  return callAgent(agentFor(s, h, python), 'health check', 'health', {
    url,
    ...(host ? { host } : {}),
    plugins: m.extensions.flatMap((x) => x.plugins),
    timeout: s.config.deploy.healthcheck.timeout,
  });
}

export async function ledger(
  s: Session,
  h: HostSession,
  python: string,
  entries: Record<string, unknown>[],
): Promise<void> {
  await callAgent(agentFor(s, h, python), 'ledger', 'ledger', {
    root: s.config.root,
    entries: entries.map((e) => ({ op: s.op, ...e })),
  });
}

/** Removes what the host's plan says prune removes; answers what the agent removed, and why. */
export async function pruneHost(
  s: Session,
  h: HostSession,
  python: string,
  hp: HostPlan,
): Promise<{ release: string | null; path?: string; why: string }[]> {
  const r = await callAgent<{ removed: { release: string | null; path?: string; why: string }[] }>(
    agentFor(s, h, python),
    'prune',
    'prune',
    { root: s.config.root, op: s.op, ...pruneInstructions(hp, s.config.deploy.keepReleases) },
  );
  return r.removed;
}
