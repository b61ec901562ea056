// setup, ship, promote, rollback, status, unlock: load config, read facts from the hosts, act, report.
import path from 'node:path';
import type { Command } from 'commander';
import type { Manifest } from '../artifact/manifest.js';
import { findArtifact, listArtifacts, type StoredArtifact } from '../artifact/store.js';
import { ARTIFACT_ID } from '../builder/inputs.js';
import type { Io } from '../cli.js';
import { environment, loadConfig } from '../config/load.js';
import { loadSecrets } from '../config/secrets.js';
import type { Config, Environment } from '../config/types.js';
import { callAgent, installAgent } from '../deploy/agent.js';
import {
  closeSession,
  deadLocalHolder,
  deploy,
  describeHolder,
  openSession,
  readFacts,
  settleAll,
  type HostFacts,
  type Session,
} from '../deploy/deploy.js';
import { cmd, maybeSudo } from '../deploy/shell.js';
import { OperationError, UsageError } from '../errors.js';
import { globals } from './common.js';

/** The interpreter the agent uses when no artifact says which: the hosts' python3. */
const HOST_PYTHON = 'python3';

interface Loaded {
  config: Config;
  env: Environment;
}

function load(cmdObj: Command, envName: string): Loaded {
  const config = loadConfig(globals(cmdObj).config);
  return { config, env: environment(config, envName) };
}

function secretsOf(cmdObj: Command, env: Environment): Record<string, unknown> {
  if (!env.secrets) return {};
  return loadSecrets(env.secrets, { vaultPasswordFile: globals(cmdObj).vaultPasswordFile, env: process.env });
}

async function withSession<T>(
  l: Loaded,
  secrets: Record<string, unknown>,
  io: Io,
  fn: (s: Session) => Promise<T>,
): Promise<T> {
  const s = await openSession(l.config, l.env, secrets, (line) => io.err(`${line}\n`));
  try {
    return await fn(s);
  } finally {
    closeSession(s);
  }
}

async function allFacts(s: Session, python = HOST_PYTHON): Promise<HostFacts[]> {
  const results = await settleAll(s.hosts, s.env.parallel, (h) => readFacts(s, h, python));
  const failed = results.flatMap((r, i) =>
    r.status === 'rejected' ? [`  ${s.hosts[i]!.name}: ${(r.reason as Error).message}`] : [],
  );
  if (failed.length)
    throw new OperationError(`cannot read the state of every host of ${s.env.name}:\n${failed.join('\n')}`);
  return results.map((r) => (r as PromiseFulfilledResult<HostFacts>).value);
}

function newestArtifact(config: Config): StoredArtifact {
  const newest = listArtifacts(config.store)[0];
  if (!newest) throw new UsageError(`no artifact in ${config.store}`, 'run `ckan-release build` first');
  return newest;
}

function healthyOn(f: HostFacts, id: string): boolean {
  return f.ledger.some((e) => e.event === 'healthy' && e.release === id);
}

/** What would change, per host, without changing anything. */
function printPlan(io: Io, s: Session, facts: HostFacts[], artifact: StoredArtifact, what: string): void {
  const m = artifact.manifest;
  io.out(`plan: ${what} ${m.id} to ${s.env.name} (dry run: nothing is changed)\n`);
  facts.forEach((f, i) => {
    const h = s.hosts[i]!;
    const has = f.releases.some((r) => r.id === m.id);
    io.out(`  ${h.name}: current ${f.current ?? 'none'} -> ${m.id}\n`);
    io.out(
      `    transfer: ${has ? 'none (already on the host)' : `${m.archive.bytes} bytes (${m.files.length} files)`}\n`,
    );
    if (f.lock)
      io.out(
        `    LOCKED by ${describeHolder(f.lock)}${f.lock_expired ? ' (expired: would be taken over)' : ''}\n`,
      );
    for (const hook of s.config.deploy.hooks.beforeSwitch)
      if (!hook.once || i === 0) io.out(`    before_switch: ${hook.run}\n`);
    io.out(`    restart: ${s.config.deploy.restart}\n    health check: ${s.config.deploy.healthcheck.url}\n`);
    for (const hook of s.config.deploy.hooks.afterSwitch)
      if (!hook.once || i === 0) io.out(`    after_switch: ${hook.run}\n`);
    // The agent's prune rule: keep the newest keep_releases, never the current release (the new one)
    // nor the rollback target (for ship/promote: the old current, if it was healthy).
    const ids = [...new Set([...f.releases.map((r) => r.id), m.id])].sort().reverse();
    const target =
      what === 'rollback'
        ? null
        : f.current && healthyOn(f, f.current) && f.current !== m.id
          ? f.current
          : f.rollback_target;
    const protect = new Set([m.id, target].filter((x): x is string => !!x));
    const keep = ids
      .filter((id) => !protect.has(id))
      .slice(0, Math.max(0, s.config.deploy.keepReleases - protect.size));
    for (const id of ids) {
      if (!protect.has(id) && !keep.includes(id))
        io.out(`    prune: ${id} (beyond keep_releases=${s.config.deploy.keepReleases})\n`);
    }
    io.out(
      `    rollback target afterwards: ${what === 'rollback' ? 'decided by the ledger after the rollback' : (target ?? 'none')}\n`,
    );
  });
}

