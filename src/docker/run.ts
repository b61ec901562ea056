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
    await Promise.race([ended, new Promise((r) => setTimeout(r, 2000))]);
    return { code: StatusCode, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
  } finally {
    await container.remove({ force: true }).catch(() => undefined);
  }
}
