// Runs a command in a fresh container and collects its output: the one way the tool executes
// anything inside Docker.
import { PassThrough } from 'node:stream';
import type Docker from 'dockerode';

export interface RunOptions {
  /** none (the default: builds need no network), host, or default (Docker's bridge). */
  network?: 'none' | 'host' | 'default';
  binds?: string[];
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
  /** Called with output as it arrives (for build logs and progress). */
  onOutput?: (chunk: string, stream: 'stdout' | 'stderr') => void;
  labels?: Record<string, string>;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runInContainer(
  docker: Docker,
  image: string,
  cmd: string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const container = await docker.createContainer({
    Image: image,
    Cmd: cmd,
    Env: Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`),
    WorkingDir: opts.workdir ?? '/',
    User: opts.user ?? '',
    Labels: { 'ckan-release': '1', ...(opts.labels ?? {}) },
    HostConfig: {
      NetworkMode: opts.network === 'default' ? 'default' : (opts.network ?? 'none'),
      Binds: opts.binds ?? [],
      AutoRemove: false,
    },
    AttachStdout: true,
    AttachStderr: true,
  });
  try {
    const stream = await container.attach({ stream: true, stdout: true, stderr: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    stdout.on('data', (c: Buffer) => {
      out.push(c);
      opts.onOutput?.(c.toString(), 'stdout');
    });
    stderr.on('data', (c: Buffer) => {
      err.push(c);
      opts.onOutput?.(c.toString(), 'stderr');
    });
    docker.modem.demuxStream(stream, stdout, stderr);
    const ended = new Promise<void>((resolve) => stream.on('end', resolve));
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    await endedWithin(ended, 2000);
    return { code: StatusCode, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
  } finally {
    await container.remove({ force: true }).catch(() => undefined);
  }
}

/**
 * Waits for a container's attach stream to end (its last output read), or at most `ms` after the
 * container exited. The timer is cleared either way, so it never keeps the process alive: an uncleared
 * one held every build's exit back by up to 3 s.
 */
export async function endedWithin(ended: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([ended, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/**
 * The text of a multiplexed (non-TTY) Docker stream read whole, e.g. container.logs(): each chunk is
 * preceded by an 8-byte header whose last 4 bytes are its length.
 */
export function demuxBuffer(buf: Buffer): string {
  let text = '';
  for (let i = 0; i + 8 <= buf.length;) {
    const len = buf.readUInt32BE(i + 4);
    text += buf.subarray(i + 8, i + 8 + len).toString();
    i += 8 + len;
  }
  return text;
}

/** Runs a command in a running container (docker exec); resolves its exit code and output. */
export async function execInContainer(docker: Docker, container: string, cmd: string[]): Promise<RunResult> {
  const exec = await docker
    .getContainer(container)
    .exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({ hijack: true, stdin: false });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  stdout.on('data', (c: Buffer) => out.push(c));
  stderr.on('data', (c: Buffer) => err.push(c));
  docker.modem.demuxStream(stream, stdout, stderr);
  await new Promise<void>((resolve, reject) => {
    stream.on('end', resolve);
    stream.on('close', resolve);
    stream.on('error', reject);
  });
  const { ExitCode } = await exec.inspect();
  return {
    code: ExitCode ?? -1,
    stdout: Buffer.concat(out).toString(),
    stderr: Buffer.concat(err).toString(),
  };
}
