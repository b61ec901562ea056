// Reading what a plan needs from the hosts. For --dry-run nothing is written: the host agent runs from
// where it is installed, or, when this version is not installed, from the command line
// (`python -c <agent> facts ...`), so that not even the agent file is written.
import type { Manifest } from '../artifact/manifest.js';
import type { HostFacts, ServerFilePlan } from '../plan.js';
import { agentPath, callAgentReadOnly } from './agent.js';
import { installServerFiles } from './server.js';
import { agentFor, type HostSession, type Session } from './session.js';
import { cmd, maybeSudo } from './shell.js';

async function agentInstalled(s: Session, h: HostSession): Promise<boolean> {
  return (await h.remote.exec(cmd(maybeSudo(['test', '-f', agentPath(s.config.root)], h.sudo)))).code === 0;
}

/**
 * The host's facts (the agent's `facts`, which only reads), with nothing written to the host.
 * `libraries`: the manifest's, to say which the host lacks; `dirs`: setup's, to say which exist.
 */
export async function readFactsReadOnly(
  s: Session,
  h: HostSession,
  python: string,
  libraries: string[] = [],
  dirs?: string[],
): Promise<HostFacts> {
  return callAgentReadOnly<HostFacts>(agentFor(s, h, python), 'read host facts', 'facts', {
    root: s.config.root,
    libraries,
    ...(dirs ? { dirs } : {}),
  });
}

/**
 * Which server files would change: compared by the agent (check mode) when it is installed.
 * `installed`: the caller knows it is (the real run installs it before it plans).
 */
export async function serverFilePlans(
  s: Session,
  h: HostSession,
  python: string,
  m: Manifest | null,
  installed = false,
): Promise<ServerFilePlan[]> {
  if (!s.config.server.files.length) return [];
  if (!installed && !(await agentInstalled(s, h)))
    return s.config.server.files.map((f) => ({ dest: f.dest, change: 'unknown', reload: f.reload }));
  const files = await installServerFiles(s, h, python, m, true);
  return files.map((f) => ({ dest: f.dest, change: f.changed ? 'install' : 'unchanged', reload: f.reload }));
}

/** A plan's WOULD FAIL lines from the web server checks (server.ts serverChecks). */
export function serverPlanProblems(c: { problems: string[]; unread?: string }): string[] {
  return [...c.problems, ...(c.unread ? [`cannot read the web server facts: ${c.unread}`] : [])];
}
