// setup, ship, promote, rollback, status, unlock: load config, read facts from the hosts, act, report.
import path from 'node:path';
import type { Command } from 'commander';
import { adoptedId, adoptedManifest, isAdopted } from '../artifact/adopted.js';
import type { Manifest } from '../artifact/manifest.js';
import { diffManifests, diffSummary } from '../artifact/diff.js';
import { knownManifest, resolveArtifact, storeName } from '../artifact/resolve.js';
import type { StoredArtifact } from '../artifact/store.js';
import { ARTIFACT_ID } from '../artifact/id.js';
import type { Io } from '../cli.js';
import { environment, loadConfig } from '../config/load.js';
import { loadSecrets, secretValues } from '../config/secrets.js';
import type { Config, Environment } from '../config/types.js';
import { callAgent, HOST_PYTHON, installAgent } from '../deploy/agent.js';
import { installServerFiles, refuseUnfitServers, serverChecks } from '../deploy/server.js';
import { readFactsReadOnly, readSetupFacts, serverFilePlans } from '../deploy/dry-run.js';
import {
  closeSession,
  deadLocalHolder,
  deploy,
  describeHolder,
  healthcheckFor,
  openSession,
  readFacts,
  settleAll,
  type HostFacts,
  type Session,
} from '../deploy/deploy.js';
import { notify, who, type Notice } from '../deploy/notify.js';
import { cmd, maybeSudo } from '../deploy/shell.js';
import { CkanReleaseError, OperationError, UsageError } from '../errors.js';
import { eventsFor, withEvents, type Events } from '../events.js';
import { formatDeployPlan, formatSetupPlan, planDeploy, planSetup, setupDirs } from '../plan.js';
import type { ConnectOptions } from '../remote/ssh.js';
import { globals } from './common.js';

/** A dry run's WOULD FAIL lines from the web server checks (server.ts serverChecks). */
function planProblems(c: { problems: string[]; unread?: string }): string[] {
  return [...c.problems, ...(c.unread ? [`cannot read the web server facts: ${c.unread}`] : [])];
}

interface Loaded {
  config: Config;
  env: Environment;
  connect: ConnectOptions;
  /** --rehash: verify a release already on a host by reading every file, not trusting its seals. */
  rehash?: boolean;
}

const REHASH =
  'check a release already on a host by hashing every file again instead of trusting its seals (README "Performance")';

function load(cmdObj: Command, envName: string): Loaded {
  const g = globals(cmdObj);
  const config = loadConfig(g.config);
  return { config, env: environment(config, envName), connect: { acceptNewHostKey: !!g.acceptNewHostKey } };
}

function secretsOf(cmdObj: Command, env: Environment): Record<string, unknown> {
  if (!env.secrets) return {};
  return loadSecrets(env.secrets, { vaultPasswordFile: globals(cmdObj).vaultPasswordFile, env: process.env });
}

/**
 * Connects to every host of l.env. With `ev`, the session reports through that event stream (its hosts
 * get rows in the live display unless `track` is false, and the secrets are masked in every event).
 */
