// Sandbox hosts: local throwaway "CKAN servers" (containers of docker/sandbox-host: sshd + Apache with
// mod_wsgi in daemon mode) to rehearse deploys on, and the integration test bed.
//
// Every container runs with --network host and listens on 127.0.0.1 only (sshd on its SSH port, Apache
// on its HTTP port). A sandbox lives in a directory (`dir`), which holds:
//   id_ed25519, id_ed25519.pub  the key the deploy user accepts (kept by sandboxDown)
//   known_hosts                 each host's ed25519 host key, twice: under its alias (`<name> ...`, what
//                               OpenSSH checks, because ssh_config sets HostKeyAlias <name>) and under
//                               `[127.0.0.1]:<sshPort> ...` (for clients that ignore HostKeyAlias)
//   ssh_config                  one `Host <name>` block per host (StrictHostKeyChecking yes)
//   hosts.json                  [{name, sshPort, httpPort, container}] of the running hosts
//
// Containers are named ckan-release-sandbox-<name> (a PostgreSQL beside them:
// ckan-release-sandbox-postgresql-<port>) and labelled ckan-release.sandbox=1,
// ckan-release.sandbox.host=<name> and ckan-release.sandbox.dir=<dir, absolute>. sandboxUp makes the
// set of hosts of a dir exactly the given one; sandboxDown removes only the containers of its own dir
// (by the dir label), so a test's sandbox and the demo's can run side by side.
import { execFile } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type Docker from 'dockerode';
import tarStream from 'tar-stream';
import { SANDBOX_OSES, type SandboxOs } from '../config/schema.js';
import { dockerfileBase, ensureBaseImage, type Say } from '../docker/engine.js';
import { ensureImage } from '../docker/images.js';
import { demuxBuffer, execInContainer } from '../docker/run.js';
import { OperationError, UsageError } from '../errors.js';
import { SANDBOX_SERVERS, type SandboxServer } from './servers.js';

const run = promisify(execFile);

export const SANDBOX_IMAGE_REPOSITORY = 'ckan-release-sandbox-host';
export const SANDBOX_CONTEXT = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../docker/sandbox-host',
);
export const LABEL_SANDBOX = 'ckan-release.sandbox';
export const LABEL_HOST = 'ckan-release.sandbox.host';
export const LABEL_DIR = 'ckan-release.sandbox.dir';
export const LABEL_OS = 'ckan-release.sandbox.os';
/** The shipped builder images: the sandbox host of OS <os> is built FROM the base of docker/<os>. */
export const TOOL_DOCKER_DIR = path.dirname(SANDBOX_CONTEXT);
/** Sandbox hosts are Debian 12 unless a spec says otherwise. */
export const DEFAULT_SANDBOX_OS: SandboxOs = 'debian12';
export const CONTAINER_PREFIX = 'ckan-release-sandbox-';
/** The login user on every sandbox host (passwordless sudo). */
export const SANDBOX_USER = 'deploy';

const HOST_NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const READY_TIMEOUT_MS = 60_000;

export { SANDBOX_SERVERS, type SandboxServer };

export interface SandboxHostSpec {
  name: string;
  sshPort: number;
  httpPort: number;
  /** apache (default): Apache + mod_wsgi with the image's vhost; uwsgi: nginx + supervisord, sites and
   * programs installed by the project's server.files. */
  server?: SandboxServer;
  /** The host's OS (default debian12): the same Debian release and /usr/bin/python3 as docker/<os>. */
  os?: SandboxOs;
  /**
   * Optional. 'host' (the default): --network host, listening on the machine's 127.0.0.1.
   * 'private': --network none, a loopback of its own that nothing outside reaches (a bastion's
   * network). 'with:<host>': shares the private loopback of <host> (listed before it), reachable
   * only from there (hosts behind a bastion). Private hosts are left out of the written ssh_config.
   */
  network?: 'host' | 'private' | `with:${string}`;
  /**
   * tmpfs mounts: container path -> mount options (as `docker run --tmpfs`), e.g.
   * `{ '/usr/lib/ckan': 'size=64m' }` for a host whose releases live on a small disk. Each is given
   * to the deploy user (owner deploy:www-data, 0755), as /usr/lib/ckan is in the image.
   */
  tmpfs?: Record<string, string>;
  /**
   * Optional: an image (already built) to run instead of docker/sandbox-host's, for hosts of another
   * OS or Python (the test bed's Python 2.7 and 3.6 hosts). It keeps the same contract: SSH_PORT,
   * HTTP_PORT, AUTHORIZED_KEY; user deploy with passwordless sudo; HTTP answered on HTTP_PORT.
   */
  image?: string;
}

