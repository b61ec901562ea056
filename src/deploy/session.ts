// The session of one operation: an SSH connection to every host of the environment, the operation's
// token, and how each host's privileged steps run. Everything that talks to hosts takes a Session.
import { randomBytes } from 'node:crypto';
import type { Config, Environment } from '../config/types.js';
import { CkanReleaseError, HostsFailedError } from '../errors.js';
import type { Events } from '../events.js';
import type { HostFacts } from '../plan.js';
import { SshRemote, type ConnectOptions, type Remote } from '../remote/ssh.js';
import { resolveTarget } from '../remote/target.js';
import { callAgent, installAgent, type AgentHost } from './agent.js';
import type { Become } from './shell.js';

export type Say = (line: string) => void;

export interface Session {
  config: Config;
  env: Environment;
  secrets: Record<string, unknown>;
  say: Say;
  /** This operation's token: names its partial directories and its lock. */
  op: string;
  hosts: HostSession[];
  /** The progress event stream (events.ts), when the command has one: phases, uploads, results. */
  events?: Events;
  /** Verify releases already on a host by hashing every file, not trusting their seals (--rehash). */
  rehash?: boolean;
}

export interface HostSession {
  name: string;
  remote: Remote;
  /** Whether privileged steps run through sudo -n: false, true (as root) or the user to become. */
  sudo: Become;
  locked: boolean;
}

/** Runs fn over items with at most `limit` at once; resolves when all settled, in input order. */
export async function settleAll<T, R>(
  items: T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        results[i] = { status: 'fulfilled', value: await fn(items[i]!, i) };
      } catch (reason) {
        results[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** The failed ones of settleAll's results, named by host. */
export function failures<R>(
  hosts: { name: string }[],
  results: PromiseSettledResult<R>[],
): { host: string; error: unknown }[] {
  return results.flatMap((r, i) =>
    r.status === 'rejected' ? [{ host: hosts[i]!.name, error: r.reason }] : [],
  );
}

export function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * settleAll's values, or a HostsFailedError (errors.ts: its one exit-code rule) whose message is
 * `what` followed by each failed host's error.
 */
export function allOrThrow<R>(
  hosts: { name: string }[],
  results: PromiseSettledResult<R>[],
  what: string,
): R[] {
  const failed = failures(hosts, results);
  if (failed.length)
    throw new HostsFailedError(
      `${what}:\n${failed.map((f) => `  ${f.host}: ${message(f.error)}`).join('\n')}`,
      failed,
    );
  return results.map((r) => (r as PromiseFulfilledResult<R>).value);
}

/**
 * How privileged steps run on a host: `become` (environment, then deploy; default: when deploy.owner
 * is set) through `sudo -n` as `become_user` (default root). Not when the SSH user already is that user.
 */
export function becomeFor(config: Config, env: Environment, sshUser: string): Become {
  const become = env.become ?? config.deploy.become ?? !!config.deploy.owner;
  const user = env.becomeUser ?? config.deploy.becomeUser ?? 'root';
  if (!become || sshUser === user) return false;
  return user === 'root' ? true : user;
}

/** Connects to every host of the environment (in parallel); any failure closes the others. */
export async function openSession(
  config: Config,
  env: Environment,
  secrets: Record<string, unknown>,
  say: Say,
  connect: ConnectOptions = {},
): Promise<Session> {
  const op = randomBytes(4).toString('hex');
  const targets = env.hosts.map((h) => resolveTarget(env, h));
  const results = await settleAll(targets, env.parallel, (t) => SshRemote.connect(t, connect));
  const hosts: HostSession[] = results.flatMap((r, i) =>
    r.status === 'fulfilled'
      ? [
          {
            name: targets[i]!.name,
            remote: r.value,
            sudo: becomeFor(config, env, targets[i]!.user),
            locked: false,
          },
        ]
      : [],
  );
  const failed = failures(targets, results);
  if (failed.length) {
    for (const h of hosts) h.remote.close();
    // A host key that is not the known one aborts the whole operation with its own message (it names
    // the fingerprints and the fix), whatever the other hosts did: it is refused, not failed.
    const keyError = failed.find((f) => f.error instanceof CkanReleaseError && f.error.exitCode === 2);
    if (keyError) throw keyError.error;
    throw new HostsFailedError(
      `cannot reach every host of ${env.name}; nothing was changed:\n${failed.map((f) => `  ${message(f.error)}`).join('\n')}`,
      failed,
    );
  }
  say(`connected to ${hosts.map((h) => h.name).join(', ')}`);
  return { config, env, secrets, say, op, hosts };
}

export function closeSession(s: Session): void {
  for (const h of s.hosts) h.remote.close();
}

export function agentFor(s: Session, h: HostSession, python: string): AgentHost {
  return { remote: h.remote, root: s.config.root, python, sudo: h.sudo };
}

/** The host's facts, with the agent installed first (when it is not there yet). */
export async function readFacts(
  s: Session,
  h: HostSession,
  python: string,
  args: { libraries?: string[]; dirs?: string[] } = {},
): Promise<HostFacts> {
  const agent = agentFor(s, h, python);
  await installAgent(agent);
  return callAgent<HostFacts>(agent, 'read host facts', 'facts', { root: s.config.root, ...args });
}
