// ship, rollback and promote, for one environment, in the design's two phases:
//   1. every host in parallel: connect, lock, preflight, receive + verify + render + link + rename into
//      releases/<ID>, before_switch hooks. Any failure: nobody switches, partials removed, locks released.
//   2. switch every host, restart, health check. Any failure: every switched host switches back and
//      restarts, the release is marked failed. Then after_switch hooks, prune, ledger, unlock.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { adoptedSkips, isAdopted } from '../artifact/adopted.js';
import type { Manifest } from '../artifact/manifest.js';
import type { StoredArtifact } from '../artifact/store.js';
import type { Config, Environment, Hook } from '../config/types.js';
import { CkanReleaseError, OperationError, UsageError } from '../errors.js';
import type { Events } from '../events.js';
import { hostCompatibility } from '../plan.js';
import { renderFile, renderString } from '../render/template.js';
import { SshRemote, SudoPasswordError, type ConnectOptions, type Remote } from '../remote/ssh.js';
import { resolveTarget } from '../remote/target.js';
import { AgentRefusal, callAgent, installAgent, type AgentHost } from './agent.js';
import { DeltaCache } from './delta.js';
import { fetchRelease, placeManifest } from './fetch.js';
import { healthcheckHost } from './server-facts.js';
import {
  installServerFiles,
  refuseUnfitServers,
  restartHost,
  restoreServerFiles,
  type ServerFileChange,
} from './server.js';
import { cmd, maybeSudo, shq, type Become } from './shell.js';

export interface HostFacts {
  python: { path: string; version: string; implementation?: string };
  os?: { id: string | null; version_id: string | null };
  missing_libraries?: string[];
  layout: boolean;
  current: string | null;
  rollback_target: string | null;
  /** adopted: setup's link to <root>/default (artifact/adopted.ts); absent from older agents. */
  releases: { id: string; state: string; time: string | null; adopted?: boolean }[];
  partials: string[];
  lock: Record<string, unknown> | null;
  lock_expired: boolean;
  disk_free: number | null;
  ledger: { event: string; release?: string; time?: string }[];
}

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