/**
 * A PostgreSQL beside the sandbox hosts (docker/sandbox-postgresql: Debian's postgresql 15, --network
 * host, listening on 127.0.0.1:port), with one database owned by one login role. Its container is
 * ckan-release-sandbox-postgresql-<port>, labelled as the hosts are, so `sandbox down` removes it and
 * `sandbox up` starts it afresh (a throwaway database, as the hosts are throwaway hosts).
 */
export interface SandboxPostgresSpec {
  port: number;
  database: string;
  user: string;
  /** The role's password: written into the container as a file before it starts, never logged. */
  password: string;
}

export const POSTGRES_IMAGE_REPOSITORY = 'ckan-release-sandbox-postgresql';
export const POSTGRES_CONTEXT = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../docker/sandbox-postgresql',
);
const SQL_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

export function postgresContainerName(port: number): string {
  return `${CONTAINER_PREFIX}postgresql-${port}`;
}

export interface SandboxHost extends SandboxHostSpec {
  /** Container id. */
  container: string;
}

export interface SandboxPaths {
  dir: string;
  identityFile: string;
  publicKey: string;
  knownHosts: string;
  sshConfig: string;
  hostsJson: string;
}

export function sandboxPaths(dir: string): SandboxPaths {
  const d = path.resolve(dir);
  return {
    dir: d,
    identityFile: path.join(d, 'id_ed25519'),
    publicKey: path.join(d, 'id_ed25519.pub'),
    knownHosts: path.join(d, 'known_hosts'),
    sshConfig: path.join(d, 'ssh_config'),
    hostsJson: path.join(d, 'hosts.json'),
  };
}

export function containerName(host: string): string {
  return `${CONTAINER_PREFIX}${host}`;
}

interface ListedContainer {
  id: string;
  name: string;
  host: string | undefined;
  dir: string | undefined;
  ports: number[];
}

