// ship, rollback and promote, for one environment: read every host's facts, compute the plan (plan.ts
// planDeploy: the same function and the same inputs as --dry-run), then carry it out in the design's
// two phases:
//   1. every host in parallel: lock, get the release into releases/<ID>, before_switch hooks (stage.ts).
//      Any failure: nobody switches, partials removed, locks released.
//   2. switch every host, restart, health check (activate.ts). Any failure: every switched host
//      switches back and restarts, the release is marked failed. Then after_switch hooks, the plan's
//      prune, ledger, unlock.
import { isAdopted } from '../artifact/adopted.js';
import type { Manifest } from '../artifact/manifest.js';
import type { StoredArtifact } from '../artifact/store.js';
import { HostsFailedError, OperationError, UsageError } from '../errors.js';
import {
  hostCompatibility,
  marksPreviousBad,
  planDeploy,
  prunePlan,
  pruneRefusal,
  type DeployPlan,
  type HostFacts,
  type HostPlan,
  type PlanSettings,
} from '../plan.js';
import { SudoPasswordError } from '../remote/ssh.js';
import { AgentRefusal, callAgent } from './agent.js';
import { healthOnHost, ledger, pruneHost, switchHost } from './activate.js';
import { DeltaCache } from './delta.js';
import { readFactsReadOnly, serverFilePlans, serverPlanProblems } from './facts.js';
import { lockOwner, renewLocks, unlockAll } from './lock.js';
import {
  installServerFiles,
  refuseUnfitServers,
  restartHost,
  restoreServerFiles,
  serverChecks,
  type ServerFileChange,
} from './server.js';
import {
  agentFor,
  allOrThrow,
  failures,
  message,
  readFacts,
  settleAll,
  type HostSession,
  type Session,
} from './session.js';
import { pythonOf, runHook, stageOnHost } from './stage.js';
import { healthcheckFor } from './vars.js';

// Moved to their own modules; still exported here for callers of the old names.
export {
  becomeFor,
  closeSession,
  openSession,
  settleAll,
  type HostSession,
  type Say,
  type Session,
} from './session.js';
export { healthcheckFor, shellVars, templateVars } from './vars.js';
export { deadLocalHolder, lockOwner } from './lock.js';

/** The plan settings of the config (what every host plan repeats). */
export function planSettings(s: Pick<Session, 'config'>): PlanSettings {
  const d = s.config.deploy;
  return {
    keepReleases: d.keepReleases,
    beforeSwitch: d.hooks.beforeSwitch.map((x) => ({ run: x.run, once: !!x.once })),
    afterSwitch: d.hooks.afterSwitch.map((x) => ({ run: x.run, once: !!x.once })),
    restart: d.restart,
    healthcheck: d.healthcheck.url,
  };
}

/**
 * Reads what the plan of a ship, promote or rollback needs from every host, and computes it: for
 * --dry-run with nothing written to any host (`dryRun`), for the real run with the agent installed
 * (and the web server refusals made first, read-only, before anything is written). The facts come back
 * too: the executor needs each host's lock holder and release states.
 */
export async function planShip(
  s: Session,
  m: Manifest,
  operation: string,
  opts: { dryRun: boolean; label?: string },
): Promise<{ plan: DeployPlan; facts: HostFacts[] }> {
  const python = pythonOf(m);
  const libraries = m.libraries ?? [];
  let facts: HostFacts[];
  if (opts.dryRun) {
    const read = await settleAll(s.hosts, s.env.parallel, (h) => readFactsReadOnly(s, h, python, libraries));
    facts = allOrThrow(s.hosts, read, `cannot read the state of every host of ${s.env.name}`);
  } else {
    // A restart recipe or server template the host's web server cannot run: refused before anything
    // changes anywhere (the plan lists the same problems).
    await refuseUnfitServers(s, python, m, operation);
    s.hosts.forEach((h) => s.events?.emit({ type: 'phase', host: h.name, phase: 'preflight' }));
    const read = await settleAll(s.hosts, s.env.parallel, async (h) => {
      try {
        return await readFacts(s, h, python, { libraries });
      } catch (e) {
        // A refusal, or a sudo that wants a password, says what it is; anything else is the interpreter.
        if (e instanceof AgentRefusal || e instanceof SudoPasswordError) throw e;
        throw new OperationError(
          `${h.name}: preflight: cannot run ${python} (the artifact's python) with the host agent: ${message(e)}`,
        );
      }
    });
    const failed = failures(s.hosts, read);
    if (failed.length) throw phase1Failed(s, opts.label ?? operation, failed);
    facts = read.map((r) => (r as PromiseFulfilledResult<HostFacts>).value);
  }
  const serverFiles = await Promise.all(s.hosts.map((h) => serverFilePlans(s, h, python, m, !opts.dryRun)));
  const checks = await serverChecks(s, python, m);
  const plan = planDeploy(
    operation,
    s.env.name,
    m,
    s.hosts.map((h, i) => ({
      name: h.name,
      facts: facts[i]!,
      serverFiles: serverFiles[i]!,
      serverProblems: serverPlanProblems(checks[i]!),
      healthHost: healthcheckFor(s, h.name, m).host,
    })),
    planSettings(s),
    { dryRun: opts.dryRun },
  );
  return { plan, facts };
}

