// A `Remote` (src/remote/ssh.ts) that runs its commands on this machine, for tests that drive the
// executor in-process against the real host agent, without Docker or SSH, with faults injected where
// SSH would fail:
//   - `before`: the connection drops as the command is asked for; it never runs.
//   - `after`: the command runs to its end on the "host"; its answer is lost with the connection.
//   - `kill`: the command is killed (SIGKILL, its whole process group) mid-way: once `afterBytes` of
//     its standard input were delivered, else as soon as it started (the host rebooted, the agent was
//     OOM-killed).
//   - `drop`: the connection drops once `afterBytes` of the command's standard input were sent: the
//     command sees its input end there, as a remote process does when sshd closes the channel, and
//     runs on by itself; its answer is lost.
// A fault is one-shot. After a dropped connection the next command runs again (SshRemote reconnects
// once per drop), unless the fault says `down`: then the host stays unreachable.
// Commands run with `sh -c`, as sshd runs them. Several "hosts" can share config.root (the same path
// on every host, as the tool requires) by running each host's commands in a mount namespace of their
// own where the host's directory is bind-mounted on the root (`namespace`): see `namespaceSupport`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import {
  commandError,
  HostUnreachableError,
  type ExecOptions,
  type ExecResult,
  type Remote,
} from '../../src/remote/ssh.js';

/** The long-lived exec channel agreed for `Remote.channel` (the session helper's src/remote/ssh.ts). */
export interface LocalChannel {
  stdin: Writable;
  stdout: Readable;
  stderr: Readable;
  done: Promise<{ code: number | null; signal: string | null }>;
  close(): void;
}

export interface Fault {
  /**
   * The command (exec) or request (what is written to a channel) it applies to: the nth that matches
   * (a function also gets the index of the command on this remote, from 0).
   */
  match: RegExp | string | ((text: string, index: number) => boolean);
  nth?: number;
  when: 'before' | 'after' | 'kill' | 'drop';
  /** kill, drop: once this many bytes of its standard input were delivered (default: at once). */
  afterBytes?: number;
  /** The host stays unreachable after this fault (default: the next command reconnects). */
  down?: boolean;
}

export interface LoggedCommand {
  command: string;
  /** ok: ran and answered; the others: how the fault cut it. */
  outcome: 'ok' | 'before' | 'after' | 'kill' | 'dropped' | 'unreachable';
  code: number | null;
}

export interface LocalRemoteOptions {
  /** Run every command in its own mount namespace with `hostDir` bind-mounted on `root`. */
  namespace?: { root: string; hostDir: string };
  faults?: Fault[];
}

/** A step of the host agent, whether run one-shot (`agent.py NAME '{...}'`) or asked in a serve session. */
export function agentStep(name: string): RegExp {
  return new RegExp(`(\\.py ${name} '|"command": ?"${name}")`);
}

const matches = (m: Fault['match'], text: string, index: number) =>
  typeof m === 'string' ? text.includes(m) : typeof m === 'function' ? m(text, index) : m.test(text);

/**
 * How this machine gives each local host its own view of the root (as root: a mount namespace; else a
 * user namespace that maps the user to root), and `problem`: '' when it can, else why not and what to
 * do. Probed once per process.
 */
let support: { argv: string[]; problem: string } | undefined;

export function namespaceSupport(): { argv: string[]; problem: string } {
  support ??= probeNamespaces();
  return support;
}

function probeNamespaces(): { argv: string[]; problem: string } {
  const asRoot = process.getuid?.() === 0;
  const argv = asRoot
    ? ['unshare', '--mount', '--propagation', 'private']
    : ['unshare', '--user', '--map-root-user', '--mount', '--propagation', 'private'];
  const r = spawnSync(
    argv[0]!,
    [...argv.slice(1), 'sh', '-c', 'mount -t tmpfs none /mnt 2>/dev/null || mount --bind / /mnt'],
    {
      encoding: 'utf8',
    },
  );
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr || '').trim() || `exit ${r.status}`;
    return {
      argv,
      problem:
        `tests that run several local hosts on one root need a mount namespace per host (${argv.join(' ')}), ` +
        `and this machine refused it: ${why}. Run them as root, or allow unprivileged user namespaces ` +
        '(Debian/Ubuntu: sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04+: ' +
        'sysctl kernel.apparmor_restrict_unprivileged_userns=0), and install util-linux (unshare)',
    };
  }
  return { argv, problem: '' };
}