/** Every sandbox container on the engine, running or not. */
async function listSandboxContainers(docker: Docker): Promise<ListedContainer[]> {
  const list = await docker.listContainers({ all: true, filters: { label: [`${LABEL_SANDBOX}=1`] } });
  const out: ListedContainer[] = [];
  for (const c of list) {
    // The ports are in the environment, which only inspect shows.
    let ports: number[] = [];
    try {
      const info = await docker.getContainer(c.Id).inspect();
      ports = (info.Config.Env ?? [])
        .filter((e) => e.startsWith('SSH_PORT=') || e.startsWith('HTTP_PORT=') || e.startsWith('PG_PORT='))
        .map((e) => Number(e.slice(e.indexOf('=') + 1)));
    } catch {
      // removed meanwhile
    }
    out.push({
      id: c.Id,
      name: (c.Names[0] ?? '').replace(/^\//, ''),
      host: c.Labels[LABEL_HOST],
      dir: c.Labels[LABEL_DIR],
      ports,
    });
  }
  return out;
}

function readHostsJson(file: string): SandboxHost[] | undefined {
  try {
    const data = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    return Array.isArray(data) ? (data as SandboxHost[]) : undefined;
  } catch {
    return undefined;
  }
}

function validate(hosts: SandboxHostSpec[], postgres: SandboxPostgresSpec[]): void {
  if (hosts.length === 0) throw new UsageError('sandbox: at least one host is needed');
  const names = new Set<string>();
  const ports = new Map<number, string>();
  for (const pg of postgres) {
    for (const [what, name] of [
      ['database', pg.database],
      ['user', pg.user],
    ] as const)
      if (!SQL_NAME.test(name))
        throw new UsageError(
          `sandbox: PostgreSQL on port ${pg.port}: bad ${what} name "${name}"`,
          'use lower case letters, digits and "_", starting with a letter or "_" (at most 63)',
        );
    if (!pg.password) throw new UsageError(`sandbox: PostgreSQL on port ${pg.port}: the password is empty`);
    if (!Number.isInteger(pg.port) || pg.port < 1 || pg.port > 65535)
      throw new UsageError(`sandbox: PostgreSQL port ${pg.port} is not a TCP port number`);
    if (ports.has(pg.port)) throw new UsageError(`sandbox: PostgreSQL port ${pg.port} is given twice`);
    ports.set(pg.port, `PostgreSQL`);
  }
  for (const h of hosts) {
    if (!HOST_NAME.test(h.name))
      throw new UsageError(
        `sandbox: bad host name "${h.name}"`,
        'use lower case letters, digits, ".", "_" and "-", starting with a letter or digit',
      );
    if (names.has(h.name)) throw new UsageError(`sandbox: host "${h.name}" is given twice`);
    const net = h.network ?? 'host';
    if (net !== 'host' && net !== 'private' && !(net.startsWith('with:') && names.has(net.slice(5))))
      throw new UsageError(
        `sandbox: host "${h.name}": network "${net}" is not host, private or with:<a host listed before it>`,
      );
    names.add(h.name);
    if (h.os !== undefined && !(SANDBOX_OSES as readonly string[]).includes(h.os))
      throw new UsageError(
        `sandbox: host "${h.name}": os "${String(h.os)}" is not one of ${SANDBOX_OSES.join(', ')}`,
      );
    for (const [what, port] of [
      ['SSH', h.sshPort],
      ['HTTP', h.httpPort],
    ] as const) {
      if (!Number.isInteger(port) || port < 1 || port > 65535)
        throw new UsageError(`sandbox: host "${h.name}": ${what} port ${port} is not a TCP port number`);
      const other = ports.get(port);
      if (other) throw new UsageError(`sandbox: port ${port} is given twice (${other}, ${h.name} ${what})`);
      ports.set(port, `${h.name} ${what}`);
    }
  }
}

/** Resolves true when nothing listens on 127.0.0.1:port (we could bind it). */
export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host: '127.0.0.1', exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** n distinct TCP ports that are free on 127.0.0.1 right now (all bound at once, then released). */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const server = net.createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ port: 0, host: '127.0.0.1', exclusive: true }, () => resolve());
      });
      servers.push(server);
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

/** Makes the sandbox key pair unless it exists. */
async function ensureKeyPair(paths: SandboxPaths, say: Say): Promise<string> {
  if (!existsSync(paths.identityFile)) {
    await run('ssh-keygen', [
      '-q',
      '-t',
      'ed25519',
      '-N',
      '',
      '-C',
      'ckan-release-sandbox',
      '-f',
      paths.identityFile,
    ]);
    say(`made key pair ${paths.identityFile}`);
  } else if (!existsSync(paths.publicKey)) {
    const { stdout } = await run('ssh-keygen', ['-y', '-f', paths.identityFile]);
    writeFileSync(paths.publicKey, `${stdout.trim()} ckan-release-sandbox\n`, { mode: 0o644 });
  }
  return readFileSync(paths.publicKey, 'utf8').trim().split('\n')[0]!;
}

/** Resolves the first line a TCP server sends (or '' when it says nothing within the timeout). */
function tcpBanner(port: number, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let data = '';
    const done = (line: string) => {
      socket.destroy();
      resolve(line);
    };
    socket.setTimeout(timeoutMs, () => done(''));
    socket.on('data', (c: Buffer) => {
      data += c.toString('latin1');
      const nl = data.indexOf('\n');
      if (nl >= 0) done(data.slice(0, nl).trim());
    });
    socket.on('error', () => done(''));
    socket.on('close', () => done(data.trim()));
  });
}