function failures<R>(
  hosts: HostSession[],
  results: PromiseSettledResult<R>[],
): { host: string; error: unknown }[] {
  return results.flatMap((r, i) =>
    r.status === 'rejected' ? [{ host: hosts[i]!.name, error: r.reason }] : [],
  );
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
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
  const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
  if (failed.length) {
    for (const h of hosts) h.remote.close();
    // A host key problem is bad input (exit 2); an unreachable host is a failure (exit 1).
    const keyError = failed.find((e) => e instanceof CkanReleaseError && e.exitCode === 2);
    if (keyError) throw keyError;
    throw new OperationError(
      `cannot reach every host of ${env.name}; nothing was changed:\n${failed.map((e) => `  ${e.message}`).join('\n')}`,
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

export async function readFacts(s: Session, h: HostSession, python: string): Promise<HostFacts> {
  const agent = agentFor(s, h, python);
  await installAgent(agent);
  return callAgent<HostFacts>(agent, 'read host facts', 'facts', { root: s.config.root });
}

export function lockOwner(s: Session, operation: string): Record<string, unknown> {
  return { user: os.userInfo().username, machine: os.hostname(), pid: process.pid, operation, token: s.op };
}

const LOCK_TTL_SECONDS = 3600;

/**
 * A lock held by a process of this very machine that no longer exists (a killed ckan-release) is
 * stale whatever its expiry says: its token is passed so the agent may take it over.
 */
export function deadLocalHolder(lock: Record<string, unknown> | null): string | undefined {
  if (
    !lock ||
    lock.machine !== os.hostname() ||
    typeof lock.pid !== 'number' ||
    typeof lock.token !== 'string'
  )
    return undefined;
  try {
    process.kill(lock.pid, 0);
    return undefined; // alive
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH' ? lock.token : undefined;
  }
}

async function lockHost(
  s: Session,
  h: HostSession,
  python: string,
  operation: string,
  held: Record<string, unknown> | null = null,
): Promise<void> {
  const stale = deadLocalHolder(held);
  const r = await callAgent<{ taken_over: Record<string, unknown> | null }>(
    agentFor(s, h, python),
    'lock',
    'lock',
    {
      root: s.config.root,
      owner: lockOwner(s, operation),
      ttl: LOCK_TTL_SECONDS,
      ...(stale ? { stale_token: stale } : {}),
    },
  );
  h.locked = true;
  if (r.taken_over) {
    const why =
      stale && r.taken_over.token === stale ? 'the lock of a process that is gone' : 'an expired lock';
    s.say(`${h.name}: took over ${why}: ${describeHolder(r.taken_over)}`);
  }
}

export function describeHolder(o: Record<string, unknown>): string {
  const since =
    typeof o.since === 'number' ? new Date(o.since * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z') : '?';
  return `${String(o.user ?? '?')}@${String(o.machine ?? '?')} (pid ${String(o.pid ?? '?')}, ${String(o.operation ?? '?')}, since ${since})`;
}

/** Extends every held lock (same token): operations longer than the lock's TTL keep it. */
async function renewLocks(s: Session, python: string, operation: string): Promise<void> {
  const results = await settleAll(
    s.hosts.filter((h) => h.locked),
    s.env.parallel,
    (h) => lockHost(s, h, python, operation),
  );
  const f = failures(s.hosts, results);
  if (f.length) throw new OperationError(`lost a lock: ${f.map((x) => message(x.error)).join('; ')}`);
}

async function unlockAll(s: Session, python: string): Promise<void> {
  await settleAll(
    s.hosts.filter((h) => h.locked),
    s.env.parallel,
    async (h) => {
      await callAgent(agentFor(s, h, python), 'unlock', 'unlock', { root: s.config.root, token: s.op });
      h.locked = false;
    },
  );
}

/** Template variables for one host: environment vars, secrets, host_vars, and the deploy's own. */
export function templateVars(
  s: Pick<Session, 'config' | 'env' | 'secrets'>,
  host: string,
  manifest: Pick<Manifest, 'id' | 'extensions' | 'adopted'>,
): Record<string, unknown> {
  const release = path.posix.join(s.config.root, 'releases', manifest.id);
  const own = { ...s.env.vars, ...s.secrets, ...(s.env.hostVars[host] ?? {}) };
  // A release setup adopted has no config of ckan-release's inside it: its config is the site's own,
  // `legacy_config` (the one the builtin WSGI scripts fall back to), when the environment names it.
  const legacy = isAdopted(manifest) && typeof own.legacy_config === 'string' ? own.legacy_config : null;
  return {
    ...own,
    project: s.config.project,
    release,
    release_id: manifest.id,
    root: s.config.root,
    current: path.posix.join(s.config.root, 'current'),
    config_file: legacy ?? path.posix.join(release, s.env.configFile),
    // For server files, which point at current and so need no re-rendering at a switch.
    current_config_file: path.posix.join(s.config.root, 'current', s.env.configFile),
    deploy_owner: s.config.deploy.owner ?? 'root',
    deploy_group: s.config.deploy.group ?? s.config.deploy.owner ?? 'root',
    wsgi_process_group: s.config.server.apache.processGroup,
    uwsgi_pidfile: s.config.server.uwsgi.pidfile,
    environment: s.env.name,
    host,
    extensions: manifest.extensions,
    plugins: manifest.extensions.flatMap((x) => x.plugins),
  };
}

/**
 * The same variables for templates that become shell commands (hooks, restart): every string is
 * shell-quoted, so a value with spaces, quotes or $(...) stays one literal word. Safe paths such as
 * {{ release }} are left as they are, so `{{ release }}/bin/ckan` still works.
 */
export function shellVars(vars: Record<string, unknown>): Record<string, unknown> {
  const quote = (v: unknown): unknown =>
    typeof v === 'string' ? shq(v) : Array.isArray(v) ? v.map(quote) : v;
  return Object.fromEntries(Object.entries(vars).map(([k, v]) => [k, quote(v)]));
}

function pythonOf(m: Manifest): string {
  return m.builder.python.path;
}

/** Phase 1 on one host: everything up to, not including, the switch. */
/** Returns the host's current release before the operation (what a failure switches back to). */
async function stageOnHost(
  s: Session,
  h: HostSession,
  artifact: StoredArtifact,
  operation: string,
  runOnceHooks: boolean,
  deltas: DeltaCache,
): Promise<string | null> {
  const m = artifact.manifest;
  const python = pythonOf(m);
  const agent = agentFor(s, h, python);
  let facts: HostFacts;
  s.events?.emit({ type: 'phase', host: h.name, phase: 'preflight' });
  try {
    await installAgent(agent);
    facts = await callAgent<HostFacts>(agent, 'read host facts', 'facts', {
      root: s.config.root,
      libraries: m.libraries ?? [],
    });
  } catch (e) {
    // A refusal, or a sudo that wants a password, says what it is; anything else is the interpreter.
    if (e instanceof AgentRefusal || e instanceof SudoPasswordError) throw e;
    throw new OperationError(
      `${h.name}: preflight: cannot run ${python} (the artifact's python) with the host agent: ${message(e)}`,
    );
  }
  if (!facts.layout)
    throw new UsageError(
      `${h.name}: ${s.config.root} is not set up`,
      `run \`ckan-release setup ${s.env.name}\` first`,
    );
  // Before the lock and any change: the host must be able to run the artifact (plan.ts, the one rule).
  const incompatible = hostCompatibility(m, facts);
  if (incompatible.length)
    throw new UsageError(
      `${h.name}: ${incompatible.join('; ')}`,
      'build on the builder that matches the hosts (builder.os), or bring the host to it; nothing was changed',
    );
  const existing = facts.releases.find((r) => r.id === m.id);
  if (isAdopted(m) && !existing?.adopted)
    throw new UsageError(
      `${h.name}: releases/${m.id} is not the release setup adopted on this host (a link to ../default)`,
      'an adopted release cannot be sent: it exists only where setup adopted it; nothing was changed',
    );
  s.events?.emit({ type: 'phase', host: h.name, phase: 'lock' });
  await lockHost(s, h, python, operation, facts.lock);
  const rendered = () =>
    renderFile(
      s.config.config.template,
      templateVars(s, h.name, m),
      path.relative(process.cwd(), s.config.config.template),
    );
  if (isAdopted(m)) {
    // setup's link to <root>/default: nothing to verify it against, and it keeps the site's own config.
    s.say(
      `${h.name}: releases/${m.id} is the release adopted from ${m.adopted!.from}; skipped: ${adoptedSkips(m).join('; ')}`,
    );
  } else if (existing) {
    // Already on the host (a re-ship, a rollback): not sent again, but checked file by file against
    // the manifest, and its config rendered anew (the secrets or vars may have changed).
    s.events?.emit({ type: 'phase', host: h.name, phase: 'verify', detail: `releases/${m.id}` });
    let how = '';
    if (m.files.length > 0) {
      // The host's kept manifest (same sha256) and the release's seals usually prove it unchanged
      // without sending the manifest or reading a file (README "Performance"); else it is sent.
      const verify = (manifest?: string) =>
        callAgent<{
          ok: boolean;
          problems: string[];
          extra: string[];
          need_manifest?: boolean;
          by?: 'tree seal' | 'seal' | 'full';
          hashed?: number;
        }>(agent, 'verify', 'verify', {
          root: s.config.root,
          id: m.id,
          manifest_sha256: createHash('sha256').update(manifestJson(m)).digest('hex'),
          ...(manifest ? { manifest } : {}),
          allowed_extra: [s.env.configFile, ...s.config.shared.map((x) => x.link)],
          // Verified: a later delta may copy from it.
          keep_manifest: true,
          full: s.rehash ?? false,
        });
      let v = await verify();
      if (v.need_manifest) {
        const manifestPath = await uploadManifest(s, h, m);
        v = await verify(manifestPath);
        await h.remote.exec(cmd(maybeSudo(['rm', '-f', manifestPath], h.sudo)));
      }
      if (!v.ok) {
        throw new OperationError(
          `${h.name}: releases/${m.id} differs from its manifest, refusing to switch to it: ${[...v.problems, ...v.extra.map((x) => `unexpected ${x}`)].slice(0, 5).join('; ')}`,
        );
      }
      how =
        v.by === 'tree seal'
          ? ', unchanged since verified (tree seal)'
          : `, verified against the manifest (${v.hashed ?? '?'} files hashed${v.by === 'seal' ? ', the others unchanged since sealed' : ''})`;
    }
    await callAgent(
      agent,
      'write the config',
      'config',
      {
        root: s.config.root,
        id: m.id,
        config_file: s.env.configFile,
        owner: s.config.deploy.owner ?? null,
        group: s.config.deploy.group ?? null,
      },
      { stdin: Readable.from([rendered()]) },
    );
    s.say(`${h.name}: releases/${m.id} is already there (${existing.state})${how}; not sent again`);
  } else {
    const need = m.files.reduce((n, f) => n + f.size, 0) + m.archive.bytes;
    if (facts.disk_free !== null && facts.disk_free < need * 1.2) {
      throw new OperationError(
        `${h.name}: preflight: ${facts.disk_free} bytes free under ${s.config.root}, the release needs about ${need}`,
      );
    }
    const manifestPath = await placeManifest(s, h, agent, m, () => uploadManifest(s, h, m));
    s.events?.emit({ type: 'phase', host: h.name, phase: 'upload', detail: `${m.archive.bytes} bytes` });
    const received = await sendRelease(s, h, agent, artifact, manifestPath, deltas);
    s.events?.emit({ type: 'phase', host: h.name, phase: 'finalize' });
    await callAgent(
      agent,
      'finalize',
      'finalize',
      {
        root: s.config.root,
        id: m.id,
        op: s.op,
        partial: received,
        manifest: manifestPath,
        config_file: s.env.configFile,
        owner: s.config.deploy.owner ?? null,
        group: s.config.deploy.group ?? null,
        shared: s.config.shared,
        by: lockOwner(s, operation),
      },
      { stdin: Readable.from([rendered()]) },
    );
    const needFile = path.posix.join(path.posix.dirname(manifestPath), `${s.op}-need.json`);
    await h.remote.exec(cmd(maybeSudo(['rm', '-f', manifestPath, needFile], h.sudo)));
    s.say(`${h.name}: staged releases/${m.id} (config rendered, shared paths linked)`);
  }
  for (const hook of s.config.deploy.hooks.beforeSwitch) {
    if (hook.once && !runOnceHooks) continue;
    await runHook(s, h, hook, m, 'before_switch');
  }
  s.events?.emit({ type: 'phase', host: h.name, phase: 'staged', detail: `releases/${m.id}` });
  return facts.current;
}

interface DeltaPlan {
  delta: boolean;
  partial?: string;
  need: string[] | null;
  reused?: number;
  reused_bytes?: number;
  tampered?: string[];
  tampered_count?: number;
  bases: string[];
  /** The current release was copied whole (cp -a) and trimmed, not file by file. */
  whole?: boolean;
}

/** Beyond this share of the release's bytes still to send, a delta is not worth it: the full archive. */
const DELTA_MAX_SHARE = 0.5;

/**
 * Gets the release into a partial directory on the host and returns its path: a delta when the host
 * has earlier releases to copy unchanged files from (the current one whole when its tree seal proves it
 * unchanged, else file by file, hashing each one its seal does not vouch for, so a tampered base file
 * is never used), the full archive otherwise. Either way every received file is
 * checked against the manifest, and finalize checks the whole tree again (files this operation wrote
 * and sealed are not read twice).
 */
async function sendRelease(
  s: Session,
  h: HostSession,
  agent: AgentHost,
  artifact: StoredArtifact,
  manifestPath: string,
  deltas: DeltaCache,
): Promise<string> {
  const m = artifact.manifest;
  const t0 = Date.now();
  const mtime = await deltas.mtime();
  // Received and copied files get their owner at once: finalize then trusts their seal (no re-hash).
  const owner = { owner: s.config.deploy.owner ?? null, group: s.config.deploy.group ?? null };
  const plan = await callAgent<DeltaPlan>(agent, 'delta', 'delta', {
    root: s.config.root,
    id: m.id,
    op: s.op,
    manifest: manifestPath,
    mtime,
    ...owner,
  });
  if (plan.tampered_count) {
    s.say(
      `${h.name}: ${plan.tampered_count} files of earlier releases differ from their manifests and were not reused (e.g. ${plan.tampered!.slice(0, 3).join(', ')})`,
    );
  }
  if (plan.delta && plan.need) {
    const sizes = new Map(m.files.map((f) => [f.path, f.size]));
    const total = m.files.reduce((n, f) => n + f.size, 0);
    const needBytes = plan.need.reduce((n, p) => n + (sizes.get(p) ?? 0), 0);
    if (needBytes <= total * DELTA_MAX_SHARE) {
      const copied = `${plan.reused} files (${((plan.reused_bytes ?? 0) / 1e6).toFixed(1)} MB) copied from ${plan.bases[0]}${plan.whole ? ' (whole, proved unchanged by its tree seal)' : ''}${plan.bases.length > 1 ? ' and older releases' : ''}`;
      if (plan.need.length === 0) {
        s.say(`${h.name}: delta: nothing to send, ${copied}`);
        return plan.partial!;
      }
      const d = await deltas.get(plan.need);
      await callAgent(
        agent,
        'receive the delta',
        'receive',
        {
          root: s.config.root,
          id: m.id,
          op: s.op,
          manifest: manifestPath,
          delta: { mtime, bytes: d.data.length, sha256: createHash('sha256').update(d.data).digest('hex') },
          ...owner,
        },
        { stdin: Readable.from([d.data]), onProgress: progress(s, h.name, d.data.length, t0) },
      );
      s.say(
        `${h.name}: delta: sent ${d.files} files (${d.data.length} bytes compressed, ${(d.bytes / 1e6).toFixed(1)} MB) in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${copied}`,
      );
      return plan.partial!;
    }
    s.say(
      `${h.name}: a delta would send ${((needBytes / total) * 100).toFixed(0)}% of the release: sending the full archive`,
    );
  }
  const fetched = await fetchRelease(s, h, agent, m, manifestPath, owner);
  if (fetched) return fetched;
  const received = await callAgent<{ partial: string }>(
    agent,
    'receive',
    'receive',
    { root: s.config.root, id: m.id, op: s.op, manifest: manifestPath, ...owner },
    {
      stdin: createReadStream(artifact.archive, { highWaterMark: 1 << 20 }),
      onProgress: progress(s, h.name, m.archive.bytes, t0),
    },
  );
  const secs = (Date.now() - t0) / 1000;
  s.say(
    `${h.name}: received ${(m.archive.bytes / 1e6).toFixed(1)} MB in ${secs.toFixed(1)} s, every file checked against the manifest`,
  );
  return received.partial;
}

/** Puts the manifest where the agent reads it: <root>/.ckan-release/tmp/<op>-manifest.json. */
async function uploadManifest(s: Session, h: HostSession, m: Manifest): Promise<string> {
  const manifestPath = path.posix.join(s.config.root, '.ckan-release', 'tmp', `${s.op}-manifest.json`);
  const writeManifest = `mkdir -p ${cmd([path.posix.dirname(manifestPath)])} && cat > ${cmd([manifestPath])}`;
  await h.remote.run('upload the manifest', cmd(maybeSudo(['sh', '-c', writeManifest], h.sudo)), {
    stdin: Readable.from([manifestJson(m)]),
  });
  return manifestPath;
}

/** The manifest as sent to hosts; its sha256 names the copy a host keeps. Computed once per manifest. */
const manifestJsonCache = new WeakMap<Manifest, string>();
function manifestJson(m: Manifest): string {
  let json = manifestJsonCache.get(m);
  if (json === undefined) {
    json = JSON.stringify(m);
    manifestJsonCache.set(m, json);
  }
  return json;
}

/** Upload progress: a line at each quarter, with the rate so far. */
function progress(s: Session, host: string, total: number, t0: number): (sent: number) => void {
  let shown = 0;
  return (sent) => {
    // With an event stream, the renderers show the upload (throttled); the quarter lines are for without.
    if (s.events) return s.events.emit({ type: 'upload', host, sent, total });
    const quarter = Math.floor((sent / total) * 4);
    if (quarter <= shown || quarter >= 4) return;
    shown = quarter;
    const secs = (Date.now() - t0) / 1000;
    s.say(
      `${host}: sent ${quarter * 25}% (${(sent / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB, ${(sent / 1e6 / Math.max(secs, 0.001)).toFixed(1)} MB/s)`,
    );
  };
}

async function runHook(s: Session, h: HostSession, hook: Hook, m: Manifest, when: string): Promise<void> {
  const line = renderString(hook.run, shellVars(templateVars(s, h.name, m)), `deploy.hooks.${when}`);
  const release = path.posix.join(s.config.root, 'releases', m.id);
  const argv = ['sh', '-c', `cd ${cmd([release])} && ${line}`];
  const asOwner =
    s.config.deploy.owner && h.sudo ? ['sudo', '-n', '-u', s.config.deploy.owner, '--', ...argv] : argv;
  s.events?.emit({
    type: 'phase',
    host: h.name,
    phase: when === 'after_switch' ? 'after_switch' : 'before_switch',
    detail: hook.run,
  });
  s.say(`${h.name}: ${when} hook: ${hook.run}`);
  await h.remote.run(`${when} hook "${hook.run}"`, cmd(asOwner));
}

async function switchHost(
  s: Session,
  h: HostSession,
  python: string,
  id: string | null,
): Promise<{ previous: string | null }> {
  return callAgent<{ previous: string | null }>(agentFor(s, h, python), 'switch', 'switch', {
    root: s.config.root,
    id,
    op: s.op,
  });
}

/** The health check of one host: its URL and the Host header it is sent with (healthcheckHost). */
export function healthcheckFor(
  s: Pick<Session, 'config' | 'env' | 'secrets'>,
  host: string,
  m: Pick<Manifest, 'id' | 'extensions'>,
): { url: string; host: string | undefined } {
  const vars = templateVars(s, host, m);
  const hc = s.config.deploy.healthcheck;
  return {
    url: renderString(hc.url, vars, 'deploy.healthcheck.url'),
    host: healthcheckHost(
      hc.host === undefined ? undefined : renderString(hc.host, vars, 'deploy.healthcheck.host'),
      vars,
    ),
  };
}

async function healthOnHost(s: Session, h: HostSession, m: Manifest): Promise<Record<string, unknown>> {
  const { url, host } = healthcheckFor(s, h.name, m);
  return callAgent(agentFor(s, h, pythonOf(m)), 'health check', 'health', {
    url,
    ...(host ? { host } : {}),
    plugins: m.extensions.flatMap((x) => x.plugins),
    timeout: s.config.deploy.healthcheck.timeout,
  });
}

async function ledger(
  s: Session,
  h: HostSession,
  python: string,
  entries: Record<string, unknown>[],
): Promise<void> {
  await callAgent(agentFor(s, h, python), 'ledger', 'ledger', {
    root: s.config.root,
    entries: entries.map((e) => ({ op: s.op, ...e })),
  });
}

export interface DeployOptions {
  operation: string;
  /** rollback: the release switched away from is marked bad on success. */
  markPreviousBad?: boolean;
}

export interface DeployResult {
  hosts: { host: string; previous: string | null; current: string }[];
  pruned: { host: string; release: string | null; why: string }[];
}

/** Stages the artifact on every host, then switches them all; the whole two-phase operation. */
export async function deploy(
  s: Session,
  artifact: StoredArtifact,
  opts: DeployOptions,
): Promise<DeployResult> {
  const m = artifact.manifest;
  const python = pythonOf(m);
  const limit = s.env.parallel;
  const deltas = new DeltaCache(artifact.archive);
  // On the operation's last ledger entries, for `history` (who, and how long the whole operation took).
  const started = new Date().toISOString();
  const by = lockOwner(s, opts.operation);
  // A restart recipe or server template the host's web server cannot run: refused before anything
  // changes anywhere (the dry run prints the same problems).
  await refuseUnfitServers(s, python, m, opts.operation.split(' ')[0] ?? opts.operation);
  try {
    // Phase 1.
    const staged = await settleAll(s.hosts, limit, (h, i) =>
      stageOnHost(s, h, artifact, opts.operation, i === 0, deltas),
    );
    const failed1 = failures(s.hosts, staged);
    for (const f of failed1) s.events?.emit({ type: 'host-failed', host: f.host, error: message(f.error) });
    if (failed1.length) {
      await settleAll(s.hosts, limit, (h) =>
        callAgent(agentFor(s, h, python), 'clean', 'clean', { root: s.config.root, op: s.op }),
      );
      const refusal = failed1.find((f) => f.error instanceof AgentRefusal && f.error.kind === 'locked');
      const detail = failed1.map((f) => `  ${message(f.error)}`).join('\n');
      const err = new OperationError(
        `${opts.operation} failed before any host switched; nothing changed on any host:\n${detail}`,
      );
      if (refusal)
        throw new OperationError(
          err.message,
          'if that lock is stale (its process is gone), run `ckan-release unlock ' + s.env.name + '`',
        );
      const bad = failed1.find((f) => f.error instanceof CkanReleaseError && f.error.exitCode === 2);
      if (bad && failed1.length === s.hosts.length)
        throw new UsageError(err.message, (bad.error as CkanReleaseError).hint);
      throw err;
    }

    // A long phase 1 must not have let the locks expire: renew them before anything else changes.
    await renewLocks(s, python, opts.operation);

    // Server files (server.files) whose rendering changed, on every host, before any switch. They
    // point at <root>/current, so the release still served keeps working with them.
    const serverChanges = new Map<HostSession, ServerFileChange[]>();
    if (s.config.server.files.length) {
      const installed = await settleAll(s.hosts, limit, async (h) => {
        s.events?.emit({ type: 'phase', host: h.name, phase: 'server files' });
        const files = await installServerFiles(s, h, python, m);
        serverChanges.set(h, files);
        for (const f of files.filter((x) => x.changed)) s.say(`${h.name}: installed ${f.dest}`);
      });
      const failedServer = failures(s.hosts, installed);
      if (failedServer.length) {
        await settleAll([...serverChanges.entries()], limit, ([h, files]) =>
          restoreServerFiles(s, h, python, files, m),
        );
        await settleAll(s.hosts, limit, (h) =>
          callAgent(agentFor(s, h, python), 'clean', 'clean', { root: s.config.root, op: s.op }),
        );
        throw new OperationError(
          `${opts.operation} failed installing server files, before any host switched; the server files were put back:\n` +
            failedServer.map((f) => `  ${message(f.error)}`).join('\n'),
        );
      }
    }

    // Phase 2.
    const previousOf = new Map(
      s.hosts.map((h, i) => [h, (staged[i] as PromiseFulfilledResult<string | null>).value]),
    );
    const switched: { h: HostSession; previous: string | null }[] = [];
    let aborted = false;
    const phase2 = await settleAll(s.hosts, limit, async (h) => {
      if (aborted) throw new OperationError(`${h.name}: not switched, because another host failed first`);
      const previous = previousOf.get(h) ?? null;
      // Counted as switched before the call: a switch that fails halfway (the link renamed, the answer
      // lost) must be switched back too, and switching back is idempotent.
      switched.push({ h, previous });
      try {
        s.events?.emit({ type: 'phase', host: h.name, phase: 'switch', detail: `releases/${m.id}` });
        await switchHost(s, h, python, m.id);
        s.say(`${h.name}: current -> releases/${m.id} (was ${previous ?? 'nothing'})`);
        s.events?.emit({ type: 'phase', host: h.name, phase: 'restart' });
        await restartHost(s, h, m, python, { full: previous === null });
        s.events?.emit({ type: 'phase', host: h.name, phase: 'health' });
        const health = await healthOnHost(s, h, m);
        s.say(
          `${h.name}: healthy: CKAN ${String(health.ckan_version)} with ${(health.extensions as string[]).join(' ')}`,
        );
        return previous;
      } catch (e) {
        aborted = true;
        s.events?.emit({ type: 'host-failed', host: h.name, error: message(e) });
        throw e;
      }
    });
    const failed2 = failures(s.hosts, phase2);
    if (failed2.length) {
      const why = failed2
        .map((f) => message(f.error))
        .join('; ')
        .slice(0, 500);
      const back = await settleAll(switched, limit, async ({ h, previous }) => {
        s.events?.emit({ type: 'phase', host: h.name, phase: 'switch back', detail: previous ?? 'nothing' });
        await switchHost(s, h, python, previous);
        // Whatever else fails here, the host is restarted: its server must drop the failed code.
        let firstError: unknown;
        const files = serverChanges.get(h);
        if (files) await restoreServerFiles(s, h, python, files, m).catch((e: unknown) => (firstError ??= e));
        // Restart even when there was no previous release, so the server drops the failed code.
        await restartHost(s, h, m, python, { full: previous === null });
        await ledger(s, h, python, [
          { event: 'failed', release: m.id, why, by, started },
          ...(previous ? [{ event: 'rolled_back', release: previous, from: m.id }] : []),
        ]).catch((e: unknown) => (firstError ??= e));
        if (firstError) throw firstError;
        s.say(`${h.name}: switched back to ${previous ?? 'nothing'}`);
      });
      // Hosts that never switched got the new server files too: put them back as well.
      await settleAll(
        [...serverChanges.entries()].filter(([h]) => !switched.some((x) => x.h === h)),
        limit,
        ([h, files]) => restoreServerFiles(s, h, python, files, m),
      );
      const backFailed = failures(
        switched.map((x) => x.h),
        back,
      );
      const detail = failed2.map((f) => `  ${message(f.error)}`).join('\n');
      throw new OperationError(
        `${opts.operation} failed after switching; ` +
          (backFailed.length
            ? `switching back FAILED on ${backFailed.map((f) => f.host).join(', ')}:\n${backFailed.map((f) => `  ${message(f.error)}`).join('\n')}\n`
            : `every switched host (${switched.map((x) => x.h.name).join(', ') || 'none'}) was switched back and restarted.\n`) +
          detail,
      );
    }
    const recorded = await settleAll(s.hosts, limit, (h) => {
      const previous = previousOf.get(h) ?? null;
      return ledger(s, h, python, [
        { event: 'healthy', release: m.id, by, started },
        ...(opts.markPreviousBad && previous && previous !== m.id
          ? [{ event: 'bad', release: previous, why: `rolled back from by ${s.op}` }]
          : []),
      ]);
    });
    for (const f of failures(s.hosts, recorded)) {
      s.say(`WARNING ${f.host}: the release is live but the ledger could not record it: ${message(f.error)}`);
    }
    for (const hook of s.config.deploy.hooks.afterSwitch) {
      const results = await settleAll(
        s.hosts.filter((_, i) => !hook.once || i === 0),
        limit,
        (h) => runHook(s, h, hook, m, 'after_switch'),
      );
      const f = failures(s.hosts, results);
      if (f.length)
        s.say(
          `after_switch hook failed (the release stays live): ${f.map((x) => message(x.error)).join('; ')}`,
        );
    }
    const pruned: DeployResult['pruned'] = [];
    const pruning = await settleAll(s.hosts, limit, async (h) => {
      s.events?.emit({ type: 'phase', host: h.name, phase: 'prune' });
      const r = await callAgent<{ removed: { release: string | null; path?: string; why: string }[] }>(
        agentFor(s, h, python),
        'prune',
        'prune',
        {
          root: s.config.root,
          keep: s.config.deploy.keepReleases,
          op: s.op,
        },
      );
      for (const x of r.removed) {
        pruned.push({ host: h.name, release: x.release ?? x.path ?? null, why: x.why });
        s.say(`${h.name}: pruned ${x.release ?? x.path}: ${x.why}`);
      }
    });
    for (const f of failures(s.hosts, pruning)) s.say(`WARNING ${f.host}: prune failed: ${message(f.error)}`);
    s.hosts.forEach((h, i) => {
      const previous = (phase2[i] as PromiseFulfilledResult<string | null>).value;
      s.events?.emit({ type: 'host-done', host: h.name, previous, current: m.id });
    });
    return {
      hosts: s.hosts.map((h, i) => ({
        host: h.name,
        previous: (phase2[i] as PromiseFulfilledResult<string | null>).value,
        current: m.id,
      })),
      pruned,
    };
  } finally {
    await unlockAll(s, python);
  }
}