export class LocalRemote implements Remote {
  readonly log: LoggedCommand[] = [];
  /** Exec channels opened (as SshRemote counts them), and how many ran sudo. */
  readonly counts = { channels: 0, sudo: 0 };
  private readonly faults: (Fault & { seen: number })[];
  /** Commands and channel writes seen so far (what a function match gets as its index), in order. */
  readonly seen: string[] = [];
  /** The index (in `seen`) of each fault that fired, and its outcome. */
  readonly fired: { index: number; when: Fault['when'] }[] = [];
  private get asked(): number {
    return this.seen.length;
  }
  private down = false;
  private closed = false;
  private readonly running = new Set<ChildProcess>();
  private readonly nsArgv: string[];

  constructor(
    readonly name: string,
    private readonly opts: LocalRemoteOptions = {},
  ) {
    this.faults = (opts.faults ?? []).map((f) => ({ ...f, seen: 0 }));
    this.nsArgv = opts.namespace ? namespaceSupport().argv : [];
  }

  /** Adds a fault for the commands to come. */
  fault(f: Fault): void {
    this.faults.push({ ...f, seen: 0 });
  }

  /** The one-shot fault this command triggers, if any (counted, then removed once it fires). */
  private faultFor(text: string): Fault | undefined {
    const index = this.asked;
    this.seen.push(text);
    for (const f of this.faults) {
      if (!matches(f.match, text, index)) continue;
      f.seen++;
      if (f.seen >= (f.nth ?? 1)) {
        this.faults.splice(this.faults.indexOf(f), 1);
        this.fired.push({ index, when: f.when });
        return f;
      }
    }
    return undefined;
  }

  private argv(command: string): [string, string[]] {
    const ns = this.opts.namespace;
    if (!ns) return ['sh', ['-c', command]];
    const inner = 'mount --bind "$1" "$2" && shift 2 && exec sh -c "$1"';
    return [
      this.nsArgv[0]!,
      [...this.nsArgv.slice(1), 'sh', '-c', inner, 'sh', ns.hostDir, ns.root, command],
    ];
  }