async function httpAnswers(port: number): Promise<boolean> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5000) });
    await r.arrayBuffer();
    return true;
  } catch {
    return false;
  }
}

async function containerLogs(docker: Docker, id: string): Promise<string> {
  try {
    const buf = (await docker.getContainer(id).logs({ stdout: true, stderr: true, tail: 20 })) as Buffer;
    return demuxBuffer(buf).trim();
  } catch {
    return '';
  }
}

function isPrivate(h: SandboxHostSpec): boolean {
  return (h.network ?? 'host') !== 'host';
}

function networkMode(h: SandboxHostSpec): string {
  const net = h.network ?? 'host';
  return net === 'host' ? 'host' : net === 'private' ? 'none' : `container:${containerName(net.slice(5))}`;
}

/** A private host's banner and HTTP check, from inside its own network namespace. */
async function insideReady(docker: Docker, host: SandboxHost, what: 'ssh' | 'http'): Promise<boolean> {
  const script =
    what === 'ssh'
      ? `exec 3<>/dev/tcp/127.0.0.1/${host.sshPort} && timeout 2 head -c 7 <&3`
      : `curl -s -o /dev/null -m 5 http://127.0.0.1:${host.httpPort}/`;
  try {
    const r = await execInContainer(docker, host.container, ['bash', '-c', script]);
    return what === 'ssh' ? r.stdout.startsWith('SSH-2.0') : r.code === 0;
  } catch {
    return false;
  }
}

/**
 * Waits until sshd says SSH-2.0 on the SSH port and Apache answers HTTP (any status). A uwsgi host has
 * no site until the project's server.files install one: only sshd is waited for.
 */
async function waitReady(docker: Docker, host: SandboxHost): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let ssh = false;
  let http = host.server === 'uwsgi';
  while (Date.now() < deadline) {
    if (isPrivate(host)) {
      if (!ssh) ssh = await insideReady(docker, host, 'ssh');
      if (ssh && !http) http = await insideReady(docker, host, 'http');
    } else {
      if (!ssh) ssh = (await tcpBanner(host.sshPort)).startsWith('SSH-2.0');
      if (ssh && !http) http = await httpAnswers(host.httpPort);
    }
    if (ssh && http) return;
    const state = (await docker.getContainer(host.container).inspect()).State;
    if (!state.Running)
      throw new OperationError(
        `sandbox host ${host.name}: its container stopped (exit code ${state.ExitCode})\n` +
          (await containerLogs(docker, host.container)),
      );
    await new Promise((r) => setTimeout(r, 250));
  }
  const what = !ssh ? `sshd on 127.0.0.1:${host.sshPort}` : `Apache on 127.0.0.1:${host.httpPort}`;
  throw new OperationError(
    `sandbox host ${host.name}: ${what} did not answer within ${READY_TIMEOUT_MS / 1000} s\n` +
      (await containerLogs(docker, host.container)),
    `the container ${containerName(host.name)} was removed; its logs are above`,
  );
}

