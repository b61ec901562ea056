// `promote FROM TO`: ships to TO the artifact that is live and healthy on every host of FROM
// (plan.ts promoteSource decides which), then as `ship` does (hosts.ts shipArtifact).
import type { Command } from 'commander';
import { resolveArtifact } from '../artifact/resolve.js';
import { HOST_PYTHON } from '../deploy/agent.js';
import { OperationError, UsageError } from '../errors.js';
import { eventsFor, withEvents } from '../events.js';
import type { Io } from '../io.js';
import { promoteSource } from '../plan.js';
import { globals } from './common.js';
import { allFacts, load, loadExecutor, named, secretsOf, shipArtifact, withSession } from './hosts.js';

export async function promoteCommand(
  io: Io,
  fromName: string,
  toName: string,
  opts: { dryRun?: boolean; rehash?: boolean },
  c: Command,
): Promise<void> {
  const json = globals(c).json;
  const ev = eventsFor(io, json);
  await withEvents(ev, 'promote', async () => {
    void loadExecutor();
    const from = load(c, fromName);
    const to = { ...load(c, toName), rehash: opts.rehash };
    if (fromName === toName) throw new UsageError('promote needs two different environments');
    const id = await withSession(
      from,
      {},
      io,
      async (s) => {
        const source = promoteSource(fromName, named(s, await allFacts(s, HOST_PYTHON, !!opts.dryRun)));
        if ('refusal' in source) throw new OperationError(source.refusal);
        return source.id;
      },
      ev,
      false,
    );
    const artifact = await resolveArtifact(to.config, id, ev.say);
    ev.say(`promote: ${fromName} runs ${id}, healthy on every host; shipping the same artifact to ${toName}`);
    const secrets = secretsOf(c, to.env);
    await withSession(
      to,
      secrets,
      io,
      (s) => shipArtifact(s, artifact, 'promote', !!opts.dryRun, ev, json),
      ev,
    );
  });
}
