// `ship ENV [ID]`: the artifact (default: the newest built) to every host of ENV (hosts.ts shipArtifact).
import type { Command } from 'commander';
import { resolveArtifact } from '../artifact/resolve.js';
import { eventsFor, withEvents } from '../events.js';
import type { Io } from '../io.js';
import { globals } from './common.js';
import { checkRequires, load, loadExecutor, secretsOf, shipArtifact, withSession } from './hosts.js';

export async function shipCommand(
  io: Io,
  envName: string,
  id: string | undefined,
  opts: { dryRun?: boolean; force?: boolean; rehash?: boolean },
  c: Command,
): Promise<void> {
  const json = globals(c).json;
  const ev = eventsFor(io, json);
  await withEvents(ev, 'ship', async () => {
    void loadExecutor();
    const l = { ...load(c, envName), rehash: opts.rehash };
    const artifact = await resolveArtifact(l.config, id, ev.say);
    if (!opts.force) await checkRequires(io, l, artifact.id, ev, !!opts.dryRun);
    const secrets = secretsOf(c, l.env);
    await withSession(l, secrets, io, (s) => shipArtifact(s, artifact, 'ship', !!opts.dryRun, ev, json), ev);
  });
}
