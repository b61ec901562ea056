// What the commands that talk to an environment's hosts share (setup.ts, ship.ts, promote.ts,
// rollback.ts, status.ts, unlock.ts, one file each; index.ts registers them): loading the config and
// the environment, the session, every host's facts, and the ship of an artifact (plan, then execute or
// print), which ship, promote and rollback have in common.
import type { Command } from 'commander';
import { adoptedManifest, isAdopted } from '../artifact/adopted.js';
import { diffManifests, diffSummary } from '../artifact/diff.js';
import type { Manifest } from '../artifact/manifest.js';
import { knownManifest, storeName } from '../artifact/resolve.js';
import type { StoredArtifact } from '../artifact/store.js';
import { environment, loadConfig } from '../config/load.js';
import { loadSecrets, secretValues } from '../config/secrets.js';
import type { Config, Environment } from '../config/types.js';
import { HOST_PYTHON } from '../deploy/agent.js';
import type { DeployResult } from '../deploy/deploy.js';
import { notify, who, type Notice } from '../deploy/notify.js';
import {
  allOrThrow,
  closeSession,
  openSession,
  readFacts,
  settleAll,
  type Session,
} from '../deploy/session.js';
import { cmd } from '../deploy/shell.js';
import { OperationError, UsageError } from '../errors.js';
import type { Events } from '../events.js';
import type { Io } from '../io.js';
import { defaultVenv, releaseJson } from '../layout.js';
import { formatDeployPlan, healthyOn, type DeployPlan, type HostFacts } from '../plan.js';
import type { ConnectOptions } from '../remote/ssh.js';
import { globals } from './common.js';

export interface Loaded {
  config: Config;
  env: Environment;
  connect: ConnectOptions;
  /** --rehash: verify a release already on a host by reading every file, not trusting its seals. */
  rehash?: boolean;
}

export function load(cmdObj: Command, envName: string): Loaded {
  const g = globals(cmdObj);
  const config = loadConfig(g.config);
  return { config, env: environment(config, envName), connect: { acceptNewHostKey: !!g.acceptNewHostKey } };
}

export function secretsOf(cmdObj: Command, env: Environment): Record<string, unknown> {
  if (!env.secrets) return {};
  return loadSecrets(env.secrets, { vaultPasswordFile: globals(cmdObj).vaultPasswordFile, env: process.env });
}

/**
 * Connects to every host of l.env. With `ev`, the session reports through that event stream (its hosts
 * get rows in the live display unless `track` is false, and the secrets are masked in every event).
 */
export async function withSession<T>(
  l: Loaded,
  secrets: Record<string, unknown>,
  io: Io,
  fn: (s: Session) => Promise<T>,
  ev?: Events,
  track = true,
): Promise<T> {
  ev?.addSecrets(secretValues(secrets));
  const say = ev ? ev.say : (line: string) => io.err(`${line}\n`);
  const s = await openSession(l.config, l.env, secrets, say, l.connect);
  s.rehash = l.rehash;
  if (ev && track) {
    s.events = ev;
    ev.setHosts(s.hosts.map((h) => h.name));
  }
  try {
    return await fn(s);
  } finally {
    closeSession(s);
  }
}

/** Every host's facts; `readOnly` (dry runs): without installing the agent either. */
export async function allFacts(s: Session, python = HOST_PYTHON, readOnly = false): Promise<HostFacts[]> {
  // The read-only path (server facts, templates) only for dry runs.
  const readOnlyFacts = readOnly ? (await import('../deploy/facts.js')).readFactsReadOnly : undefined;
  const results = await settleAll(s.hosts, s.env.parallel, (h) =>
    readOnlyFacts ? readOnlyFacts(s, h, python) : readFacts(s, h, python),
  );
  return allOrThrow(s.hosts, results, `cannot read the state of every host of ${s.env.name}`);
}

/** Each host with its facts, as the planning functions take them. */
export function named(s: Session, facts: HostFacts[]): { name: string; facts: HostFacts }[] {
  return s.hosts.map((h, i) => ({ name: h.name, facts: facts[i]! }));
}

// The executor (and the templates, the delta archives) only for the commands that ship. Those start
// loading it before they connect: its loading then overlaps the SSH handshakes, which wait on the hosts,
// instead of following them (about 40 ms of a ship's or a rollback's time here).
let executor: Promise<typeof import('../deploy/deploy.js')> | undefined;
export function loadExecutor(): Promise<typeof import('../deploy/deploy.js')> {
  executor ??= import('../deploy/deploy.js');
  executor.catch(() => undefined); // a failure is reported where shipArtifact awaits it
  return executor;
}

/**
 * Ships (or with dryRun, plans) the artifact to every host of the session: reads the facts, computes
 * the plan, and prints it (dry run) or carries it out. The result is the last event (with the plan,
 * the executed one too); without --json, the per-host `host: previous -> current` lines (or the plan)
 * go to stdout.
 */
