// Reading what a --dry-run plan needs from the hosts without changing anything on them: the host
// agent runs from where it is installed, or, when this version is not installed, from the command line
// (`python -c <agent> facts ...`), so that not even the agent file is written.
import type { Manifest } from '../artifact/manifest.js';
import type { PlanFacts, ServerFilePlan, SetupHostFacts } from '../plan.js';
import { agentPath, callAgentReadOnly } from './agent.js';
import { agentFor, type HostSession, type Session } from './deploy.js';
import { installServerFiles } from './server.js';
import { cmd, maybeSudo } from './shell.js';

async function agentInstalled(s: Session, h: HostSession): Promise<boolean> {
  return (await h.remote.exec(cmd(maybeSudo(['test', '-f', agentPath(s.config.root)], h.sudo)))).code === 0;
}

/** The host's facts (the agent's `facts`, which only reads), with nothing written to the host. */
export async function readFactsReadOnly(
  s: Session,
  h: HostSession,
  python: string,
  libraries: string[] = [],
): Promise<PlanFacts> {
  return callAgentReadOnly<PlanFacts>(agentFor(s, h, python), 'read host facts', 'facts', {
    root: s.config.root,
    libraries,
  });
}

/** Which server files would change: compared by the agent (check mode) when it is installed. */
export async function serverFilePlans(
  s: Session,
  h: HostSession,
  python: string,
  m: Manifest | null,
): Promise<ServerFilePlan[]> {
  if (!s.config.server.files.length) return [];
  if (!(await agentInstalled(s, h)))
    return s.config.server.files.map((f) => ({ dest: f.dest, change: 'unknown', reload: f.reload }));
  const files = await installServerFiles(s, h, python, m, true);
  return files.map((f) => ({ dest: f.dest, change: f.changed ? 'install' : 'unchanged', reload: f.reload }));
}

/** What setup would find: which of its directories exist, the current release, <root>/default. */
export async function readSetupFacts(s: Session, h: HostSession, dirs: string[]): Promise<SetupHostFacts> {
  const root = s.config.root;
  const script = [
    ...dirs.map((d) => `test -d ${cmd([d])} && echo "dir ${d}"`),
    `test -f ${cmd([`${root}/default/bin/python`])} && echo default`,
    `echo "current $(readlink ${cmd([`${root}/current`])} 2>/dev/null)"`,
  ].join('; ');
  const r = await h.remote.run('read the layout', cmd(maybeSudo(['sh', '-c', `${script}; true`], h.sudo)));
  const lines = r.stdout.split('\n');
  const current =
    lines
      .find((l) => l.startsWith('current '))
      ?.slice(8)
      .trim() ?? '';
  return {
    existing: lines.filter((l) => l.startsWith('dir ')).map((l) => l.slice(4)),
    default_python: lines.includes('default'),
    current: current ? current.replace(/\/+$/, '').split('/').pop()! : null,
  };
}
