// `rollback ENV [--to ID]`: switches back to the rollback target every host agrees on (plan.ts
// commonRollbackTarget), or to ID; then as `ship` does (hosts.ts shipArtifact), the release left marked
// bad.
import type { Command } from 'commander';
import { ARTIFACT_ID } from '../artifact/id.js';
import { resolveArtifact } from '../artifact/resolve.js';
import { HOST_PYTHON } from '../deploy/agent.js';
import { OperationError } from '../errors.js';
import { eventsFor, withEvents } from '../events.js';
import type { Io } from '../io.js';
import { commonRollbackTarget } from '../plan.js';
import { globals } from './common.js';
import {
  adoptedOnHosts,
  allFacts,
  artifactFromHosts,
  load,
  loadExecutor,
  named,
  secretsOf,
  shipArtifact,
  withSession,
} from './hosts.js';

export async function rollbackCommand(
  io: Io,
  envName: string,
  opts: { to?: string; dryRun?: boolean; rehash?: boolean },
  c: Command,
): Promise<void> {
  const json = globals(c).json;
  const ev = eventsFor(io, json);
  await withEvents(ev, 'rollback', async () => {
    void loadExecutor();
    const l = { ...load(c, envName), rehash: opts.rehash };
    const secrets = secretsOf(c, l.env);
    await withSession(
      l,
      secrets,
      io,
      async (s) => {
        // A bad --to is refused before anything runs on a host. A full ID may name a release
        // that is on the hosts but not in this machine's store.
        let id = opts.to
          ? ARTIFACT_ID.test(opts.to)
            ? opts.to
            : (await resolveArtifact(l.config, opts.to, ev.say)).id
          : undefined;
        const facts = await allFacts(s, HOST_PYTHON, !!opts.dryRun);
        if (!id) {
          const common = commonRollbackTarget(named(s, facts));
          if ('refusal' in common)
            throw new OperationError(
              `no common rollback target on ${envName}: ${common.refusal}`,
              'name one with --to ID',
            );
          id = common.id;
        }
        const artifact =
          (await resolveArtifact(l.config, id, ev.say, true)) ??
          adoptedOnHosts(s, id, facts) ??
          (await artifactFromHosts(s, id));
        await shipArtifact(s, artifact, 'rollback', !!opts.dryRun, ev, json);
      },
      ev,
    );
  });
}
