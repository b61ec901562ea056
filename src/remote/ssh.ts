// One SSH connection per host, reused for a whole operation, through its ProxyJump chain (each jump
// host's connection carries the next one as a forwarded channel, as `ssh -J` does; every hop's host key
// is checked). Keys: the ssh-agent's and the identity files, in OpenSSH's order; an encrypted key is
// unlocked with a passphrase asked on the terminal. Host keys are checked against known_hosts (an
// unknown or changed key is refused, with its fingerprint and how to trust it);
// commands run with exec and report {code, stdout, stderr}: a non-zero code is an error that names
// the host and the step; stderr output alone is not.
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import type { Duplex, Readable, Writable } from 'node:stream';
import ssh2, {
  Client,
  type AgentAuthMethod,
  type ConnectConfig,
  type ParsedKey,
  type PublicKeyAuthMethod,
} from 'ssh2';
import { CkanReleaseError, OperationError } from '../errors.js';
import {
  appendKnownHost,
  fingerprint,
  keyType,
  lookupName,
  readKnownHosts,
  verifyHostKey,
  type HostKeyVerdict,
} from './known-hosts.js';
import { terminalPrompt, type AskPassphrase } from './passphrase.js';
import { describeHop, type HostTarget } from './target.js';

type AuthMethod = AgentAuthMethod | PublicKeyAuthMethod;

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

/**
 * A long-lived exec channel (no pty): its streams stay open until the command exits. `done` resolves
 * when the channel closes: with the exit code (or signal), or code and signal null when the
 * connection was lost first.
 */
export interface Channel {
  stdin: Writable;
  stdout: Readable;
  stderr: Readable;
  done: Promise<{ code: number | null; signal: string | null }>;
  close(): void;
  /**
   * True when `stdin` is done with a written buffer once its write callback has run (ssh2's channel
   * has copied it into SSH packets by then), so the writer may fill the same buffer again. A stream
   * that may still hold the chunk (a PassThrough, a pipe's queue) leaves it unset.
   */
  copiesWrites?: boolean;
}

export interface Remote {
  readonly name: string;
  exec(command: string, opts?: ExecOptions): Promise<ExecResult>;
  /** exec, and fail with RemoteCommandError naming the step on a non-zero exit. */
  run(step: string, command: string, opts?: ExecOptions): Promise<ExecResult>;
  /** Starts `command` on a channel of its own and hands over its streams (the agent's serve sessions). */
  channel(command: string): Promise<Channel>;
  close(): void;
}

/** What an operation cost on one host: SSH exec channels opened, and how many of them ran sudo. */
export interface RemoteCounts {
  channels: number;
  sudo: number;
}

