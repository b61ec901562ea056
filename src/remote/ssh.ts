// One SSH connection per host, reused for a whole operation. Host keys are checked against
// known_hosts (an unknown or changed key is refused, with its fingerprint and how to trust it);
// commands run with exec and report {code, stdout, stderr}: a non-zero code is an error that names
// the host and the step; stderr output alone is not.
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import ssh2, { Client, type ConnectConfig } from 'ssh2';
import { CkanReleaseError, OperationError } from '../errors.js';
import { fingerprint, keyType, readKnownHosts, verifyHostKey, type HostKeyVerdict } from './known-hosts.js';
import type { HostTarget } from './target.js';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Streamed to the command's standard input, then closed. */
  stdin?: Readable;
  /** Called with the number of stdin bytes sent so far. */
  onProgress?: (bytes: number) => void;
}

/** The host refused, or could not be reached: nothing ran there. */
export class HostUnreachableError extends OperationError {}

/** The host's key is unknown or changed: exit 2, nothing ran. */
export class HostKeyError extends CkanReleaseError {
  constructor(message: string, hint: string) {
    super(message, 2, hint);
  }
}

/** A remote command exited non-zero. */
export class RemoteCommandError extends OperationError {
  readonly result: ExecResult;
  constructor(host: string, step: string, result: ExecResult) {
    const tail = result.stderr.trim().split('\n').slice(-8).join('\n');
    super(`${host}: ${step} failed (exit ${result.code})${tail ? `:\n${tail}` : ''}`);
    this.result = result;
  }
}

export interface Remote {
  readonly name: string;
  exec(command: string, opts?: ExecOptions): Promise<ExecResult>;
  /** exec, and fail with RemoteCommandError naming the step on a non-zero exit. */
  run(step: string, command: string, opts?: ExecOptions): Promise<ExecResult>;
  close(): void;
}

function hostKeyProblem(
  target: HostTarget,
  verdict: HostKeyVerdict,
  offered: Buffer,
): HostKeyError | undefined {
  const fp = fingerprint(offered);
  const where = `${target.name} (${target.hostname}:${target.port})`;
  switch (verdict.status) {
    case 'known':
      return undefined;
    case 'revoked':
      return new HostKeyError(
        `${where}: host key ${keyType(offered)} ${fp} is marked @revoked in known_hosts`,
        'do not trust this host',
      );
    case 'changed':
      return new HostKeyError(
        `${where}: HOST KEY CHANGED: offered ${keyType(offered)} ${fp}, known_hosts has ${verdict.expected.map((k) => fingerprint(k.key)).join(', ')}`,
        `if the host was reinstalled, remove the old key: ssh-keygen -R '${target.keyNames[0]}'` +
          ` (known_hosts: ${target.knownHostsFiles[0]}); otherwise someone may be intercepting the connection`,
      );
    case 'unknown':
      return new HostKeyError(
        `${where}: unknown host key ${keyType(offered)} ${fp} (not in ${target.knownHostsFiles.join(', ')})`,
        `check the fingerprint with the host's admin, then trust it: ssh -p ${target.port} ${target.user}@${target.hostname} true` +
          ' (answer yes) with the same known_hosts file',
      );
  }
}

export interface ConnectOptions {
  readyTimeoutMs?: number;
}

export class SshRemote implements Remote {
  readonly name: string;
  /** Set when the connection dropped: the next command connects again (host key checked again). */
  private lost = false;
  private closed = false;
  private reconnecting: Promise<void> | undefined;
  private constructor(
    private client: Client,
    readonly target: HostTarget,
  ) {
    this.name = target.name;
    this.watch(client);
  }

  private watch(client: Client): void {
    client.on('close', () => {
      if (client === this.client) this.lost = true;
    });
  }

  /**
   * A connection that dropped mid-operation (a network cut, a killed sshd) is opened again for the
   * next command, once: what follows a failure (cleaning up, switching back, unlocking) must still
   * reach the host. The command that was running when it dropped has failed; it is never re-run.
   */
  private async ensureConnected(): Promise<void> {
    if (!this.lost || this.closed) return;
    this.reconnecting ??= (async () => {
      try {
        const fresh = await SshRemote.connect(this.target);
        this.client = fresh.client;
        this.lost = false;
        this.watch(this.client);
      } finally {
        this.reconnecting = undefined;
      }
    })();
    await this.reconnecting;
  }