async function shipArtifact(
  io: Io,
  s: Session,
  artifact: StoredArtifact,
  operation: string,
  dryRun: boolean,
  markPreviousBad = false,
): Promise<void> {
  if (dryRun) {
    printPlan(io, s, await allFacts(s, artifact.manifest.builder.python.path), artifact, operation);
    return;
  }
  const t0 = Date.now();
  const r = await deploy(s, artifact, {
    operation: `${operation} ${s.env.name} ${artifact.id}`,
    markPreviousBad,
  });
  io.err(
    `${operation}: ${s.env.name} runs ${artifact.id} on ${r.hosts.length} host(s), in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`,
  );
  for (const h of r.hosts) io.out(`${h.host}: ${h.previous ?? 'none'} -> ${h.current}\n`);
}

/** `requires: FROM`: the artifact must have been healthy on every host of FROM. */
async function checkRequires(io: Io, l: Loaded, id: string): Promise<void> {
  if (!l.env.requires) return;
  const from = environment(l.config, l.env.requires);
  await withSession({ config: l.config, env: from }, {}, io, async (s) => {
    const facts = await allFacts(s);
    const missing = facts.flatMap((f, i) => (healthyOn(f, id) ? [] : [s.hosts[i]!.name]));
    if (missing.length) {
      throw new UsageError(
        `${l.env.name} requires releases healthy on ${from.name} first: ${id} was never healthy on ${missing.join(', ')}`,
        `ship it to ${from.name} first (or pass --force)`,
      );
    }
  });
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
      `${id} is not in the local store (${s.config.store}) and ${missing.join(', ')} ${missing.length === 1 ? 'does' : 'do'} not have it (${file})`,
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

export function registerDeploy(program: Command, io: Io, dryRun: () => import('commander').Option): void {
  program
    .command('setup')
    .description(
      "first deploy: prepare each host's layout (idempotent); adopt <root>/default as the first release",
    )
    .argument('<env>', 'environment')
    .addOption(dryRun())
    .action(async (envName: string, opts: { dryRun?: boolean }, c: Command) => {
      const l = load(c, envName);
      await withSession(l, {}, io, async (s) => {
        if (opts.dryRun) {
          const facts = await settleAll(s.hosts, s.env.parallel, async (h) => {
            const r = await h.remote.exec(
              cmd(['sh', '-c', `test -d ${cmd([l.config.root])} && echo yes || echo no`]),
            );
            return r.stdout.trim();
          });
          io.out(`plan: setup ${l.env.name} (dry run: nothing is changed)\n`);
          s.hosts.forEach((h, i) => {
            const exists = (facts[i] as PromiseFulfilledResult<string>).value === 'yes';
            io.out(
              `  ${h.name}: ${exists ? 'check and complete' : 'create'} ${l.config.root}/{releases,shared,.ckan-release}` +
                `${l.config.shared.length ? `, shared/${l.config.shared.map((x) => x.path).join(', shared/')}` : ''}; adopt ${l.config.root}/default if there is no current release\n`,
            );
          });
          return;
        }
        await settleAll(s.hosts, s.env.parallel, async (h) => {
          // <root> and .ckan-release stay owned by whoever runs the agent (root with sudo): the
          // agent runs privileged, so the CKAN user must not be able to replace it.
          const prepare = `mkdir -p ${cmd([`${l.config.root}/.ckan-release/agent`])}`;
          await h.remote.run('create the root', cmd(maybeSudo(['sh', '-c', prepare], h.sudo)));
          const agent = { remote: h.remote, root: l.config.root, python: HOST_PYTHON, sudo: h.sudo };
          await installAgent(agent);
          const r = await callAgent<{ made: string[]; adopted: string | null }>(agent, 'setup', 'setup', {
            root: l.config.root,
            shared: l.config.shared.map((x) => x.path),
            adopt: true,
          });
          // Shared directories are written by CKAN (storage, uploads): they belong to deploy.owner.
          const owner = [l.config.deploy.owner, l.config.deploy.group].filter(Boolean).join(':');
          if (owner && l.config.shared.length) {
            const dirs = l.config.shared.map((x) => `${l.config.root}/shared/${x.path}`);
            await h.remote.run('chown shared directories', cmd(maybeSudo(['chown', owner, ...dirs], h.sudo)));
          }
          io.out(
            `${h.name}: ${r.made.length ? `made ${r.made.join(', ')}` : 'already set up'}${r.adopted ? `; adopted ${l.config.root}/default as release ${r.adopted}` : ''}\n`,
          );
        }).then((results) => {
          const failed = results.flatMap((r, i) =>
            r.status === 'rejected' ? [`  ${s.hosts[i]!.name}: ${(r.reason as Error).message}`] : [],
          );
          if (failed.length)
            throw new OperationError(
              `setup failed on some hosts (setup is idempotent: run it again):\n${failed.join('\n')}`,
            );
        });
      });
    });

  program
    .command('ship')
    .description('deploy an artifact (default: the newest built) to every host of ENV')
    .argument('<env>', 'environment')
    .argument('[id]', 'artifact ID or unique prefix')
    .addOption(dryRun())
    .option('--force', 'ship even if the environment requires the artifact to be healthy elsewhere first')
    .action(
      async (
        envName: string,
        id: string | undefined,
        opts: { dryRun?: boolean; force?: boolean },
        c: Command,
      ) => {
        const l = load(c, envName);
        const artifact = id ? findArtifact(l.config.store, id) : newestArtifact(l.config);
        if (!opts.force) await checkRequires(io, l, artifact.id);
        const secrets = secretsOf(c, l.env);
        await withSession(l, secrets, io, (s) => shipArtifact(io, s, artifact, 'ship', !!opts.dryRun));
      },
    );

  program
    .command('promote')
    .description('ship to TO exactly the artifact that is live and healthy on FROM (no rebuild)')
    .argument('<from>', 'environment to take the release from')
    .argument('<to>', 'environment to ship it to')
    .addOption(dryRun())
    .action(async (fromName: string, toName: string, opts: { dryRun?: boolean }, c: Command) => {
      const from = load(c, fromName);
      const to = load(c, toName);
      if (fromName === toName) throw new UsageError('promote needs two different environments');
      const id = await withSession(from, {}, io, async (s) => {
        const facts = await allFacts(s);
        const currents = [...new Set(facts.map((f) => f.current))];
        if (currents.length !== 1 || !currents[0]) {
          throw new OperationError(
            `${fromName} does not run one release on every host: ${facts.map((f, i) => `${s.hosts[i]!.name}=${f.current ?? 'none'}`).join(', ')}`,
          );
        }
        const notHealthy = facts.flatMap((f, i) => (healthyOn(f, currents[0]!) ? [] : [s.hosts[i]!.name]));
        if (notHealthy.length)
          throw new OperationError(
            `${currents[0]} is not recorded healthy on ${notHealthy.join(', ')} of ${fromName}`,
          );
        return currents[0]!;
      });
      const artifact = findArtifact(to.config.store, id);
      io.err(
        `promote: ${fromName} runs ${id}, healthy on every host; shipping the same artifact to ${toName}\n`,
      );
      const secrets = secretsOf(c, to.env);
      await withSession(to, secrets, io, (s) => shipArtifact(io, s, artifact, 'promote', !!opts.dryRun));
    });

  program
    .command('rollback')
    .description('switch back to the last healthy release before the current one, or to --to ID')
    .argument('<env>', 'environment')
    .option('--to <id>', 'release to switch to (re-shipped from the store if a host pruned it)')
    .addOption(dryRun())
    .action(async (envName: string, opts: { to?: string; dryRun?: boolean }, c: Command) => {
      const l = load(c, envName);
      const secrets = secretsOf(c, l.env);
      await withSession(l, secrets, io, async (s) => {
        let id: string;
        if (opts.to) {
          // A full ID may name a release that is on the hosts but not in this machine's store.
          id = ARTIFACT_ID.test(opts.to) ? opts.to : findArtifact(l.config.store, opts.to).id;
        } else {
          const facts = await allFacts(s);
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
          listArtifacts(l.config.store).find((a) => a.id === id) ?? (await artifactFromHosts(s, id));
        await shipArtifact(io, s, artifact, 'rollback', !!opts.dryRun, true);
      });
    });

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
