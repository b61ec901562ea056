// setup, for one environment: read every host's facts (read-only: the agent may not be installed yet),
// compute the plan (plan.ts planSetup, as --dry-run does), then carry it out on every host in parallel:
// make the layout, install the agent, adopt <root>/default where the plan says, chown the shared
// directories, install the server files. Idempotent.
import { adoptedId } from '../artifact/adopted.js';
import type { Events } from '../events.js';
import { agentDir, defaultVenv, setupDirs, sharedDir } from '../layout.js';
import { planSetup, type SetupPlan } from '../plan.js';
import { callAgent, HOST_PYTHON, installAgent } from './agent.js';
import { readFactsReadOnly, serverFilePlans, serverPlanProblems } from './facts.js';
import { installServerFiles, refuseUnfitServers, serverChecks } from './server.js';
import { allOrThrow, settleAll, type Session } from './session.js';
import { cmd, maybeSudo } from './shell.js';

function ownerOf(s: Session): string | null {
  return [s.config.deploy.owner, s.config.deploy.group].filter(Boolean).join(':') || null;
}

/** The plan of setup from every host's facts, with nothing written to any host. */
export async function planSetupFor(s: Session, dryRun: boolean): Promise<SetupPlan> {
  const shared = s.config.shared.map((x) => x.path);
  const dirs = setupDirs(s.config.root, shared);
  const checks = await serverChecks(s, HOST_PYTHON, null);
  const read = await settleAll(s.hosts, s.env.parallel, async (h, i) => ({
    name: h.name,
    facts: await readFactsReadOnly(s, h, HOST_PYTHON, [], dirs),
    serverFiles: await serverFilePlans(s, h, HOST_PYTHON, null),
    serverProblems: serverPlanProblems(checks[i]!),
  }));
  const hosts = allOrThrow(s.hosts, read, `cannot read the state of every host of ${s.env.name}`);
  return planSetup(s.env.name, s.config.root, shared, ownerOf(s), hosts, dryRun);
}

export interface SetupResult {
  host: string;
  made: string[];
  adopted: string | null;
  server_files_installed: string[];
}

/** Carries out setup's plan; `print`: the per-host lines of the text output. */
export async function setup(
  s: Session,
  plan: SetupPlan,
  ev: Events,
  print: (line: string) => void,
): Promise<SetupResult[]> {
  const root = s.config.root;
  await refuseUnfitServers(s, HOST_PYTHON, null, 'setup');
  const done: SetupResult[] = [];
  const adoptAs = adoptedId(new Date());
  const results = await settleAll(s.hosts, s.env.parallel, async (h, i) => {
    const hp = plan.hosts[i]!;
    // <root> and .ckan-release stay owned by whoever runs the agent (root with sudo): the agent runs
    // privileged, so the CKAN user must not be able to replace it.
    const prepare = `mkdir -p ${cmd([agentDir(root)])}`;
    await h.remote.run('create the root', cmd(maybeSudo(['sh', '-c', prepare], h.sudo)));
    const agent = { remote: h.remote, root, python: HOST_PYTHON, sudo: h.sudo };
    ev.emit({ type: 'phase', host: h.name, phase: 'setup' });
    await installAgent(agent);
    const r = await callAgent<{ made: string[]; adopted: string | null }>(agent, 'setup', 'setup', {
      root,
      shared: s.config.shared.map((x) => x.path),
      // The plan's decision; the agent adopts only if there is still no current release then.
      adopt: hp.adopt !== null,
      adopt_id: adoptAs,
    });
    // Shared directories are written by CKAN (storage, uploads): they belong to deploy.owner.
    if (hp.chown) {
      const dirs = s.config.shared.map((x) => sharedDir(root, x.path));
      await h.remote.run('chown shared directories', cmd(maybeSudo(['chown', hp.chown, ...dirs], h.sudo)));
    }
    print(
      `${h.name}: ${r.made.length ? `made ${r.made.join(', ')}` : 'already set up'}${r.adopted ? `; adopted ${defaultVenv(root)} as release ${r.adopted}` : ''}\n`,
    );
    let installed: string[] = [];
    if (s.config.server.files.length) {
      ev.emit({ type: 'phase', host: h.name, phase: 'server files' });
      const files = await installServerFiles(s, h, HOST_PYTHON, null);
      installed = files.filter((f) => f.changed).map((f) => f.dest);
      print(
        `${h.name}: server files: ${installed.length ? `installed ${installed.join(', ')}` : 'unchanged'}\n`,
      );
    }
    done.push({ host: h.name, made: r.made, adopted: r.adopted, server_files_installed: installed });
    ev.emit({ type: 'host-done', host: h.name, previous: null, current: r.adopted ?? 'set up' });
  });
  allOrThrow(s.hosts, results, 'setup failed on some hosts (setup is idempotent: run it again)');
  return done;
}