  static async connect(target: HostTarget, opts: ConnectOptions = {}): Promise<SshRemote> {
    const client = new Client();
    let keyError: HostKeyError | undefined;
    const config: ConnectConfig = {
      host: target.hostname,
      port: target.port,
      username: target.user,
      readyTimeout: opts.readyTimeoutMs ?? 20_000,
      keepaliveInterval: 15_000,
      // Try the agent unless the config says to use only the named identity files.
      agent:
        !target.identitiesOnly || target.identityFiles.length === 0 ? process.env.SSH_AUTH_SOCK : undefined,
      privateKey: firstReadableKey(target.identityFiles),
      hostVerifier: (key: Buffer) => {
        const verdict = verifyHostKey(readKnownHosts(target.knownHostsFiles), target.keyNames, key);
        keyError = hostKeyProblem(target, verdict, key);
        return keyError === undefined;
      },
    };
    await new Promise<void>((resolve, reject) => {
      client.once('ready', () => resolve());
      client.once('error', (err: Error & { level?: string }) => {
        if (keyError) reject(keyError);
        else
          reject(
            new HostUnreachableError(
              `${target.name}: cannot connect to ${target.user}@${target.hostname}:${target.port}: ${err.message}` +
                (err.level === 'client-authentication' ? ' (no key was accepted)' : ''),
            ),
          );
      });
      client.connect(config);
    });
    // Later errors (a dropped connection) end the open channels, which fail their commands; without a
    // listener they would crash the process instead.
    client.on('error', () => undefined);
    // Bulk transfers and short commands both suffer from Nagle's algorithm (see FACTS.md).
    (client as unknown as { _sock?: { setNoDelay?: (v: boolean) => void } })._sock?.setNoDelay?.(true);
    return new SshRemote(client, target);
  }

  async exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    await this.ensureConnected();
    return this.execOnce(command, opts);
  }

  private execOnce(command: string, opts: ExecOptions): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      if (this.lost || this.closed)
        return reject(new HostUnreachableError(`${this.name}: the connection is closed`));
      this.client.exec(command, (err, channel) => {
        if (err)
          return reject(new HostUnreachableError(`${this.name}: cannot run a command: ${err.message}`));
        const out: Buffer[] = [];
        const errs: Buffer[] = [];
        let code: number | null = null;
        channel.on('data', (c: Buffer) => out.push(c));
        channel.stderr.on('data', (c: Buffer) => errs.push(c));
        channel.on('exit', (c: number | null, signal?: string) => {
          code = c ?? (signal ? 128 : 255);
        });
        channel.on('close', () => {
          if (code === null)
            // No exit status: the connection dropped while the command ran. It may have finished on
            // the host or not; the caller must find out (and clean up) over a new connection.
            return reject(
              new HostUnreachableError(
                `${this.name}: the connection was lost before the command finished (it may or may not have run to the end)`,
              ),
            );
          resolve({
            code,
            stdout: Buffer.concat(out).toString(),
            stderr: Buffer.concat(errs).toString(),
          });
        });
        if (opts.stdin) {
          let sent = 0;
          opts.stdin.on('data', (c: Buffer) => {
            sent += c.length;
            opts.onProgress?.(sent);
          });
          opts.stdin.on('error', (e) => {
            channel.close();
            reject(e);
          });
          opts.stdin.pipe(channel);
        } else {
          channel.end();
        }
      });
    });
  }

  async run(step: string, command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const r = await this.exec(command, opts);
    if (r.code !== 0) throw new RemoteCommandError(this.name, step, r);
    return r;
  }

  close(): void {
    this.closed = true;
    this.client.end();
  }
}

/** The first identity file ssh2 can use without a passphrase; encrypted keys are left to the agent. */
function firstReadableKey(files: string[]): Buffer | undefined {
  for (const f of files) {
    let data: Buffer;
    try {
      data = readFileSync(f);
    } catch {
      continue; // absent, as OpenSSH allows
    }
    if (!(ssh2.utils.parseKey(data) instanceof Error)) return data;
  }
  return undefined;
}