/** A failure of phase 1: nothing switched; exit code by HostsFailedError's one rule. */
function phase1Failed(
  s: Session,
  operation: string,
  failed: { host: string; error: unknown }[],
  hint?: string,
): HostsFailedError {
  return new HostsFailedError(
    `${operation} failed before any host switched; nothing changed on any host:\n${failed.map((f) => `  ${message(f.error)}`).join('\n')}`,
    failed,
    hint,
  );
}

/**
 * Refuses a host whose plan says the operation cannot run there (exit 2, before the lock and any
 * change), with the messages and hints of the real run. The conditions are the plan's own (plan.ts).
 */
function preflight(s: Session, m: Manifest, h: HostSession, facts: HostFacts): void {
  if (!facts.layout)
    throw new UsageError(
      `${h.name}: ${s.config.root} is not set up`,
      `run \`ckan-release setup ${s.env.name}\` first`,
    );
  const incompatible = hostCompatibility(m, facts);
  if (incompatible.length)
    throw new UsageError(
      `${h.name}: ${incompatible.join('; ')}`,
      'build on the builder that matches the hosts (builder.os), or bring the host to it; nothing was changed',
    );
  if (isAdopted(m) && !facts.releases.some((r) => r.id === m.id && r.adopted))
    throw new UsageError(
      `${h.name}: releases/${m.id} is not the release setup adopted on this host (a link to ../default)`,
      'an adopted release cannot be sent: it exists only where setup adopted it; nothing was changed',
    );
}

export interface DeployOptions {
  /** What the lock and the messages name, e.g. `ship staging <ID>`. */
  operation: string;
}

export interface DeployResult {
  hosts: { host: string; previous: string | null; current: string }[];
  pruned: { host: string; release: string | null; why: string }[];
}

/**
 * Carries out `plan` (planShip's, from `facts`): stages the artifact on every host, then switches them
 * all; the whole two-phase operation.
 */