/** A command that runs sudo (as its program, or inside a shell line): counted as a sudo run. */
export function runsSudo(command: string): boolean {
  return /(^|[\s;&|('"])sudo\s/.test(command);
}

/** CKAN_RELEASE_TRACE=1: each host's counts are written to stderr when its connection closes. */
function traceCounts(name: string, c: RemoteCounts): void {
  if (process.env.CKAN_RELEASE_TRACE !== '1') return;
  process.stderr.write(`ckan-release trace: ${name}: ${c.channels} SSH channels, ${c.sudo} sudo runs\n`);
}

/** sudo -n refused because it wants a password (or a terminal): exit 2, a host setup problem. */
export class SudoPasswordError extends CkanReleaseError {
  readonly result: ExecResult;
  constructor(host: string, step: string, result: ExecResult) {
    const what = /sudo: a terminal is required/.test(result.stderr)
      ? 'sudo wants a terminal (to ask for a password)'
      : 'sudo wants a password ("sudo: a password is required")';
    super(
      `${host}: ${step}: ${what}; ckan-release runs privileged steps with \`sudo -n\`, which never asks`,
      2,
      'allow the SSH user passwordless sudo on the host (a NOPASSWD rule in /etc/sudoers.d/), ' +
        'or set become: false in ckan-release.yml if the SSH user may do these steps itself',
    );
    this.result = result;
  }
}

/** The error for a command that exited non-zero: a sudo that wants a password says so. */
export function commandError(host: string, step: string, result: ExecResult): CkanReleaseError {
  if (/^sudo: (a password is required|a terminal is required)/m.test(result.stderr))
    return new SudoPasswordError(host, step, result);
  return new RemoteCommandError(host, step, result);
}

/** An encrypted key was needed and no passphrase could be asked for: exit 2, nothing ran. */
export class EncryptedKeyError extends CkanReleaseError {
  constructor(message: string, hint: string) {
    super(message, 2, hint);
  }
}

function hostKeyProblem(
  target: HostTarget,
  hop: HostTarget,
  verdict: HostKeyVerdict,
  offered: Buffer,
): HostKeyError | undefined {
  const fp = fingerprint(offered);
  const where = hopLabel(target, hop);
  const file = hop.knownHostsFiles[0];
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
        `if the host was reinstalled, remove the old key: ssh-keygen -R '${hop.keyNames[0]}'` +
          ` (known_hosts: ${file}); otherwise someone may be intercepting the connection.` +
          ' --accept-new-host-key never accepts a changed key',
      );
    case 'unknown':
      return new HostKeyError(
        `${where}: unknown host key ${keyType(offered)} ${fp} (not in ${hop.knownHostsFiles.join(', ')})`,
        `check the fingerprint with the host's admin, then either run again with --accept-new-host-key` +
          ` (trusts it on first use and adds it to ${file}), or add it yourself:` +
          ` ssh-keyscan -p ${hop.port} ${hop.hostname} >> ${file}` +
          ((hop === target ? target.jumps.length > 0 : target.jumps.indexOf(hop) > 0)
            ? ' (on the jump host before it: this host is reachable only from there)'
            : '') +
          (hop.keyNames[0] !== lookupName(hop.hostname, hop.port)
            ? `, then write its name as ${hop.keyNames[0]} (HostKeyAlias)`
            : ''),
      );
  }
}

/** "web1 (deploy@10.0.0.5:22 via bastion)" or "web1: jump host bastion (ops@bastion.example.org:22)". */
function hopLabel(target: HostTarget, hop: HostTarget): string {
  if (hop === target)
    return `${target.name} (${describeHop(target)}${target.jumps.length ? ` via ${target.jumps.map((j) => j.name).join(', ')}` : ''})`;
  return `${target.name}: jump host ${hop.name} (${describeHop(hop)})`;
}

export interface ConnectOptions {
  readyTimeoutMs?: number;
  /** Trust an unknown host key on first use and write it to known_hosts (a changed key: never). */
  acceptNewHostKey?: boolean;
  /** How to ask for a key's passphrase; default: on the terminal, none without one. */
  askPassphrase?: AskPassphrase;
}

/** One identity file (IdentityFile, or OpenSSH's default ~/.ssh/id_*). */
interface Identity {
  file: string;
  /** Its public key blob: from the key, its .pub, or the clear part of an encrypted OpenSSH key. */
  pub: Buffer | undefined;
  /** The private key, when the file holds one ssh2 can use without a passphrase. */
  key: ParsedKey | undefined;
  /** The file holds a key encrypted with a passphrase. */
  encrypted: Buffer | undefined;
}

function firstKey(k: ParsedKey | ParsedKey[] | Error): ParsedKey | Error {
  return Array.isArray(k) ? (k[0] ?? new Error('no key')) : k;
}

/** The public key blob stored in clear in an OpenSSH-format private key, even an encrypted one. */
export function opensshPublicBlob(pem: Buffer): Buffer | undefined {
  const m = /-----BEGIN OPENSSH PRIVATE KEY-----([\s\S]+?)-----END OPENSSH PRIVATE KEY-----/.exec(
    pem.toString('latin1'),
  );
  if (!m) return undefined;
  const buf = Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
  const magic = 'openssh-key-v1\0';
  if (buf.toString('latin1', 0, magic.length) !== magic) return undefined;
  let at = magic.length;
  const str = (): Buffer => {
    const len = buf.readUInt32BE(at);
    const out = buf.subarray(at + 4, at + 4 + len);
    at += 4 + len;
    return out;
  };
  try {
    str(); // cipher
    str(); // kdf
    str(); // kdf options
    const n = buf.readUInt32BE(at);
    at += 4;
    return n >= 1 ? Buffer.from(str()) : undefined;
  } catch {
    return undefined;
  }
}

function loadIdentity(file: string): Identity | undefined {
  let pubFile: Buffer | undefined;
  try {
    const k = firstKey(ssh2.utils.parseKey(readFileSync(`${file}.pub`)));
    if (!(k instanceof Error)) pubFile = k.getPublicSSH();
  } catch {
    // no .pub beside it
  }
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch {
    // Unreadable or absent: its .pub still selects the agent's copy of the key, as in OpenSSH.
    return pubFile ? { file, pub: pubFile, key: undefined, encrypted: undefined } : undefined;
  }
  const parsed = firstKey(ssh2.utils.parseKey(data));
  if (!(parsed instanceof Error) && parsed.isPrivateKey())
    return { file, pub: parsed.getPublicSSH(), key: parsed, encrypted: undefined };
  if (parsed instanceof Error && /encrypted/i.test(parsed.message))
    return { file, pub: pubFile ?? opensshPublicBlob(data), key: undefined, encrypted: data };
  return pubFile ? { file, pub: pubFile, key: undefined, encrypted: undefined } : undefined;
}

/** Keys decrypted in this process, by file: one prompt per key, however many hosts use it. */
const decrypted = new Map<string, Promise<ParsedKey>>();

async function decryptKey(id: Identity, ask: AskPassphrase): Promise<ParsedKey> {
  let p = decrypted.get(id.file);
  if (!p) {
    p = (async () => {
      for (let attempt = 1; attempt <= 3; attempt++) {
        const passphrase = await ask(
          attempt === 1
            ? `Enter passphrase for key '${id.file}': `
            : `Bad passphrase, try again for key '${id.file}': `,
        );
        const k = firstKey(ssh2.utils.parseKey(id.encrypted!, passphrase));
        if (!(k instanceof Error)) return k;
      }
      throw new EncryptedKeyError(
        `${id.file}: wrong passphrase (3 tries)`,
        `check it with: ssh-keygen -y -f ${id.file}`,
      );
    })();
    decrypted.set(id.file, p);
    p.catch(() => decrypted.delete(id.file));
  }
  return p;
}

/** The agent, narrowed to some of its keys in a chosen order (ssh2 tries them in that order). */
class ChosenKeysAgent extends ssh2.BaseAgent<ParsedKey> {
  constructor(
    private readonly inner: InstanceType<typeof ssh2.OpenSSHAgent>,
    private readonly keys: ParsedKey[],
  ) {
    super();
  }
  getIdentities(cb: (err: Error | undefined, keys?: ParsedKey[]) => void): void {
    cb(undefined, this.keys);
  }
  sign(pubKey: ParsedKey, data: Buffer, options: unknown, cb?: unknown): void {
    (this.inner.sign as (...a: unknown[]) => void)(pubKey, data, options, cb);
  }
}

function agentKeys(agent: InstanceType<typeof ssh2.OpenSSHAgent>): Promise<ParsedKey[]> {
  return new Promise((resolve) => {
    agent.getIdentities((err, keys) => resolve(err ? [] : ((keys ?? []) as ParsedKey[])));
  });
}

interface AuthPlan {
  methods: AuthMethod[];
  /** Encrypted identity files not offered (no passphrase yet, not in the agent). */
  locked: Identity[];
}

/**
 * OpenSSH's order: identity files the agent holds (through the agent), then the agent's other keys
 * (unless IdentitiesOnly), then identity files from disk. Encrypted files wait for a passphrase.
 */
async function authPlan(hop: HostTarget, unlocked: Map<string, ParsedKey>): Promise<AuthPlan> {
  const ids = hop.identityFiles.map(loadIdentity).filter((x): x is Identity => !!x);
  const methods: AuthMethod[] = [];
  const viaAgent = new Set<Identity>();
  if (hop.identityAgent) {
    const agent = new ssh2.OpenSSHAgent(hop.identityAgent);
    const held = await agentKeys(agent);
    const chosen: ParsedKey[] = [];
    for (const id of ids) {
      const k = id.pub && held.find((h) => h.getPublicSSH().equals(id.pub!));
      if (k) {
        chosen.push(k);
        viaAgent.add(id);
      }
    }
    if (!hop.identitiesOnly || !hop.identitiesConfigured)
      chosen.push(...held.filter((k) => !chosen.includes(k)));
    if (chosen.length)
      methods.push({ type: 'agent', username: hop.user, agent: new ChosenKeysAgent(agent, chosen) });
  }
  const locked: Identity[] = [];
  for (const id of ids) {
    if (viaAgent.has(id)) continue;
    const key = id.key ?? unlocked.get(id.file);
    if (key) methods.push({ type: 'publickey', username: hop.user, key });
    else if (id.encrypted) locked.push(id);
  }
  return { methods, locked };
}

type MakeSock = () => Promise<Duplex | undefined>;

/** Host keys trusted on first use by this process, so parallel connections write each only once. */
function trustOnFirstUse(hop: HostTarget, key: Buffer): void {
  // Another connection of this run may have written it meanwhile.
  if (verifyHostKey(readKnownHosts(hop.knownHostsFiles), hop.keyNames, key).status === 'known') return;
  appendKnownHost(hop.knownHostsFiles[0]!, hop.keyNames[0]!, key, hop.hashKnownHosts);
}

/** One SSH connection to one hop (over `sock` when it is reached through a jump host). */
async function connectHop(
  target: HostTarget,
  hop: HostTarget,
  makeSock: MakeSock,
  opts: ConnectOptions,
): Promise<Client> {
  const unlocked = new Map<string, ParsedKey>();
  for (;;) {
    const plan = await authPlan(hop, unlocked);
    const client = new Client();
    let keyError: HostKeyError | undefined;
    let accepted: Buffer | undefined;
    const via = await makeSock();
    const config: ConnectConfig = {
      host: hop.hostname,
      port: hop.port,
      // A direct hop's TCP socket is ours, so that Nagle's algorithm is off from the first packet:
      // with it on, the handshake's small packets waited on delayed ACKs (85 ms of a 130 ms
      // handshake on a sandbox host; README "Fixed cost per host"). Made here, where ssh2 takes it
      // in the same tick (its error listener is on before any error can come).
      sock: (via ?? connect({ host: hop.hostname, port: hop.port, noDelay: true })) as ConnectConfig['sock'],
      username: hop.user,
      readyTimeout: opts.readyTimeoutMs ?? 20_000,
      keepaliveInterval: 15_000,
      authHandler: plan.methods,
      hostVerifier: (key: Buffer) => {
        const verdict = verifyHostKey(readKnownHosts(hop.knownHostsFiles), hop.keyNames, key);
        if (
          verdict.status === 'unknown' &&
          (opts.acceptNewHostKey ||
            hop.strictHostKeyChecking === 'accept-new' ||
            hop.strictHostKeyChecking === 'no')
        ) {
          accepted = key;
          return true;
        }
        keyError = hostKeyProblem(target, hop, verdict, key);
        return keyError === undefined;
      },
    };
    const failure = await new Promise<(Error & { level?: string }) | undefined>((resolve) => {
      client.once('ready', () => resolve(undefined));
      client.once('error', (err: Error & { level?: string }) => resolve(err));
      client.connect(config);
    });
    if (!failure) {
      if (accepted) trustOnFirstUse(hop, accepted);
      // Later errors (a dropped connection) end the open channels, which fail their commands; without
      // a listener they would crash the process instead.
      client.on('error', () => undefined);
      return client;
    }
    client.end();
    if (keyError) throw keyError;
    const authFailed = failure.level === 'client-authentication';
    if (authFailed && plan.locked.length) {
      const ask = opts.askPassphrase ?? terminalPrompt();
      if (!ask) {
        const files = plan.locked.map((id) => id.file).join(', ');
        throw new EncryptedKeyError(
          `${hopLabel(target, hop)}: no key was accepted; ${files} ${plan.locked.length > 1 ? 'are' : 'is'} encrypted` +
            ' and there is no terminal to ask for the passphrase',
          `add the key to your ssh-agent first: eval "$(ssh-agent -s)"; ssh-add ${plan.locked[0]!.file}` +
            ' (then run again from the same shell, so that SSH_AUTH_SOCK is set)',
        );
      }
      for (const id of plan.locked) unlocked.set(id.file, await decryptKey(id, ask));
      continue; // again, with the decrypted keys
    }
    throw new HostUnreachableError(
      `${hopLabel(target, hop)}: cannot connect: ${failure.message}` +
        (authFailed
          ? ` (no key was accepted; tried ${plan.methods.length ? plan.methods.map((m) => (m.type === 'agent' ? 'the ssh-agent' : 'a key file')).join(', ') : 'nothing: no agent, no readable identity file'})`
          : ''),
    );
  }
}

/** A channel from `client` to host:port (the jump host connects; ProxyJump's -W). */
function forwardOut(client: Client, host: string, port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    client.forwardOut('127.0.0.1', 0, host, port, (err, channel) => (err ? reject(err) : resolve(channel)));
  });
}

