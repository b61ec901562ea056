// `setup ENV`: plan (deploy/setup.ts planSetupFor), then print it (--dry-run) or carry it out.
import type { Command } from 'commander';
import { planSetupFor, setup } from '../deploy/setup.js';
import { eventsFor, withEvents } from '../events.js';
import type { Io } from '../io.js';
import { formatSetupPlan } from '../plan.js';
import { globals } from './common.js';
import { load, withSession } from './hosts.js';

export async function setupCommand(
  io: Io,
  envName: string,
  opts: { dryRun?: boolean },
  c: Command,
): Promise<void> {
  const json = globals(c).json;
  const ev = eventsFor(io, json);
  await withEvents(ev, 'setup', async () => {
    const l = load(c, envName);
    await withSession(
      l,
      {},
      io,
      async (s) => {
        const plan = await planSetupFor(s, !!opts.dryRun);
        if (opts.dryRun) {
          ev.emit({ type: 'result', command: 'setup', ok: true, plan });
          if (!json) ev.print(formatSetupPlan(plan, l.config.root));
          return;
        }
        const hosts = await setup(s, plan, ev, (line) => {
          if (!json) ev.print(line);
        });
        ev.emit({ type: 'result', command: 'setup', ok: true, environment: l.env.name, hosts, plan });
      },
      ev,
    );
  });
}