export async function deploy(
  s: Session,
  artifact: StoredArtifact,
  plan: DeployPlan,
  facts: HostFacts[],
  opts: DeployOptions,
): Promise<DeployResult> {
  const m = artifact.manifest;
  const python = pythonOf(m);
  const limit = s.env.parallel;
  const deltas = new DeltaCache(artifact.archive);
  const planOf = new Map<HostSession, HostPlan>(s.hosts.map((h, i) => [h, plan.hosts[i]!]));
  const hp = (h: HostSession) => planOf.get(h)!;
  // On the operation's last ledger entries, for `history` (who, and how long the whole operation took).
  const started = new Date().toISOString();
  const by = lockOwner(s, opts.operation);
  const clean = () =>
    settleAll(s.hosts, limit, (h) =>
      callAgent(agentFor(s, h, python), 'clean', 'clean', { root: s.config.root, op: s.op }),
    );
  // Before the lock and any change: every host must be able to run the artifact.
  const refused = failures(
    s.hosts,
    await settleAll(s.hosts, limit, async (h, i) => preflight(s, m, h, facts[i]!)),
  );
  for (const f of refused) s.events?.emit({ type: 'host-failed', host: f.host, error: message(f.error) });
  if (refused.length) throw phase1Failed(s, opts.operation, refused);
  try {
    // Phase 1.
    const staged = await settleAll(s.hosts, limit, (h, i) =>
      stageOnHost(s, h, artifact, opts.operation, hp(h), facts[i]!, deltas),
    );
    const failed1 = failures(s.hosts, staged);
    for (const f of failed1) s.events?.emit({ type: 'host-failed', host: f.host, error: message(f.error) });
    if (failed1.length) {
      await clean();
      const locked = failed1.some((f) => f.error instanceof AgentRefusal && f.error.kind === 'locked');
      throw phase1Failed(
        s,
        opts.operation,
        failed1,
        locked
          ? 'if that lock is stale (its process is gone), run `ckan-release unlock ' + s.env.name + '`'
          : undefined,
      );
    }

    // A long phase 1 must not have let the locks expire: renew them before anything else changes.
    await renewLocks(s, python, opts.operation);

    // Server files (server.files) whose rendering changed, on every host, before any switch. They
    // point at <root>/current, so the release still served keeps working with them.
    const serverChanges = new Map<HostSession, ServerFileChange[]>();
    if (s.config.server.files.length) {
      const installed = await settleAll(s.hosts, limit, async (h) => {
        s.events?.emit({ type: 'phase', host: h.name, phase: 'server files' });
        const files = await installServerFiles(s, h, python, m);
        serverChanges.set(h, files);
        for (const f of files.filter((x) => x.changed)) s.say(`${h.name}: installed ${f.dest}`);
      });
      const failedServer = failures(s.hosts, installed);
      if (failedServer.length) {
        await settleAll([...serverChanges.entries()], limit, ([h, files]) =>
          restoreServerFiles(s, h, python, files, m),
        );
        await clean();
        throw new OperationError(
          `${opts.operation} failed installing server files, before any host switched; the server files were put back:\n` +
            failedServer.map((f) => `  ${message(f.error)}`).join('\n'),
        );
      }
    }

    // Phase 2.
    const switched: { h: HostSession; previous: string | null }[] = [];
    let aborted = false;
    const phase2 = await settleAll(s.hosts, limit, async (h) => {
      if (aborted) throw new OperationError(`${h.name}: not switched, because another host failed first`);
      const previous = hp(h).current;
      // Counted as switched before the call: a switch that fails halfway (the link renamed, the answer
      // lost) must be switched back too, and switching back is idempotent.
      switched.push({ h, previous });
      try {
        s.events?.emit({ type: 'phase', host: h.name, phase: 'switch', detail: `releases/${m.id}` });
        await switchHost(s, h, python, m.id);
        s.say(`${h.name}: current -> releases/${m.id} (was ${previous ?? 'nothing'})`);
        s.events?.emit({ type: 'phase', host: h.name, phase: 'restart' });
        await restartHost(s, h, m, python, { full: previous === null });
        s.events?.emit({ type: 'phase', host: h.name, phase: 'health' });
        const health = await healthOnHost(s, h, m, python);
        s.say(
          `${h.name}: healthy: CKAN ${String(health.ckan_version)} with ${(health.extensions as string[]).join(' ')}`,
        );
        return previous;
      } catch (e) {
        aborted = true;
        s.events?.emit({ type: 'host-failed', host: h.name, error: message(e) });
        throw e;
      }
    });
    const failed2 = failures(s.hosts, phase2);
    if (failed2.length) {
      const why = failed2
        .map((f) => message(f.error))
        .join('; ')
        .slice(0, 500);
      const back = await settleAll(switched, limit, async ({ h, previous }) => {
        s.events?.emit({ type: 'phase', host: h.name, phase: 'switch back', detail: previous ?? 'nothing' });
        await switchHost(s, h, python, previous);
        // Whatever else fails here, the host is restarted: its server must drop the failed code.
        let firstError: unknown;
        const files = serverChanges.get(h);
        if (files) await restoreServerFiles(s, h, python, files, m).catch((e: unknown) => (firstError ??= e));
        // Restart even when there was no previous release, so the server drops the failed code.
        await restartHost(s, h, m, python, { full: previous === null });
        await ledger(s, h, python, [
          { event: 'failed', release: m.id, why, by, started },
          ...(previous ? [{ event: 'rolled_back', release: previous, from: m.id }] : []),
        ]).catch((e: unknown) => (firstError ??= e));
        if (firstError) throw firstError;
        s.say(`${h.name}: switched back to ${previous ?? 'nothing'}`);
      });
      // Hosts that never switched got the new server files too: put them back as well.
      await settleAll(
        [...serverChanges.entries()].filter(([h]) => !switched.some((x) => x.h === h)),
        limit,
        ([h, files]) => restoreServerFiles(s, h, python, files, m),
      );
      const backFailed = failures(
        switched.map((x) => x.h),
        back,
      );
      const detail = failed2.map((f) => `  ${message(f.error)}`).join('\n');
      throw new OperationError(
        `${opts.operation} failed after switching; ` +
          (backFailed.length
            ? `switching back FAILED on ${backFailed.map((f) => f.host).join(', ')}:\n${backFailed.map((f) => `  ${message(f.error)}`).join('\n')}\n`
            : `every switched host (${switched.map((x) => x.h.name).join(', ') || 'none'}) was switched back and restarted.\n`) +
          detail,
      );
    }
    const markPreviousBad = marksPreviousBad(plan.operation);
    const recorded = await settleAll(s.hosts, limit, (h) => {
      const previous = hp(h).current;
      return ledger(s, h, python, [
        { event: 'healthy', release: m.id, by, started },
        ...(markPreviousBad && previous && previous !== m.id
          ? [{ event: 'bad', release: previous, why: `rolled back from by ${s.op}` }]
          : []),
      ]);
    });
    for (const f of failures(s.hosts, recorded)) {
      s.say(`WARNING ${f.host}: the release is live but the ledger could not record it: ${message(f.error)}`);
    }
    await afterSwitchHooks(s, m, hp);
    const pruned: DeployResult['pruned'] = [];
    const pruning = await settleAll(s.hosts, limit, async (h, i) => {
      s.events?.emit({ type: 'phase', host: h.name, phase: 'prune' });
      // The leftovers are read again: the agent of an operation whose client was killed may still have
      // been running when the plan was made (a partial directory still being copied, then renamed). The
      // same rule on the fresh listing; the plan executed (the result's) says what was pruned.
      const now = await callAgent<HostFacts>(agentFor(s, h, python), 'read host facts', 'facts', {
        root: s.config.root,
      });
      const fresh = prunePlan(
        now.releases.map((r) => r.id),
        now.partials,
        m.id,
        hp(h).rollback_target_after,
        s.config.deploy.keepReleases,
        now.tmp ?? [],
      ).filter((x) => pruneRefusal(x, { current: m.id, protect: [], op: s.op }) === null);
      if (JSON.stringify(fresh) !== JSON.stringify(hp(h).prune)) {
        s.say(`${h.name}: prune: the host changed since the plan was made; pruning what it holds now`);
        plan.hosts[i] = { ...hp(h), prune: fresh };
        planOf.set(h, plan.hosts[i]!);
      }
      if (!hp(h).prune.length) return;
      for (const x of await pruneHost(s, h, python, hp(h))) {
        pruned.push({ host: h.name, release: x.release ?? x.path ?? null, why: x.why });
        s.say(`${h.name}: pruned ${x.release ?? x.path}: ${x.why}`);
      }
    });
    for (const f of failures(s.hosts, pruning)) s.say(`WARNING ${f.host}: prune failed: ${message(f.error)}`);
    for (const h of s.hosts)
      s.events?.emit({ type: 'host-done', host: h.name, previous: hp(h).current, current: m.id });
    return {
      hosts: s.hosts.map((h) => ({ host: h.name, previous: hp(h).current, current: m.id })),
      pruned,
    };
  } finally {
    await unlockAll(s, python);
  }
}

/**
 * The after_switch hooks as the plan gives them to each host, one hook at a time across the hosts (the
 * first host has every hook; the others the ones not `once`, in the same order). A failure is said,
 * and the release stays live.
 */
async function afterSwitchHooks(s: Session, m: Manifest, hp: (h: HostSession) => HostPlan): Promise<void> {
  const next = new Map<HostSession, number>(s.hosts.map((h) => [h, 0]));
  for (const run of s.hosts.length ? hp(s.hosts[0]!).hooks.after_switch : []) {
    const on = s.hosts.filter((h) => hp(h).hooks.after_switch[next.get(h)!] === run);
    for (const h of on) next.set(h, next.get(h)! + 1);
    const results = await settleAll(on, s.env.parallel, (h) => runHook(s, h, run, m, 'after_switch'));
    const f = failures(on, results);
    if (f.length)
      s.say(
        `after_switch hook failed (the release stays live): ${f.map((x) => message(x.error)).join('; ')}`,
      );
  }
}