export class SshRemote implements Remote {
  readonly name: string;
  /** Set when the connection dropped: the next command connects again (host key checked again). */
  private lost = false;
  private closed = false;
  private reconnecting: Promise<void> | undefined;
  /** Exec channels opened on this host (over every reconnection), and how many ran sudo. */
  readonly counts: RemoteCounts = { channels: 0, sudo: 0 };
  private constructor(
    private client: Client,
    readonly target: HostTarget,
    /** The jump host connections, first hop first: closed after the target's. */
    private readonly jumpClients: Client[],
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
    const hops = [...target.jumps, target];
    const clients: Client[] = [];
    try {
      for (let i = 0; i < hops.length; i++) {
        const hop = hops[i]!;
        const via = clients[i - 1];
        const prev = hops[i - 1];
        const makeSock: MakeSock = async () => {
          if (!via || !prev) return undefined;
          try {
            return await forwardOut(via, hop.hostname, hop.port);
          } catch (e) {
            throw new HostUnreachableError(
              `${hopLabel(target, prev)}: cannot open a connection from there to ${hop === target ? target.name : `jump host ${hop.name}`} at ${hop.hostname}:${hop.port}: ${(e as Error).message}`,
            );
          }
        };
        clients.push(await connectHop(target, hop, makeSock, opts));
      }
    } catch (e) {
      for (const c of clients.reverse()) c.end();
      throw e;
    }
    return new SshRemote(clients.pop()!, target, clients);
  }