async function withSession<T>(
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
async function allFacts(
  s: Session,
  python = HOST_PYTHON,
  readOnly = false,
  libraries: string[] = [],
): Promise<HostFacts[]> {
  const results = await settleAll(s.hosts, s.env.parallel, (h) =>
    readOnly ? (readFactsReadOnly(s, h, python, libraries) as Promise<HostFacts>) : readFacts(s, h, python),
  );
  const failed = results.flatMap((r, i) =>
    r.status === 'rejected' ? [`  ${s.hosts[i]!.name}: ${(r.reason as Error).message}`] : [],
  );
  if (failed.length)
    throw hostsFailed(`cannot read the state of every host of ${s.env.name}:\n${failed.join('\n')}`, results);
  return results.map((r) => (r as PromiseFulfilledResult<HostFacts>).value);
}

/**
 * One error for failures on several hosts: exit 2 (bad input or host setup, such as a sudo that wants a
 * password) when every failure was one, with the first one's hint; exit 1 otherwise.
 */
function hostsFailed(message: string, results: PromiseSettledResult<unknown>[]): CkanReleaseError {
  const reasons = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  const bad = reasons.filter((e): e is CkanReleaseError => e instanceof CkanReleaseError && e.exitCode === 2);
  if (reasons.length && bad.length === reasons.length) return new UsageError(message, bad[0]!.hint);
  return new OperationError(message);
}

function healthyOn(f: HostFacts, id: string): boolean {
  return f.ledger.some((e) => e.event === 'healthy' && e.release === id);
}

/**
 * Ships (or with dryRun, plans) the artifact to every host of the session. The result is the last
 * event; without --json, the per-host `host: previous -> current` lines (or the plan) go to stdout.
 */
async function shipArtifact(
  io: Io,
  s: Session,
  artifact: StoredArtifact,
  operation: string,
  dryRun: boolean,
  ev: Events,
  json: boolean,
  markPreviousBad = false,
): Promise<void> {
  const m = artifact.manifest;
  if (dryRun) {
    const python = m.builder.python.path;
    const facts = await allFacts(s, python, true, m.libraries ?? []);
    const serverFiles = await Promise.all(s.hosts.map((h) => serverFilePlans(s, h, python, m)));
    const checks = await serverChecks(s, python, m);
    const d = s.config.deploy;
    const plan = planDeploy(
      operation,
      s.env.name,
      m,
      s.hosts.map((h, i) => ({
        name: h.name,
        facts: facts[i]!,
        serverFiles: serverFiles[i]!,
        serverProblems: planProblems(checks[i]!),
        healthHost: healthcheckFor(s, h.name, m).host,
      })),
      {
        keepReleases: d.keepReleases,
        beforeSwitch: d.hooks.beforeSwitch.map((x) => ({ run: x.run, once: !!x.once })),
        afterSwitch: d.hooks.afterSwitch.map((x) => ({ run: x.run, once: !!x.once })),
        restart: d.restart,
        healthcheck: d.healthcheck.url,
      },
      { markPreviousBad },
    );
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
  let r: Awaited<ReturnType<typeof deploy>>;
  try {
    r = await deploy(s, artifact, {
      operation: `${operation} ${s.env.name} ${artifact.id}`,
      markPreviousBad,
    });
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
  });
  if (!json) for (const h of r.hosts) ev.print(`${h.host}: ${h.previous ?? 'none'} -> ${h.current}\n`);
}

/** `requires: FROM`: the artifact must have been healthy on every host of FROM. */
async function checkRequires(io: Io, l: Loaded, id: string, ev: Events, readOnly = false): Promise<void> {
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
async function artifactFromHosts(s: Session, id: string): Promise<StoredArtifact> {
  const file = path.posix.join(s.config.root, 'releases', id, 'RELEASE.json');
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
function adoptedOnHosts(s: Session, id: string, facts: HostFacts[]): StoredArtifact | undefined {
  if (!facts.some((f) => f.releases.some((r) => r.id === id && r.adopted))) return undefined;
  s.say(
    `${id} is the release setup adopted from ${s.config.root}/default: switching back to it as it is (no artifact, no manifest)`,
  );
  return {
    id,
    dir: '',
    archive: '',
    manifest: adoptedManifest(s.config.project, s.config.root, id, HOST_PYTHON),
  };
}

export function registerDeploy(program: Command, io: Io, dryRun: () => import('commander').Option): void {
  program
    .command('setup')
    .description(
      "first deploy: prepare each host's layout (idempotent); adopt <root>/default as the first release",
    )
    .argument('<env>', 'environment')
    .addOption(dryRun())
    .action(async (envName: string, opts: { dryRun?: boolean }, c: Command) => {
      const json = globals(c).json;
      const ev = eventsFor(io, json);
      await withEvents(ev, 'setup', async () => {
        const l = load(c, envName);
        await withSession(
          l,
          {},
          io,
          async (s) => {
            if (opts.dryRun) {
              const shared = l.config.shared.map((x) => x.path);
              const dirs = setupDirs(l.config.root, shared);
              const checks = await serverChecks(s, HOST_PYTHON, null);
              const hosts = await settleAll(s.hosts, s.env.parallel, async (h, i) => ({
                name: h.name,
                facts: await readSetupFacts(s, h, dirs),
                serverFiles: await serverFilePlans(s, h, HOST_PYTHON, null),
                serverProblems: planProblems(checks[i]!),
              }));
              const failed = hosts.flatMap((r, i) =>
                r.status === 'rejected' ? [`  ${s.hosts[i]!.name}: ${(r.reason as Error).message}`] : [],
              );
              if (failed.length)
                throw hostsFailed(
                  `cannot read the state of every host of ${s.env.name}:\n${failed.join('\n')}`,
                  hosts,
                );
              const owner = [l.config.deploy.owner, l.config.deploy.group].filter(Boolean).join(':') || null;
              const plan = planSetup(
                l.env.name,
                l.config.root,
                shared,
                owner,
                hosts.map(
                  (r) => (r as PromiseFulfilledResult<Parameters<typeof planSetup>[4][number]>).value,
                ),
              );
              ev.emit({ type: 'result', command: 'setup', ok: true, plan });
              if (!json) ev.print(formatSetupPlan(plan, l.config.root));
              return;
            }
            await refuseUnfitServers(s, HOST_PYTHON, null, 'setup');
            const done: Record<string, unknown>[] = [];
            const adoptAs = adoptedId(new Date());
            await settleAll(s.hosts, s.env.parallel, async (h) => {
              // <root> and .ckan-release stay owned by whoever runs the agent (root with sudo): the
              // agent runs privileged, so the CKAN user must not be able to replace it.
              const prepare = `mkdir -p ${cmd([`${l.config.root}/.ckan-release/agent`])}`;
              await h.remote.run('create the root', cmd(maybeSudo(['sh', '-c', prepare], h.sudo)));
              const agent = { remote: h.remote, root: l.config.root, python: HOST_PYTHON, sudo: h.sudo };
              ev.emit({ type: 'phase', host: h.name, phase: 'setup' });
              await installAgent(agent);
              const r = await callAgent<{ made: string[]; adopted: string | null }>(agent, 'setup', 'setup', {
                root: l.config.root,
                shared: l.config.shared.map((x) => x.path),
                adopt: true,
                adopt_id: adoptAs,
              });
              // Shared directories are written by CKAN (storage, uploads): they belong to deploy.owner.
              const owner = [l.config.deploy.owner, l.config.deploy.group].filter(Boolean).join(':');
              if (owner && l.config.shared.length) {
                const dirs = l.config.shared.map((x) => `${l.config.root}/shared/${x.path}`);
                await h.remote.run(
                  'chown shared directories',
                  cmd(maybeSudo(['chown', owner, ...dirs], h.sudo)),
                );
              }
              const line = `${h.name}: ${r.made.length ? `made ${r.made.join(', ')}` : 'already set up'}${r.adopted ? `; adopted ${l.config.root}/default as release ${r.adopted}` : ''}\n`;
              if (!json) ev.print(line);
              let installed: string[] = [];
              if (l.config.server.files.length) {
                ev.emit({ type: 'phase', host: h.name, phase: 'server files' });
                const files = await installServerFiles(s, h, HOST_PYTHON, null);
                installed = files.filter((f) => f.changed).map((f) => f.dest);
                if (!json)
                  ev.print(
                    `${h.name}: server files: ${installed.length ? `installed ${installed.join(', ')}` : 'unchanged'}\n`,
                  );
              }
              done.push({
                host: h.name,
                made: r.made,
                adopted: r.adopted,
                server_files_installed: installed,
              });
              ev.emit({ type: 'host-done', host: h.name, previous: null, current: r.adopted ?? 'set up' });
            }).then((results) => {
              const failed = results.flatMap((r, i) =>
                r.status === 'rejected' ? [`  ${s.hosts[i]!.name}: ${(r.reason as Error).message}`] : [],
              );
              if (failed.length)
                throw hostsFailed(
                  `setup failed on some hosts (setup is idempotent: run it again):\n${failed.join('\n')}`,
                  results,
                );
              ev.emit({ type: 'result', command: 'setup', ok: true, environment: l.env.name, hosts: done });
            });
          },
          ev,
        );
      });
    });

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
            (s) => shipArtifact(io, s, artifact, 'ship', !!opts.dryRun, ev, json),
            ev,
          );
        });
      },
    );

  program
    .command('promote')
    .description('ship to TO exactly the artifact that is live and healthy on FROM (no rebuild)')
    .argument('<from>', 'environment to take the release from')
    .argument('<to>', 'environment to ship it to')
    .addOption(dryRun())
    .option('--rehash', REHASH)
    .action(
      async (fromName: string, toName: string, opts: { dryRun?: boolean; rehash?: boolean }, c: Command) => {
        const json = globals(c).json;
        const ev = eventsFor(io, json);
        await withEvents(ev, 'promote', async () => {
          const from = load(c, fromName);
          const to = { ...load(c, toName), rehash: opts.rehash };
          if (fromName === toName) throw new UsageError('promote needs two different environments');
          const id = await withSession(
            from,
            {},
            io,
            async (s) => {
              const facts = await allFacts(s, HOST_PYTHON, !!opts.dryRun);
              const currents = [...new Set(facts.map((f) => f.current))];
              if (currents.length !== 1 || !currents[0]) {
                throw new OperationError(
                  `${fromName} does not run one release on every host: ${facts.map((f, i) => `${s.hosts[i]!.name}=${f.current ?? 'none'}`).join(', ')}`,
                );
              }
              const notHealthy = facts.flatMap((f, i) =>
                healthyOn(f, currents[0]!) ? [] : [s.hosts[i]!.name],
              );
              if (notHealthy.length)
                throw new OperationError(
                  `${currents[0]} is not recorded healthy on ${notHealthy.join(', ')} of ${fromName}`,
                );
              return currents[0]!;
            },
            ev,
            false,
          );
          const artifact = await resolveArtifact(to.config, id, ev.say);
          ev.say(
            `promote: ${fromName} runs ${id}, healthy on every host; shipping the same artifact to ${toName}`,
          );
          const secrets = secretsOf(c, to.env);
          await withSession(
            to,
            secrets,
            io,
            (s) => shipArtifact(io, s, artifact, 'promote', !!opts.dryRun, ev, json),
            ev,
          );
        });
      },
    );

  program
    .command('rollback')
    .description('switch back to the last healthy release before the current one, or to --to ID')
    .argument('<env>', 'environment')
    .option('--to <id>', 'release to switch to (re-shipped from the store if a host pruned it)')
    .addOption(dryRun())
    .option('--rehash', REHASH)
    .action(
      async (envName: string, opts: { to?: string; dryRun?: boolean; rehash?: boolean }, c: Command) => {
        const json = globals(c).json;
        const ev = eventsFor(io, json);
        await withEvents(ev, 'rollback', async () => {
          const l = { ...load(c, envName), rehash: opts.rehash };
          const secrets = secretsOf(c, l.env);
          await withSession(
            l,
            secrets,
            io,
            async (s) => {
              // A bad --to is refused before anything runs on a host. A full ID may name a release
              // that is on the hosts but not in this machine's store.
              let id = opts.to
                ? ARTIFACT_ID.test(opts.to)
                  ? opts.to
                  : (await resolveArtifact(l.config, opts.to, ev.say)).id
                : undefined;
              const facts = await allFacts(s, HOST_PYTHON, !!opts.dryRun);
              if (!id) {
                const targets = [...new Set(facts.map((f) => f.rollback_target))];
                if (targets.length !== 1 || !targets[0]) {
                  throw new OperationError(
                    `no common rollback target on ${envName}: ${facts.map((f, i) => `${s.hosts[i]!.name}=${f.rollback_target ?? 'none'}`).join(', ')}`,
                    'name one with --to ID',
                  );
                }
                id = targets[0];
              }
              const artifact =
                (await resolveArtifact(l.config, id, ev.say, true)) ??
                adoptedOnHosts(s, id, facts) ??
                (await artifactFromHosts(s, id));
              await shipArtifact(io, s, artifact, 'rollback', !!opts.dryRun, ev, json, true);
            },
            ev,
          );
        });
      },
    );

  program
    .command('status')
    .description('per host: current release, rollback target, releases and their states, lock holder')
    .argument('<env>', 'environment')
    .action(async (envName: string, _opts: unknown, c: Command) => {
      const l = load(c, envName);
      await withSession(l, {}, io, async (s) => {
        const facts = await allFacts(s);
        const hosts = facts.map((f, i) => ({
          host: s.hosts[i]!.name,
          current: f.current,
          rollback_target: f.rollback_target,
          releases: f.releases.map((r) => ({ id: r.id, state: r.state, time: r.time })),
          lock: f.lock,
          // Held by a ckan-release of this machine that no longer runs (killed, crashed).
          lock_stale: deadLocalHolder(f.lock) !== undefined,
        }));
        if (globals(c).json) {
          io.out(JSON.stringify({ environment: envName, hosts }) + '\n');
          return;
        }
        for (const h of hosts) {
          io.out(
            `${h.host}\n  current:         ${h.current ?? 'none'}\n  rollback target: ${h.rollback_target ?? 'none'}\n`,
          );
          const stale = h.lock_stale
            ? ' - its process is gone: the next operation from this machine takes it over (elsewhere: `ckan-release unlock`)'
            : '';
          io.out(`  lock:            ${h.lock ? describeHolder(h.lock) + stale : 'none'}\n  releases:\n`);
          for (const r of [...h.releases].reverse()) {
            io.out(
              `    ${r.id}  ${r.state.padEnd(11)} ${r.time ?? ''}${r.id === h.current ? '  <- current' : ''}\n`,
            );
          }
        }
      });
    });

  program
    .command('unlock')
    .description('remove a stale lock (says whose it was)')
    .argument('<env>', 'environment')
    .action(async (envName: string, _opts: unknown, c: Command) => {
      const l = load(c, envName);
      await withSession(l, {}, io, async (s) => {
        await settleAll(s.hosts, s.env.parallel, async (h) => {
          const agent = { remote: h.remote, root: l.config.root, python: HOST_PYTHON, sudo: h.sudo };
          await installAgent(agent);
          const r = await callAgent<{ unlocked: boolean; holder: Record<string, unknown> | null }>(
            agent,
            'unlock',
            'unlock',
            { root: l.config.root },
          );
          io.out(
            `${h.name}: ${r.unlocked && r.holder ? `removed the lock of ${describeHolder(r.holder)}` : 'was not locked'}\n`,
          );
        });
      });
    });
}
