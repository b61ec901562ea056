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

/** debian:bookworm-slim: use it if present, else pull it, else make it with debootstrap and import it. */
export async function ensureBaseImage(docker: Docker, say: Say): Promise<BaseImageSource> {
  if (await imageExists(docker, BASE_IMAGE)) {
    say(`${BASE_IMAGE}: present`);
    return 'present';
  }
  if (await pullImage(docker, BASE_IMAGE)) {
    say(`${BASE_IMAGE}: pulled`);
    return 'pulled';
  }
  const debootstrap = onPath('debootstrap');
  if (!debootstrap || process.getuid?.() !== 0) {
    throw new OperationError(
      `${BASE_IMAGE} is not present, cannot be pulled, and cannot be made here (${debootstrap ? 'not root' : 'debootstrap is not installed'})`,
      'apt-get install debootstrap and run as root, or load the image with `docker load`',
    );
  }
  say(
    `${BASE_IMAGE}: no registry answers; making it with debootstrap --variant=minbase bookworm (about 30 s)`,
  );
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-rootfs-'));
  try {
    const mirror = process.env.CKAN_RELEASE_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
    await run(debootstrap, ['--variant=minbase', 'bookworm', dir, mirror], { maxBuffer: 64 * 1024 * 1024 });
    // Trim what a -slim image leaves out anyway.
    rmSync(path.join(dir, 'var/cache/apt/archives'), { recursive: true, force: true });
    const tar = spawn('tar', ['-C', dir, '--numeric-owner', '-c', '.'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [repo, tag] = BASE_IMAGE.split(':') as [string, string];
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
  if (!(await imageExists(docker, BASE_IMAGE)))
    throw new OperationError(`importing ${BASE_IMAGE} did not produce the image`);
  say(`${BASE_IMAGE}: debootstrapped and imported`);
  return 'debootstrapped';
}
