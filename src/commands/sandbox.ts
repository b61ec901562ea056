// sandbox up / down: local throwaway hosts for the environments whose ssh_config is the sandbox's own
// (<config dir>/.ckan-release/sandbox/ssh_config). Ports come from each host's host_vars
// (ssh_port, http_port), so the committed config and the sandbox agree.
import path from 'node:path';
import type { Command } from 'commander';
import type { Io } from '../io.js';
import { loadConfig } from '../config/load.js';
import { SANDBOX_OSES, type SandboxOs } from '../config/schema.js';
import { loadSecrets } from '../config/secrets.js';
import type { Config, Environment } from '../config/types.js';
import { requireEngine } from '../docker/engine.js';
import { UsageError } from '../errors.js';
import {
  DEFAULT_SANDBOX_OS,
  sandboxDown,
  sandboxUp,
  type SandboxHostSpec,
  type SandboxPostgresSpec,
  type SandboxServer,
} from '../sandbox/sandbox.js';
import { globals } from './common.js';

export function sandboxDir(config: Config): string {
  return path.join(config.dir, '.ckan-release', 'sandbox');
}

/** Every host of the environments that reach their hosts through the sandbox's ssh_config. */
export function sandboxHosts(config: Config): SandboxHostSpec[] {
  const file = path.join(sandboxDir(config), 'ssh_config');
  const out: SandboxHostSpec[] = [];
  // The host OS: the environment's sandbox_os, else the builder's OS when the sandbox has it (so what
  // `build` makes runs there), else Debian 12.
  const builderOs = (SANDBOX_OSES as readonly string[]).includes(config.builder.os)
    ? (config.builder.os as SandboxOs)
    : DEFAULT_SANDBOX_OS;
  for (const env of Object.values(config.environments)) {
    if (env.sshConfig !== file) continue;
    const os = env.sandboxOs ?? builderOs;
    for (const host of env.hosts) {
      const vars = env.hostVars[host] ?? {};
      const sshPort = Number(vars.ssh_port);
      const httpPort = Number(vars.http_port);
      if (!Number.isInteger(sshPort) || !Number.isInteger(httpPort)) {
        throw new UsageError(
          `${config.displayFile}: environments.${env.name}.host_vars.${host} needs ssh_port and http_port for a sandbox host`,
        );
      }
      const same = out.find((h) => h.name === host);
      if (!same) out.push({ name: host, sshPort, httpPort, os });
      else if (same.os !== os)
        throw new UsageError(
          `${config.displayFile}: host ${host} is a sandbox host of environments with different sandbox_os (${same.os}, ${os} in ${env.name})`,
          'give the environments that share a host the same sandbox_os',
        );
    }
  }
  return out;
}

/**
 * The PostgreSQL servers the sandbox environments ask for: an environment whose vars set
 * `postgres_port` gets one on that 127.0.0.1 port, with database `postgres_db` and login role
 * `postgres_user` (both default `ckan`) whose password is `postgres_password` (from the secrets, or
 * vars). The config template reads the same variables, so the two cannot disagree. Environments may
 * share one server if they agree on all four.
 */
export function sandboxPostgres(
  config: Config,
  secretsOf: (env: Environment) => Record<string, unknown>,
  hosts: SandboxHostSpec[] = sandboxHosts(config),
): SandboxPostgresSpec[] {
  const file = path.join(sandboxDir(config), 'ssh_config');
  const out: SandboxPostgresSpec[] = [];
  for (const env of Object.values(config.environments)) {
    if (env.sshConfig !== file || env.vars.postgres_port === undefined) continue;
    if (!env.hosts.some((h) => hosts.some((s) => s.name === h))) continue;
    const where = `${config.displayFile}: environments.${env.name}.vars`;
    const port = Number(env.vars.postgres_port);
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new UsageError(
        `${where}.postgres_port: expected a TCP port number, got ${String(env.vars.postgres_port)}`,
      );
    const name = (key: string): string => {
      const v = env.vars[key] ?? 'ckan';
      if (typeof v !== 'string') throw new UsageError(`${where}.${key}: expected a string`);
      return v;
    };
    const password = env.vars.postgres_password ?? secretsOf(env).postgres_password;
    if (typeof password !== 'string' || !password)
      throw new UsageError(
        `${config.displayFile}: environments.${env.name}: postgres_port is set, but no postgres_password`,
        `put postgres_password in the environment's secrets file${env.secrets ? ` (${path.relative(config.dir, env.secrets)})` : ''}`,
      );
    const spec = { port, database: name('postgres_db'), user: name('postgres_user'), password };
    const same = out.find((p) => p.port === port);
    if (!same) out.push(spec);
    else if (same.database !== spec.database || same.user !== spec.user || same.password !== spec.password)
      throw new UsageError(
        `${where}.postgres_port: ${port} is another environment's PostgreSQL, with another database, user or password`,
        'give each environment its own postgres_port, or the same postgres_db, postgres_user and postgres_password',
      );
  }
  return out;
}

export async function sandboxUpCommand(
  io: Io,
  opts: { hosts?: string; server: SandboxServer },
  c: Command,
): Promise<void> {
  const config = loadConfig(globals(c).config);
  let hosts = sandboxHosts(config);
  if (hosts.length === 0) {
    throw new UsageError(
      `no environment of ${config.displayFile} uses the sandbox: set its ssh_config to .ckan-release/sandbox/ssh_config`,
    );
  }
  if (opts.hosts) {
    const wanted = opts.hosts.split(',').map((h) => h.trim());
    const unknown = wanted.filter((w) => !hosts.some((h) => h.name === w));
    if (unknown.length)
      throw new UsageError(`not sandbox hosts of ${config.displayFile}: ${unknown.join(', ')}`);
    hosts = hosts.filter((h) => wanted.includes(h.name));
  }
  hosts = hosts.map((h) => ({ ...h, server: opts.server }));
  const g = globals(c);
  const postgres = sandboxPostgres(
    config,
    (env) =>
      env.secrets
        ? loadSecrets(env.secrets, { vaultPasswordFile: g.vaultPasswordFile, env: process.env })
        : {},
    hosts,
  );
  const docker = await requireEngine();
  const up = await sandboxUp(docker, { dir: sandboxDir(config), hosts, postgres }, (l) => io.err(`${l}\n`));
  for (const h of up) io.out(`${h.name}: ssh 127.0.0.1:${h.sshPort}, http://127.0.0.1:${h.httpPort}/\n`);
  for (const p of postgres)
    io.out(`postgresql: 127.0.0.1:${p.port}, database ${p.database}, user ${p.user}\n`);
}

export async function sandboxDownCommand(io: Io, _opts: unknown, c: Command): Promise<void> {
  const config = loadConfig(globals(c).config);
  const docker = await requireEngine();
  const removed = await sandboxDown(docker, { dir: sandboxDir(config) }, (l) => io.err(`${l}\n`));
  io.out(removed.length ? `removed ${removed.join(', ')}\n` : 'no sandbox hosts were running\n');
}