  private spawn(command: string): ChildProcess {
    this.counts.channels++;
    if (/(^|[\s;&|('"])sudo\s/.test(command)) this.counts.sudo++;
    const [file, args] = this.argv(command);
    // A process group of its own, so that a kill takes the command's children too.
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    this.running.add(child);
    child.on('close', () => this.running.delete(child));
    child.stdin!.on('error', () => undefined); // the command may exit before reading all its input
    return child;
  }

  private unreachable(command: string): HostUnreachableError {
    this.log.push({ command, outcome: 'unreachable', code: null });
    return new HostUnreachableError(`${this.name}: the connection is closed`);
  }

  private lost(command: string, outcome: LoggedCommand['outcome'], code: number | null, f?: Fault) {
    this.log.push({ command, outcome, code });
    if (f?.down) this.down = true;
    return new HostUnreachableError(
      `${this.name}: the connection was lost before the command finished (it may or may not have run to the end)`,
    );
  }

  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.closed || this.down) return Promise.reject(this.unreachable(command));
    const f = this.faultFor(command);
    if (f?.when === 'before') {
      opts.stdin?.resume();
      return Promise.reject(this.lost(command, 'before', null, f));
    }
    return new Promise((resolve, reject) => {
      const child = this.spawn(command);
      const out: Buffer[] = [];
      const errs: Buffer[] = [];
      child.stdout!.on('data', (c: Buffer) => out.push(c));
      child.stderr!.on('data', (c: Buffer) => errs.push(c));
      let cut: LoggedCommand['outcome'] | undefined;
      const kill = () => {
        cut = 'kill';
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
      };
      if (f?.when === 'kill' && !f.afterBytes) kill();
      if (f?.when === 'drop' && !opts.stdin) cut = 'dropped';
      let delivered = 0;
      if (opts.stdin) {
        const input = opts.stdin;
        input.on('data', (c: Buffer) => {
          if (cut) return;
          let chunk = c;
          const limit = f?.when === 'drop' || f?.when === 'kill' ? (f.afterBytes ?? 0) : Infinity;
          if (delivered + chunk.length >= limit) {
            chunk = chunk.subarray(0, limit - delivered);
            if (f?.when === 'kill') {
              child.stdin!.write(chunk, () => kill());
              cut = 'kill';
              return;
            }
            cut = 'dropped';
          }
          delivered += chunk.length;
          opts.onProgress?.(delivered);
          if (!child.stdin!.write(chunk)) {
            input.pause();
            child.stdin!.once('drain', () => input.resume());
          }
          // The channel is gone: the command reads to the end of what arrived, then EOF.
          if (cut === 'dropped') child.stdin!.end();
        });
        input.on('end', () => {
          // All of it went through before the limit: the fault strikes at the end of the input.
          if (f?.when === 'kill' && !cut) kill();
          if (f?.when === 'drop') cut ??= 'dropped';
          child.stdin!.end();
        });
        input.on('error', (e) => {
          kill();
          reject(e);
        });
      } else {
        child.stdin!.end();
      }
      child.on('close', (code, signal) => {
        if (cut) {
          if (cut === 'dropped') opts.stdin?.destroy();
          return reject(this.lost(command, cut, code, f));
        }
        if (f?.when === 'after') return reject(this.lost(command, 'after', code, f));
        const result = {
          code: code ?? (signal ? 128 : 255),
          stdout: Buffer.concat(out).toString(),
          stderr: Buffer.concat(errs).toString(),
        };
        this.log.push({ command, outcome: 'ok', code: result.code });
        resolve(result);
      });
    });
  }

  async run(step: string, command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const r = await this.exec(command, opts);
    if (r.code !== 0) throw commandError(this.name, step, r);
    return r;
  }

  /**
   * A long-lived channel. Faults match what is written to its stdin (a serve session's requests):
   * `before` drops the channel before the matching write reaches the command (the command is killed,
   * as sshd's hang-up ends it), `after` lets it through and drops the channel at the command's next
   * output, which is lost; `kill` kills the command at that write.
   */
  async channel(command: string): Promise<LocalChannel> {
    if (this.closed || this.down) throw this.unreachable(command);
    const child = this.spawn(command);
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let dropped = false;
    let dropAtOutput: Fault | undefined;
    const drop = (f: Fault | undefined, outcome: LoggedCommand['outcome']) => {
      if (dropped) return;
      dropped = true;
      if (f?.down) this.down = true;
      this.log.push({ command, outcome, code: null });
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      stdout.end();
      stderr.end();
    };
    stdin.on('data', (c: Buffer) => {
      if (dropped) return;
      const f = this.faultFor(c.toString('latin1'));
      if (f?.when === 'before' || f?.when === 'kill') return drop(f, f.when);
      if (f?.when === 'drop') {
        child.stdin!.write(c.subarray(0, f.afterBytes ?? 0));
        return drop(f, 'dropped');
      }
      child.stdin!.write(c);
      if (f?.when === 'after') dropAtOutput = f;
    });
    stdin.on('end', () => child.stdin!.end());
    child.stdout!.on('data', (c: Buffer) => {
      if (dropped) return;
      if (dropAtOutput) return drop(dropAtOutput, 'after');
      stdout.write(c);
    });
    child.stderr!.on('data', (c: Buffer) => !dropped && stderr.write(c));
    const done = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.on('close', (code, signal) => {
        if (dropped) return resolve({ code: null, signal: null });
        stdout.end();
        stderr.end();
        this.log.push({ command, outcome: 'ok', code });
        resolve({ code, signal: signal ?? null });
      });
    });
    return { stdin, stdout, stderr, done, close: () => drop(undefined, 'dropped') };
  }

  close(): void {
    this.closed = true;
    for (const c of this.running) {
      try {
        process.kill(-c.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}