export async function shipArtifact(
  s: Session,
  artifact: StoredArtifact,
  operation: 'ship' | 'promote' | 'rollback',
  dryRun: boolean,
  ev: Events,
  json: boolean,
): Promise<void> {
  const m = artifact.manifest;
  const label = `${operation} ${s.env.name} ${artifact.id}`;
  const { deploy, planShip } = await loadExecutor();
  if (dryRun) {
    const { plan } = await planShip(s, m, operation, { dryRun: true });
    ev.emit({ type: 'result', command: operation, ok: true, plan });
    if (!json) ev.print(formatDeployPlan(plan));
    return;
  }
  const t0 = Date.now();
  const notice = {
    operation,
    environment: s.env.name,
    artifact: artifact.id,
    who: who(),
    hosts: s.hosts.map((h) => h.name),
  };
  const send = (n: Notice) => notify(s.config.notify, n, { mask: ev.scrub, say: ev.say });
  await send({ event: 'start', ...notice });
  let r: DeployResult;
  let executed: DeployPlan;
  try {
    const { plan, facts } = await planShip(s, m, operation, { dryRun: false, label });
    executed = plan;
    r = await deploy(s, artifact, plan, facts, { operation: label });
  } catch (e) {
    await send({
      event: 'failure',
      ...notice,
      seconds: (Date.now() - t0) / 1000,
      error: e instanceof Error ? e.message : String(e),
    });
    throw e;
  }
  const seconds = (Date.now() - t0) / 1000;
  if (s.config.notify.length) {
    const from = r.hosts.map((h) => h.previous);
    const previous = [...new Set(from)];
    // An adopted release has no manifest to compare with.
    const before =
      previous.length === 1 && previous[0] && !isAdopted(m)
        ? await knownManifest(s.config, previous[0])
        : undefined;
    await send({
      event: 'success',
      ...notice,
      from,
      seconds,
      ...(before ? { diff: diffSummary(diffManifests(before, m)) } : {}),
    });
  }
  s.say(
    `${operation}: ${s.env.name} runs ${artifact.id} on ${r.hosts.length} host(s), in ${seconds.toFixed(1)} s`,
  );
  ev.emit({
    type: 'result',
    command: operation,
    ok: true,
    environment: s.env.name,
    release: artifact.id,
    hosts: r.hosts,
    pruned: r.pruned,
    seconds,
    plan: executed,
  });
  if (!json) for (const h of r.hosts) ev.print(`${h.host}: ${h.previous ?? 'none'} -> ${h.current}\n`);
}

/** `requires: FROM`: the artifact must have been healthy on every host of FROM. */
export async function checkRequires(
  io: Io,
  l: Loaded,
  id: string,
  ev: Events,
  readOnly = false,
): Promise<void> {
  if (!l.env.requires) return;
  const from = environment(l.config, l.env.requires);
  await withSession(
    { ...l, env: from },
    {},
    io,
    async (s) => {
      const facts = await allFacts(s, HOST_PYTHON, readOnly);
      const missing = facts.flatMap((f, i) => (healthyOn(f, id) ? [] : [s.hosts[i]!.name]));
      if (missing.length) {
        throw new UsageError(
          `${l.env.name} requires releases healthy on ${from.name} first: ${id} was never healthy on ${missing.join(', ')}`,
          `ship it to ${from.name} first (or pass --force)`,
        );
      }
    },
    ev,
    false,
  );
}

/**
 * A release that every host still has but this machine's store does not (built elsewhere, or the
 * store was cleaned): its RELEASE.json (the manifest's header) says which python and plugins it has.
 * Without the file list it cannot be verified file by file, nor re-shipped.
 */
export async function artifactFromHosts(s: Session, id: string): Promise<StoredArtifact> {
  const file = releaseJson(s.config.root, id);
  const found = await settleAll(s.hosts, s.env.parallel, (h) => h.remote.exec(cmd(['cat', file])));
  const missing = found.flatMap((r, i) =>
    r.status === 'fulfilled' && r.value.code === 0 ? [] : [s.hosts[i]!.name],
  );
  if (missing.length) {
    throw new UsageError(
      `${id} is not in the store (${storeName(s.config)}) and ${missing.join(', ')} ${missing.length === 1 ? 'does' : 'do'} not have it (${file})`,
      'build it again, or copy its artifact directory into the store',
    );
  }
  const header = JSON.parse(
    (found[0] as PromiseFulfilledResult<{ stdout: string }>).value.stdout,
  ) as Manifest;
  if (header.id !== id)
    throw new OperationError(`${s.hosts[0]!.name}: ${file} names ${header.id}, not ${id}`);
  s.say(
    `${id} is not in the local store: switching to the copies on the hosts (from their RELEASE.json; not re-verified file by file)`,
  );
  return {
    id,
    dir: '',
    archive: '',
    manifest: {
      ...header,
      plugins: {},
      archive: { file: 'release.tar.gz', bytes: 0, sha256: '' },
      files: [],
    },
  };
}

/**
 * The release setup adopted from <root>/default (releases/ID -> ../default), when a host has it so: a
 * stand-in without a manifest (artifact/adopted.ts). Hosts without it refuse in the preflight (and the
 * dry run's plan says so), before anything changes.
 */
export function adoptedOnHosts(s: Session, id: string, facts: HostFacts[]): StoredArtifact | undefined {
  if (!facts.some((f) => f.releases.some((r) => r.id === id && r.adopted))) return undefined;
  s.say(
    `${id} is the release setup adopted from ${defaultVenv(s.config.root)}: switching back to it as it is (no artifact, no manifest)`,
  );
  return {
    id,
    dir: '',
    archive: '',
    manifest: adoptedManifest(s.config.project, s.config.root, id, HOST_PYTHON),
  };
}
