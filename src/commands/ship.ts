// `ship ENV [ID]`: the artifact (default: the newest built) to every host of ENV (hosts.ts shipArtifact).
import type { Command, Option } from 'commander';
import { resolveArtifact } from '../artifact/resolve.js';
import { eventsFor, withEvents } from '../events.js';
import type { Io } from '../io.js';
import { globals } from './common.js';
import { checkRequires, load, REHASH, secretsOf, shipArtifact, withSession } from './hosts.js';

export function registerShip(program: Command, io: Io, dryRun: () => Option): void {
  program
    .command('ship')
    .description('deploy an artifact (default: the newest built) to every host of ENV')
    .argument('<env>', 'environment')
    .argument('[id]', 'artifact ID or unique prefix')
    .addOption(dryRun())
    .option('--force', 'ship even if the environment requires the artifact to be healthy elsewhere first')
    .option('--rehash', REHASH)
    .action(
      async (
        envName: string,
        id: string | undefined,
        opts: { dryRun?: boolean; force?: boolean; rehash?: boolean },
        c: Command,
      ) => {
        const json = globals(c).json;
        const ev = eventsFor(io, json);
        await withEvents(ev, 'ship', async () => {
          const l = { ...load(c, envName), rehash: opts.rehash };
          const artifact = await resolveArtifact(l.config, id, ev.say);
          if (!opts.force) await checkRequires(io, l, artifact.id, ev, !!opts.dryRun);
          const secrets = secretsOf(c, l.env);
          await withSession(
            l,
            secrets,
            io,
            (s) => shipArtifact(s, artifact, 'ship', !!opts.dryRun, ev, json),
            ev,
          );
        });
      },
    );
}
