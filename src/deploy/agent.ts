// The host agent (assets/host/ckan_release_host.py): installed once per version under
// <root>/.ckan-release/agent/, run with the release's interpreter (or the host's first python3, python2
// or python when no release says which). One agent process per host and operation serves every call
// (session.ts, protocol.ts; README "How a host is driven"); one JSON answer per call.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OperationError } from '../errors.js';
import { agentDir } from '../layout.js';
import type { Remote } from '../remote/ssh.js';
import { commandError } from '../remote/ssh.js';
import type { AgentCommand, AgentReply } from './protocol.js';
import { AgentSession, type RequestData } from './agent-session.js';
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

// The agent itself is <digest>/ckan_release_host.py beside the stub (BOOTSTRAP writes both): imported,
// not run as a script, so Python keeps its bytecode in __pycache__. Compiling its lines on every call took
// 80 of the 100 ms of a call (measured on a sandbox host); a serve session compiles it at most once.
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

// ---- sessions (session.ts): one per host, interpreter and root, for the life of the connection

/**
 * What a serve session runs when the agent is not on the host (python -c BOOTSTRAP MODE STUB): it asks
 * for the agent (need_agent), reads it, and either writes it (the module first, the stub last: a stub
 * present means its module is complete) and runs it, or ("memory") runs it from memory, writing
 * nothing (dry runs), keeping the way to write it for a later install-agent request.
 * Python 2.7 and 3.6+; no single quotes (it travels inside a quoted shell word).
 */
export const BOOTSTRAP = [
  'import json, os, sys',
  'mode, stub = sys.argv[1], sys.argv[2]',
  'os.write(1, b"{\\"need_agent\\": true}\\n")',
  'def take(n):',
  '    data = b""',
  '    while len(data) < n:',
  '        chunk = os.read(0, n - len(data))',
  '        if not chunk:',
  '            sys.exit(4)',
  '        data += chunk',
  '    return data',
  'head = b""',
  'while not head.endswith(b"\\n"):',
  '    head += take(1)',
  'payload = json.loads(take(int(head)).decode("utf-8"))',
  'def install():',
  '    if os.path.isfile(stub):',
  '        return False',
  '    module = os.path.join(os.path.dirname(stub), payload["digest"], "ckan_release_host.py")',
  '    if not os.path.isdir(os.path.dirname(module)):',
  '        os.makedirs(os.path.dirname(module))',
  '    for path, text in ((module, payload["module"]), (stub, payload["stub"])):',
  '        tmp = "%s.tmp-%d" % (path, os.getpid())',
  '        with open(tmp, "wb") as f:',
  '            f.write(text.encode("utf-8"))',
  '        os.rename(tmp, path)',
  '        if path == module:',
  '            # Its bytecode too, where an import puts it: the first session that runs it from the',
  '            # disk (another interpreter of the same version included) writes nothing more.',
  '            import py_compile',
  '            try:',
  '                py_compile.compile(module, doraise=True)',
  '            except Exception:',
  '                pass',
  '    return True',
  'if mode == "install":',
  '    install()',
  '    os.execv(sys.executable, [sys.executable, stub, "serve"])',
  'import types',
  'agent = types.ModuleType("ckan_release_host")',
  'sys.modules["ckan_release_host"] = agent',
  'exec(compile(payload["module"].encode("utf-8"), "ckan_release_host.py", "exec"), agent.__dict__)',
  'sys.exit(agent.serve(install))',
  '',
].join('\n');

/**
 * The command line of a serve session: the installed agent's `serve` when its stub is there, else the
 * bootstrap ("install": writes it first; "memory": writes nothing). One `sh -c` under one sudo, the
 * interpreter found in the same shell (HOST_PYTHON). Pure, so tests can assert it.
 */
export function serveCommand(h: Pick<AgentHost, 'root' | 'python' | 'sudo'>, install: boolean): string {
  const stub = agentPath(h.root);
  const pick =
    `test -f ${cmd([stub])} && set -- ${cmd([stub])} serve || ` +
    `set -- -c ${cmd([BOOTSTRAP])} ${install ? 'install' : 'memory'} ${cmd([stub])}; `;
  const run = h.python === HOST_PYTHON ? PYTHON_PROBE : `exec ${cmd([h.python])} "$@"`;
  return cmd(maybeSudo(['sh', '-c', pick + run], h.sudo));
}

const bootstrapPayload = Buffer.from(
  JSON.stringify({ digest: agentDigest, module: agentText.toString('utf8'), stub: agentStub }),
);

const sessions = new WeakMap<Remote, Map<string, AgentSession>>();

/** The session of this host, interpreter and root: the open one, or a new one opened by its first call. */
function sessionOf(h: AgentHost, mayInstall: boolean): AgentSession {
  let byKey = sessions.get(h.remote);
  if (!byKey) sessions.set(h.remote, (byKey = new Map()));
  const key = JSON.stringify([h.root, h.python, h.sudo]);
  let s = byKey.get(key);
  // The session that found the host's python (HOST_PYTHON) serves an artifact whose python it is
  // (rollback's first look, then the rollback): one agent process, not two.
  const probed = byKey.get(JSON.stringify([h.root, HOST_PYTHON, h.sudo]));
  if ((!s || s.dead) && probed && !probed.dead && probed.executable === h.python) {
    byKey.set(key, probed);
    s = probed;
  }
  if (!s || s.dead) {
    const map = byKey;
    s = new AgentSession(
      h.remote,
      { command: (install) => serveCommand(h, install), payload: () => bootstrapPayload },
      mayInstall,
      (ended) => {
        if (map.get(key) === ended) map.delete(key);
      },
    );
    byKey.set(key, s);
  }
  return s;
}

/** Ends every agent session on this host (each agent exits after the request it is running). */
export function closeAgentSessions(remote: Remote): void {
  for (const s of sessions.get(remote)?.values() ?? []) s.close();
  sessions.delete(remote);
}

/**
 * Lets this operation write the agent to the host: the session's first call installs it on the way
 * (no round trip of its own), or the running session writes it if it started without.
 */
export async function installAgent(h: AgentHost): Promise<void> {
  await sessionOf(h, true).allowInstall();
}

function answerOf<T>(h: AgentHost, step: string, r: AgentReply): T {
  if (r.status === 'done') return r.answer as T;
  if (r.status === 'refused') throw new AgentRefusal(h.remote.name, r.error, r.message, r.details ?? {});
  throw commandError(h.remote.name, step, { code: 1, stdout: '', stderr: r.stderr || r.message });
}

/** A call's data (a stream, or a file the session reads itself) and its progress callback. */
export interface AgentCallOptions {
  stdin?: RequestData;
  /** Called with the number of data bytes sent so far. */
  onProgress?: (bytes: number) => void;
}

/** One agent command on the host's session; a refusal is an AgentRefusal, other failures name the step. */
export async function callAgent<T = Record<string, unknown>>(
  h: AgentHost,
  step: string,
  command: AgentCommand,
  args: Record<string, unknown>,
  opts: AgentCallOptions = {},
): Promise<T> {
  const r = await sessionOf(h, false).request(step, command, args, opts.stdin, opts.onProgress);
  return answerOf<T>(h, step, r);
}

/**
 * An agent command that only reads, with nothing written to the host (dry runs, and the checks made
 * before anything changes): on the session, which, when this version is not installed and nothing
 * allowed installing it, runs the agent from its text without writing it.
 */
export async function callAgentReadOnly<T = Record<string, unknown>>(
  h: AgentHost,
  step: string,
  command: AgentCommand,
  args: Record<string, unknown>,
): Promise<T> {
  return callAgent<T>(h, step, command, args);
}
