// The Docker engine: connect (DOCKER_HOST is honoured by docker-modem), and, for tests and the demo
// only, start a local dockerd when none answers and make the base image when none can be pulled.
import { spawn, execFile } from 'node:child_process';
import { accessSync, constants, createWriteStream, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { DockerUnavailableError, OperationError } from '../errors.js';

const run = promisify(execFile);

export const BASE_IMAGE = 'debian:bookworm-slim';

const HOW_TO_GET_DOCKER =
  'install and start a Docker engine (Debian: `apt-get install docker.io`, then start `dockerd`), ' +
  'or point DOCKER_HOST at one; tests and `npm run demo` start one themselves when run as root';

export function connectDocker(): Docker {
  return new Docker();
}

export async function engineAnswers(docker: Docker): Promise<boolean> {
  try {
    await docker.ping();
    return true;
  } catch {
    return false;
  }
}

/** For commands: a Docker engine must already answer. */
export async function requireEngine(docker = connectDocker()): Promise<Docker> {
  if (await engineAnswers(docker)) return docker;
  throw new DockerUnavailableError(`no Docker engine answers (${describeEndpoint()})`, HOW_TO_GET_DOCKER);
}

function describeEndpoint(): string {
  return process.env.DOCKER_HOST ? `DOCKER_HOST=${process.env.DOCKER_HOST}` : 'unix:///var/run/docker.sock';
}

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/bin', '/sbin'])) {
    const p = path.join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export type Say = (line: string) => void;

/**
 * For tests and the demo: if no engine answers, and we are root and dockerd exists, start one with no
 * bridge and no iptables rules (this machine must not route anywhere), logging to a file; wait for it.
 */
export async function ensureEngine(say: Say, logFile = '/var/log/ckan-release-dockerd.log'): Promise<Docker> {
  const docker = connectDocker();
  if (await engineAnswers(docker)) return docker;
  const dockerd = onPath('dockerd');
  if (process.env.DOCKER_HOST || process.getuid?.() !== 0 || !dockerd) {
    const why = process.env.DOCKER_HOST
      ? `DOCKER_HOST is set (${process.env.DOCKER_HOST}) and does not answer`
      : !dockerd
        ? 'dockerd is not installed'
        : 'not running as root, so dockerd cannot be started here';
    throw new DockerUnavailableError(
      `no Docker engine answers and none can be started: ${why}`,
      HOW_TO_GET_DOCKER,
    );
  }
  mkdirSync(path.dirname(logFile), { recursive: true });
  const log = createWriteStream(logFile, { flags: 'a' });
  await new Promise((r) => log.once('open', r));
  const child = spawn(dockerd, ['--bridge=none', '--iptables=false'], {
    detached: true,
    stdio: ['ignore', log, log],
  });
  child.unref();
  say(`started dockerd (pid ${child.pid}, --bridge=none --iptables=false), log: ${logFile}`);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (await engineAnswers(docker)) return docker;
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new DockerUnavailableError(`dockerd did not answer within 60 s`, `see ${logFile}`);
}

export async function imageExists(docker: Docker, ref: string): Promise<boolean> {
  try {
    await docker.getImage(ref).inspect();
    return true;
  } catch {
    return false;
  }
}

/** Pulls an image; resolves false when the registry cannot be reached, throws on other errors. */
export async function pullImage(docker: Docker, ref: string): Promise<boolean> {
  try {
    const stream = await docker.pull(ref);
    await new Promise<void>((resolve, reject) => {
      docker.modem.followProgress(
        stream,
        (err: Error | null, events: { error?: string; errorDetail?: unknown }[]) => {
          // followProgress reports success even when an event carries an error: look at every event.
          const failed = events?.find((e) => e.error || e.errorDetail);
          if (err) reject(err);
          else if (failed) reject(new Error(failed.error ?? JSON.stringify(failed.errorDetail)));
          else resolve();
        },
      );
    });
    return true;
  } catch (e) {
    if (process.env.CKAN_RELEASE_DEBUG) console.error(`pull ${ref}: ${(e as Error).message}`);
    return false;
  }
}

export type BaseImageSource = 'present' | 'pulled' | 'debootstrapped';

/**
 * The Debian base images debootstrap can make when no registry answers: image reference -> suite.
 * Every other base is only ever used if present or pulled.
 */
export const DEBOOTSTRAP_SUITES: Readonly<Record<string, string>> = {
  'debian:bullseye-slim': 'bullseye',
  'debian:bookworm-slim': 'bookworm',
  'debian:trixie-slim': 'trixie',
};

/**
 * A base image (debian:bookworm-slim unless told): use it if present, else pull it, else, for the
 * Debian suites of DEBOOTSTRAP_SUITES, make it with debootstrap and import it under the same name.
 */
export async function ensureBaseImage(docker: Docker, say: Say, ref = BASE_IMAGE): Promise<BaseImageSource> {
  if (await imageExists(docker, ref)) {
    say(`${ref}: present`);
    return 'present';
  }
  if (await pullImage(docker, ref)) {
    say(`${ref}: pulled`);
    return 'pulled';
  }
  const suite = DEBOOTSTRAP_SUITES[ref];
  if (!suite) {
    throw new OperationError(
      `${ref} is not present and cannot be pulled (no registry answers)`,
      `pull it where a registry answers and bring it here with \`docker save\` / \`docker load\`; ` +
        `only ${Object.keys(DEBOOTSTRAP_SUITES).join(', ')} can be made here, with debootstrap`,
    );
  }
  const debootstrap = onPath('debootstrap');
  if (!debootstrap || process.getuid?.() !== 0) {
    throw new OperationError(
      `${ref} is not present, cannot be pulled, and cannot be made here (${debootstrap ? 'not root' : 'debootstrap is not installed'})`,
      'apt-get install debootstrap and run as root, or load the image with `docker load`',
    );
  }
  say(`${ref}: no registry answers; making it with debootstrap --variant=minbase ${suite} (about a minute)`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-rootfs-'));
  try {
    const mirror = process.env.CKAN_RELEASE_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
    await run(debootstrap, ['--variant=minbase', suite, dir, mirror], { maxBuffer: 64 * 1024 * 1024 });
    // Trim what a -slim image leaves out anyway.
    rmSync(path.join(dir, 'var/cache/apt/archives'), { recursive: true, force: true });
    const tar = spawn('tar', ['-C', dir, '--numeric-owner', '-c', '.'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [repo, tag] = ref.split(':') as [string, string];
    const stream = await docker.importImage(tar.stdout as unknown as string, { repo, tag });
    await new Promise<void>((resolve, reject) => {
      docker.modem.followProgress(stream, (err: Error | null, events: { error?: string }[]) => {
        const failed = events?.find((e) => e.error);
        if (err || failed) reject(err ?? new Error(failed?.error));
        else resolve();
      });
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (!(await imageExists(docker, ref)))
    throw new OperationError(`importing ${ref} did not produce the image`);
  say(`${ref}: debootstrapped and imported`);
  return 'debootstrapped';
}

/**
 * The default of `ARG BASE=...` in a Dockerfile: the base image a docker/<os>/ directory builds FROM
 * unless a build arg says otherwise. undefined when the Dockerfile declares no BASE default.
 */
export function dockerfileBase(dockerfileText: string): string | undefined {
  return dockerfileArgs(dockerfileText).BASE;
}

/** Every image a Dockerfile's stages start FROM through an `ARG NAME=image` default (BASE first). */
export function dockerfileBases(dockerfileText: string): string[] {
  const args = dockerfileArgs(dockerfileText);
  const out: string[] = [];
  for (const line of dockerfileText.split('\n')) {
    const m = /^\s*FROM\s+\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?(\s|$)/i.exec(line);
    const image = m ? args[m[1]!] : undefined;
    if (image && !out.includes(image)) out.push(image);
  }
  const base = args.BASE;
  return base ? [base, ...out.filter((b) => b !== base)] : out;
}

function dockerfileArgs(dockerfileText: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of dockerfileText.split('\n')) {
    const m = /^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*$/i.exec(line);
    if (m && !(m[1]! in out)) out[m[1]!] = m[2]!.replace(/^(["'])(.*)\1$/, '$2');
  }
  return out;
}