  async exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    await this.ensureConnected();
    return this.execOnce(command, opts);
  }

  private count(command: string): void {
    this.counts.channels++;
    if (runsSudo(command)) this.counts.sudo++;
  }

  async channel(command: string): Promise<Channel> {
    await this.ensureConnected();
    return new Promise((resolve, reject) => {
      if (this.lost || this.closed)
        return reject(new HostUnreachableError(`${this.name}: the connection is closed`));
      this.client.exec(command, (err, ch) => {
        if (err)
          return reject(new HostUnreachableError(`${this.name}: cannot run a command: ${err.message}`));
        this.count(command);
        let code: number | null = null;
        let signal: string | null = null;
        ch.on('exit', (c: number | null, s?: string) => {
          code = c ?? null;
          signal = s ?? null;
        });
        const done = new Promise<{ code: number | null; signal: string | null }>((res) =>
          ch.on('close', () => res({ code, signal })),
        );
        // Errors (a write after the connection dropped) show as `done` without an exit status.
        ch.on('error', () => undefined);
        resolve({
          stdin: ch,
          stdout: ch,
          stderr: ch.stderr,
          done,
          close: () => ch.close(),
          copiesWrites: true,
        });
      });
    });
  }

  private execOnce(command: string, opts: ExecOptions): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      if (this.lost || this.closed)
        return reject(new HostUnreachableError(`${this.name}: the connection is closed`));
      this.client.exec(command, (err, channel) => {
        if (err)
          return reject(new HostUnreachableError(`${this.name}: cannot run a command: ${err.message}`));
        this.count(command);
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
    if (r.code !== 0) throw commandError(this.name, step, r);
    return r;
  }

  close(): void {
    if (!this.closed) traceCounts(this.name, this.counts);
    this.closed = true;
    this.client.end();
    for (const c of [...this.jumpClients].reverse()) c.end();
  }
}