/** OpenSSH config values: quoted when they hold blanks, with % doubled (OpenSSH expands %-tokens). */
function sshValue(v: string): string {
  const escaped = v.replace(/%/g, '%%');
  return /[\s"]/.test(escaped) ? `"${escaped.replace(/"/g, '')}"` : escaped;
}

function writeAtomic(file: string, content: string, mode = 0o644): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, content, { mode });
  renameSync(tmp, file);
}

/**
 * Starts (or restarts) the sandbox hosts of `dir`: exactly `hosts` afterwards (containers of this dir
 * not in the list are removed). Fails before touching anything when a port is taken or a host name
 * belongs to another live sandbox.
 */
export async function sandboxUp(
  docker: Docker,
  opts: { dir: string; hosts: SandboxHostSpec[]; postgres?: SandboxPostgresSpec[] },
  say: Say,
): Promise<SandboxHost[]> {
  const postgres = opts.postgres ?? [];
  validate(opts.hosts, postgres);
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const paths = sandboxPaths(realpathSync(opts.dir));

  const existing = await listSandboxContainers(docker);
  const wanted = new Set([
    ...opts.hosts.map((h) => containerName(h.name)),
    ...postgres.map((p) => postgresContainerName(p.port)),
  ]);
  const replace: ListedContainer[] = [];
  for (const c of existing) {
    if (c.dir === paths.dir) {
      replace.push(c);
      continue;
    }
    if (!wanted.has(c.name)) continue;
    // Same name in another sandbox: take it over only when that sandbox no longer knows it.
    const owner = c.dir ? readHostsJson(sandboxPaths(c.dir).hostsJson) : undefined;
    // A PostgreSQL belongs to its sandbox as long as that sandbox has hosts up.
    const pgOf = c.name.startsWith(`${CONTAINER_PREFIX}postgresql-`);
    if (pgOf ? owner !== undefined : owner?.some((h) => h.container === c.id))
      throw new UsageError(
        `sandbox: host "${c.host}" (container ${c.name}) belongs to the sandbox in ${c.dir}`,
        `run \`sandbox down\` for that one, or choose other host names`,
      );
    replace.push(c);
  }

  // Ports: free now, or held by a container this call replaces.
  const freed = new Set(replace.flatMap((c) => c.ports));
  const taken: string[] = [];
  await Promise.all(
    opts.hosts.flatMap((h) =>
      (isPrivate(h)
        ? []
        : ([
            ['SSH', h.sshPort],
            ['HTTP', h.httpPort],
          ] as const)
      ).map(async ([what, port]) => {
        if (freed.has(port) || (await portIsFree(port))) return;
        const holder = existing.find((c) => c.ports.includes(port));
        taken.push(
          `port ${port} (${what} of host ${h.name}) is already in use on 127.0.0.1` +
            (holder ? ` by sandbox container ${holder.name}` : ''),
        );
      }),
    ),
  );
  if (taken.length)
    throw new UsageError(
      `sandbox: ${taken.sort().join('; ')}`,
      'choose other ports (or stop what uses them)',
    );

  const images = new Map<SandboxOs, string>();
  for (const os of new Set(opts.hosts.filter((h) => !h.image).map((h) => h.os ?? DEFAULT_SANDBOX_OS)))
    images.set(os, (await sandboxImage(docker, os, say)).tag);
  const pgImage = postgres.length
    ? await ensureBaseImage(docker, say).then(() =>
        ensureImage(
          docker,
          { context: POSTGRES_CONTEXT, repository: POSTGRES_IMAGE_REPOSITORY, flavour: 'debian12' },
          say,
        ),
      )
    : undefined;
  const publicKey = await ensureKeyPair(paths, say);

  for (const c of replace) {
    await docker
      .getContainer(c.id)
      .remove({ force: true })
      .catch(() => undefined);
    say(`removed old container ${c.name}`);
  }
  // The removed containers' sockets are gone at once; still, say which port is the problem if not.
  for (const port of freed) {
    if (
      !opts.hosts.some((h) => h.sshPort === port || h.httpPort === port) &&
      !postgres.some((p) => p.port === port)
    )
      continue;
    let free = false;
    for (let i = 0; i < 20 && !free; i++) {
      free = await portIsFree(port);
      if (!free) await new Promise((r) => setTimeout(r, 250));
    }
    if (!free) throw new OperationError(`sandbox: port ${port} is still in use after removing the old hosts`);
  }

  const started: SandboxHost[] = [];
  const services: string[] = [];
  try {
    for (const pg of postgres) {
      const id = await startPostgres(docker, pgImage!.tag, pg, paths.dir);
      services.push(id);
      say(
        `PostgreSQL: container ${postgresContainerName(pg.port)}, 127.0.0.1:${pg.port}, database ${pg.database}, user ${pg.user}`,
      );
    }
    for (const h of opts.hosts) {
      const container = await docker.createContainer({
        name: containerName(h.name),
        Image: h.image ?? images.get(h.os ?? DEFAULT_SANDBOX_OS),
        Env: [
          `SSH_PORT=${h.sshPort}`,
          `HTTP_PORT=${h.httpPort}`,
          `AUTHORIZED_KEY=${publicKey}`,
          `SERVER=${h.server ?? 'apache'}`,
        ],
        Labels: {
          'ckan-release': '1',
          [LABEL_SANDBOX]: '1',
          [LABEL_HOST]: h.name,
          [LABEL_DIR]: paths.dir,
          [LABEL_OS]: h.os ?? DEFAULT_SANDBOX_OS,
        },
        HostConfig: {
          NetworkMode: networkMode(h),
          RestartPolicy: { Name: 'no' },
          // docker-init as PID 1: reaps the daemons' orphans, passes SIGTERM to the supervisor.
          Init: true,
          ...(h.tmpfs ? { Tmpfs: h.tmpfs } : {}),
        },
      });
      started.push({ ...h, container: container.id });
      await container.start();
      for (const mount of Object.keys(h.tmpfs ?? {})) {
        const r = await execInContainer(docker, container.id, [
          'install',
          '-d',
          '-o',
          SANDBOX_USER,
          '-g',
          'www-data',
          '-m',
          '0755',
          mount,
        ]);
        if (r.code !== 0)
          throw new OperationError(
            `sandbox host ${h.name}: cannot prepare tmpfs ${mount}: ${r.stderr.trim()}`,
          );
      }
      say(
        `host ${h.name}: container ${containerName(h.name)}, ssh 127.0.0.1:${h.sshPort}, http 127.0.0.1:${h.httpPort} (${h.os ?? DEFAULT_SANDBOX_OS}, ${h.server ?? 'apache'})`,
      );
    }
    await Promise.all([
      ...started.map((h) => waitReady(docker, h)),
      ...postgres.map((pg, i) => waitPostgres(docker, pg, services[i]!)),
    ]);

    const knownHosts: string[] = [];
    for (const h of started) {
      const r = await execInContainer(docker, h.container, ['cat', '/etc/ssh/ssh_host_ed25519_key.pub']);
      const [type, key] = r.stdout.trim().split(/\s+/);
      if (r.code !== 0 || type !== 'ssh-ed25519' || !key)
        throw new OperationError(
          `sandbox host ${h.name}: cannot read its ed25519 host key: ${r.stderr.trim()}`,
        );
      knownHosts.push(`${h.name} ${type} ${key}`, `[127.0.0.1]:${h.sshPort} ${type} ${key}`);
    }
    writeAtomic(paths.knownHosts, `${knownHosts.join('\n')}\n`);
    writeAtomic(paths.sshConfig, sshConfig(paths, started));
    writeAtomic(paths.hostsJson, `${JSON.stringify(started, null, 2)}\n`);
    say(`sandbox ready: ${started.map((h) => h.name).join(', ')} (ssh -F ${paths.sshConfig} <host>)`);
    return started;
  } catch (e) {
    // No half sandbox: remove what this call started (the error carries the logs).
    for (const id of [...started.map((h) => h.container), ...services])
      await docker
        .getContainer(id)
        .remove({ force: true })
        .catch(() => undefined);
    rmSync(paths.hostsJson, { force: true });
    throw e;
  }
}

/**
 * The sandbox host image of an OS: docker/sandbox-host built with BASE = the base image of the builder
 * docker/<os> (its `ARG BASE=` default), so host and builder run the same Debian release and Python.
 * The base is made first when absent (pulled, or debootstrapped where no registry answers).
 */
export async function sandboxImage(docker: Docker, os: SandboxOs, say: Say) {
  const dockerfile = path.join(TOOL_DOCKER_DIR, os, 'Dockerfile');
  const base = dockerfileBase(readFileSync(dockerfile, 'utf8'));
  if (!base)
    throw new OperationError(`${dockerfile} declares no ARG BASE=<image>: no sandbox host for ${os}`);
  await ensureBaseImage(docker, say, base);
  return ensureImage(
    docker,
    {
      context: SANDBOX_CONTEXT,
      repository: SANDBOX_IMAGE_REPOSITORY,
      flavour: os,
      buildArgs: { BASE: base },
    },
    say,
  );
}

/** Creates and starts a PostgreSQL container; its password goes in as a file before the start. */
async function startPostgres(
  docker: Docker,
  image: string,
  pg: SandboxPostgresSpec,
  dir: string,
): Promise<string> {
  const container = await docker.createContainer({
    name: postgresContainerName(pg.port),
    Image: image,
    Env: [`PG_PORT=${pg.port}`, `PG_DATABASE=${pg.database}`, `PG_USER=${pg.user}`],
    Labels: {
      'ckan-release': '1',
      [LABEL_SANDBOX]: '1',
      [LABEL_HOST]: `postgresql-${pg.port}`,
      [LABEL_DIR]: dir,
    },
    HostConfig: { NetworkMode: 'host', RestartPolicy: { Name: 'no' }, Init: true },
  });
  const pack = tarStream.pack();
  pack.entry({ name: 'run/ckan-sandbox/', type: 'directory', mode: 0o700 });
  pack.entry({ name: 'run/ckan-sandbox/postgres-password', mode: 0o600 }, pg.password);
  pack.finalize();
  await container.putArchive(pack as unknown as NodeJS.ReadableStream, { path: '/' });
  await container.start();
  return container.id;
}

/** Waits until the PostgreSQL answers on its TCP port (the entrypoint opens it once the database exists). */
async function waitPostgres(docker: Docker, pg: SandboxPostgresSpec, id: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const r = await execInContainer(docker, id, [
      'pg_isready',
      '-q',
      '-h',
      '127.0.0.1',
      '-p',
      String(pg.port),
    ]).catch(() => ({ code: 1 }));
    if (r.code === 0) return;
    const state = (await docker.getContainer(id).inspect()).State;
    if (!state.Running)
      throw new OperationError(
        `sandbox PostgreSQL on port ${pg.port}: its container stopped (exit code ${state.ExitCode})\n` +
          (await containerLogs(docker, id)),
      );
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new OperationError(
    `sandbox PostgreSQL on 127.0.0.1:${pg.port} did not answer within ${READY_TIMEOUT_MS / 1000} s\n` +
      (await containerLogs(docker, id)),
  );
}

export function sshConfig(paths: SandboxPaths, hosts: SandboxHostSpec[]): string {
  const blocks = hosts.map((h) =>
    isPrivate(h)
      ? `# ${h.name}: private network (${h.network}), ssh on its own 127.0.0.1:${h.sshPort}`
      : [
          `Host ${h.name}`,
          `    HostName 127.0.0.1`,
          `    Port ${h.sshPort}`,
          `    User ${SANDBOX_USER}`,
          `    IdentityFile ${sshValue(paths.identityFile)}`,
          `    IdentitiesOnly yes`,
          `    UserKnownHostsFile ${sshValue(paths.knownHosts)}`,
          `    StrictHostKeyChecking yes`,
          `    HostKeyAlias ${h.name}`,
        ].join('\n'),
  );
  return `# Written by ckan-release sandbox up: the sandbox hosts of this directory.\n\n${blocks.join('\n\n')}\n`;
}

/**
 * Removes the sandbox hosts of `dir`: every container labelled with this dir (running or not), plus
 * any container hosts.json names. Containers of other dirs' sandboxes are left alone. The key pair,
 * known_hosts and ssh_config stay (up rewrites the last two); hosts.json goes.
 */
export async function sandboxDown(docker: Docker, opts: { dir: string }, say: Say): Promise<string[]> {
  const dir = existsSync(opts.dir) ? realpathSync(opts.dir) : path.resolve(opts.dir);
  const paths = sandboxPaths(dir);
  const listed = new Set((readHostsJson(paths.hostsJson) ?? []).map((h) => h.container));
  const removed: string[] = [];
  for (const c of await listSandboxContainers(docker)) {
    if (c.dir !== dir && !listed.has(c.id)) continue;
    await docker.getContainer(c.id).remove({ force: true });
    removed.push(c.name);
    say(`removed ${c.name}`);
  }
  rmSync(paths.hostsJson, { force: true });
  if (removed.length === 0) say(`no sandbox hosts of ${dir} were running`);
  return removed;
}
