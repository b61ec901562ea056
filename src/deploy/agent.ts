// The host agent (assets/host/ckan_release_host.py): installed once per version under
// <root>/.ckan-release/agent/, run with the release's interpreter (or the host's first python3, python2
// or python when no release says which), one JSON answer per call.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { OperationError } from '../errors.js';
import { agentDir } from '../layout.js';
import type { ExecOptions, Remote } from '../remote/ssh.js';
import { commandError } from '../remote/ssh.js';
import { cmd, maybeSudo, type Become } from './shell.js';

export const AGENT_SCRIPT = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../assets/host/ckan_release_host.py',
);
const agentText = readFileSync(AGENT_SCRIPT);
const agentDigest = createHash('sha256').update(agentText).digest('hex').slice(0, 12);

export interface AgentHost {
  remote: Remote;
  root: string;
  /** The interpreter the agent runs with: the artifact's python, or HOST_PYTHON when none is known. */
  python: string;
  sudo: Become;
}

/**
 * The interpreters tried, in this order, when no artifact names one (setup, status, unlock, rollback's
 * first look): the agent runs on any Python from 2.7 on, and a CentOS 7 host may have only python2.
 */
export const HOST_PYTHONS = ['python3', 'python2', 'python'] as const;
/** AgentHost.python for "the first of HOST_PYTHONS this host has". */
export const HOST_PYTHON = HOST_PYTHONS.join('|');

/** Looks for the interpreter in the same shell that runs the agent: no extra round trip. */
const PYTHON_PROBE =
  `for p in ${HOST_PYTHONS.join(' ')}; do if command -v "$p" >/dev/null 2>&1; then exec "$p" "$@"; fi; done; ` +
  `echo "ckan-release: this host has none of ${HOST_PYTHONS.join(', ')} on its PATH: the host agent needs Python 2.7 or later" >&2; exit 127`;

/** argv that runs `python args...`: HOST_PYTHON picks the host's first HOST_PYTHONS in one `sh -c`. */
export function pythonArgv(python: string, args: string[]): string[] {
  return python === HOST_PYTHON ? ['sh', '-c', PYTHON_PROBE, 'sh', ...args] : [python, ...args];
}

/** The host refused an operation (locked, bad artifact, unhealthy...): `kind` says which. */
export class AgentRefusal extends OperationError {
  constructor(
    readonly host: string,
    readonly kind: string,
    message: string,
    readonly details: Record<string, unknown>,
  ) {
    super(`${host}: ${message}`);
  }
}

/** The command the tool runs: a stub that imports the agent as a module (below). */
export function agentPath(root: string): string {
  return path.posix.join(agentDir(root), `${agentDigest}.py`);
}

/**
 * The agent itself, <digest>/ckan_release_host.py: imported, not run as a script, so Python keeps its
 * bytecode in __pycache__. Compiling its 1,600 lines on every call took 80 of the 100 ms of a call
 * (measured on a sandbox host), and a rollback makes a dozen calls per host.
 */
function agentModulePath(root: string): string {
  return path.posix.join(agentDir(root), agentDigest, 'ckan_release_host.py');
}

const agentStub = [
  '# ckan-release host agent: runs the module next to it (README "Host layout").',
  'import os, sys',
  `sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ${JSON.stringify(agentDigest)}))`,
  'from ckan_release_host import *  # noqa',
  'from ckan_release_host import main',
  'if __name__ == "__main__":',
  '    sys.exit(main())',
  '',
].join('\n');

/** The command line that runs one agent command: pure, so tests can assert it. */
export function agentCommand(
  h: Pick<AgentHost, 'root' | 'python' | 'sudo'>,
  command: string,
  args: Record<string, unknown>,
): string {
  return cmd(maybeSudo(pythonArgv(h.python, [agentPath(h.root), command, JSON.stringify(args)]), h.sudo));
}

/** Writes the agent to the host unless this version is already there. */
export async function installAgent(h: AgentHost): Promise<void> {
  const file = agentPath(h.root);
  const module = agentModulePath(h.root);
  const tmp = `${file}.tmp-${process.pid}`;
  const moduleTmp = `${module}.tmp-${process.pid}`;
  // The module first, the stub last: a stub present means its module is complete.
  const script =
    `test -f ${cmd([file])} || { mkdir -p ${cmd([path.posix.dirname(module)])} && cat > ${cmd([moduleTmp])} && ` +
    `mv ${cmd([moduleTmp, module])} && printf '%s' ${cmd([agentStub])} > ${cmd([tmp])} && mv ${cmd([tmp, file])}; }`;
  await h.remote.run('install the host agent', cmd(maybeSudo(['sh', '-c', script], h.sudo)), {
    stdin: Readable.from([agentText]),
  });
}

export async function callAgent<T = Record<string, unknown>>(
  h: AgentHost,
  step: string,
  command: string,
  args: Record<string, unknown>,
  opts: ExecOptions = {},
): Promise<T> {
  const r = await h.remote.exec(agentCommand(h, command, args), opts);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  let parsed: Record<string, unknown> | undefined;
  try {
    parsed = last ? (JSON.parse(last) as Record<string, unknown>) : undefined;
  } catch {
    parsed = undefined;
  }
  if (r.code === 3 && parsed?.error) {
    throw new AgentRefusal(
      h.remote.name,
      String(parsed.error),
      String(parsed.message),
      (parsed.details as Record<string, unknown>) ?? {},
    );
  }
  if (r.code !== 0 || !parsed) throw commandError(h.remote.name, step, r);
  return parsed as T;
}

/**
 * An agent command that only reads, with nothing written to the host (dry runs, and the checks made
 * before anything changes): from the installed agent, or, when this version is not installed, from the
 * command line (`python -c <agent> COMMAND ARGS`), so that not even the agent file is written.
 */
export async function callAgentReadOnly<T = Record<string, unknown>>(
  h: AgentHost,
  step: string,
  command: string,
  args: Record<string, unknown>,
): Promise<T> {
  const installed = await h.remote.exec(cmd(maybeSudo(['test', '-f', agentPath(h.root)], h.sudo)));
  if (installed.code === 0) return callAgent<T>(h, step, command, args);
  const r = await h.remote.exec(
    cmd(
      maybeSudo(
        pythonArgv(h.python, ['-c', agentText.toString('utf8'), command, JSON.stringify(args)]),
        h.sudo,
      ),
    ),
  );
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !last.startsWith('{')) throw commandError(h.remote.name, step, r);
  return JSON.parse(last) as T;
}
