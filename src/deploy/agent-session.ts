// One agent session per host and operation (README "How a host is driven"): the first agent call opens
// one exec channel that runs one privileged agent process (`agent.py serve`, one sudo); every later call
// is one request on it, one at a time. The data a command reads (an archive, a config file) follows its
// request on the same channel, framed. When the channel dies, the request in flight fails (it may or
// may not have run to its end on the host: never re-sent) and the next call opens a new session, over
// a new connection if the old one dropped.
import type { Readable } from 'node:stream';
import { commandError, HostUnreachableError, type Channel, type Remote } from '../remote/ssh.js';
import { FileReader } from './file-frames.js';
import {
  FRAME_ABORT,
  FRAME_END,
  frameHeader,
  type AgentCommand,
  type AgentHello,
  type AgentReply,
} from './protocol.js';

/** How to start a session's agent, and its text for a host that lacks it (protocol.ts AgentHello). */
export interface SessionLaunch {
  /** The channel's command line: the installed agent's `serve`, else the bootstrap. */
  command: (install: boolean) => string;
  /** What the bootstrap reads after asking (need_agent): the agent's text, the stub, where they go. */
  payload: () => Buffer;
}

/**
 * A request's data read from a file (the release archive): sent in frames read once for every
 * session sending that file at the same time (file-frames.ts), their buffers read into again once
 * every channel has taken them, instead of a new buffer for every frame of every host.
 */
export interface DataFile {
  file: string;
}

/** What a request's data is: a stream, or a file read by the session itself. */
export type RequestData = Readable | DataFile;

function isDataFile(d: RequestData): d is DataFile {
  return typeof (d as DataFile).file === 'string';
}

interface Pending {
  resolve: (r: AgentReply) => void;
  reject: (e: Error) => void;
  step: string;
}

/** The error for a request cut off by the end of its session's channel. */
function lostError(
  host: string,
  step: string,
  exit: { code: number | null; signal: string | null },
  stderr: string,
) {
  if (exit.code === null && exit.signal === null)
    return new HostUnreachableError(
      `${host}: ${step}: the connection was lost before the command finished (it may or may not have run to the end)`,
    );
  // The agent (or sudo before it) exited: sudo's "a password is required" says so (SudoPasswordError).
  return commandError(host, step, { code: exit.code ?? 128, stdout: '', stderr });
}

/** Waits for the channel's input to drain: false when the channel closed first. */
async function drainedOrClosed(ch: Channel, closed: Promise<'closed'>): Promise<boolean> {
  const drained = new Promise<'drain'>((res) => ch.stdin.once('drain', () => res('drain')));
  return (await Promise.race([drained, closed])) === 'drain';
}

export class AgentSession {
  private channel: Channel | undefined;
  private opening: Promise<Channel> | undefined;
  private installed = false;
  private ended = false;
  private nextId = 1;
  private pending: Pending | undefined;
  private pendingId = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private stderrTail = '';
  private exit: { code: number | null; signal: string | null } | undefined;
  /** The interpreter the agent runs with (sys.executable), once the session has started. */
  executable: string | undefined;

  constructor(
    private readonly remote: Remote,
    private readonly launch: SessionLaunch,
    /** May the session write the agent to the host (installAgent was called)? */
    private mayInstall: boolean,
    private readonly onEnd: (s: AgentSession) => void,
  ) {}

  /** True once the channel has died or was closed: the next call needs a new session. */
  get dead(): boolean {
    return this.ended;
  }

  /** From now on the agent may be written to the host: at the opening, or by the running session. */
  allowInstall(): Promise<void> {
    this.mayInstall = true;
    if (!this.channel && !this.opening) return Promise.resolve();
    return this.enqueue(async () => {
      if (this.installed) return;
      const r = await this.send('install the host agent', 'install-agent', {}, undefined, undefined);
      if (r.status !== 'done') throw new Error(`${this.remote.name}: install the host agent: ${r.message}`);
      this.installed = true;
    });
  }

  /** One request, after the ones before it have been answered. */
  request(
    step: string,
    command: AgentCommand,
    args: Record<string, unknown>,
    stdin?: RequestData,
    onProgress?: (bytes: number) => void,
  ): Promise<AgentReply> {
    return this.enqueue(() => this.send(step, command, args, stdin, onProgress));
  }

  /** Ends the session: the agent reads the end of its input and exits (after the request in flight). */
  close(): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(this);
    this.channel?.stdin.end();
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private open(step: string): Promise<Channel> {
    this.opening ??= (async () => {
      const install = this.mayInstall;
      const ch = await this.remote.channel(this.launch.command(install));
      this.channel = ch;
      ch.stderr.on('data', (c: Buffer) => {
        this.stderrTail = (this.stderrTail + c.toString()).slice(-16_384);
      });
      let hello: ((h: AgentHello) => void) | undefined;
      let helloFailed: ((e: Error) => void) | undefined;
      let buf = '';
      ch.stdout.on('data', (c: Buffer) => {
        buf += c.toString();
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          let msg: Record<string, unknown>;
          try {
            msg = JSON.parse(line) as Record<string, unknown>;
          } catch {
            this.stderrTail += `\n(agent output that is not JSON: ${line.slice(0, 200)})`;
            continue;
          }
          if ('ready' in msg || 'need_agent' in msg) hello?.(msg as AgentHello);
          else if (this.pending && msg.id === this.pendingId) {
            const p = this.pending;
            this.pending = undefined;
            p.resolve(msg as unknown as AgentReply);
          }
        }
      });
      void ch.done.then((exit) => {
        this.exit = exit;
        if (!this.ended) {
          this.ended = true;
          this.onEnd(this);
        }
        const e = lostError(this.remote.name, this.pending?.step ?? step, exit, this.stderrTail);
        helloFailed?.(e);
        if (this.pending) {
          const p = this.pending;
          this.pending = undefined;
          p.reject(lostError(this.remote.name, p.step, exit, this.stderrTail));
        }
      });
      const waitHello = () =>
        new Promise<AgentHello>((resolve, reject) => {
          hello = resolve;
          helloFailed = reject;
          if (this.exit) reject(lostError(this.remote.name, step, this.exit, this.stderrTail));
        });
      let h = await waitHello();
      if ('need_agent' in h) {
        const text = this.launch.payload();
        ch.stdin.write(frameHeader(text.length));
        ch.stdin.write(text);
        h = await waitHello();
      }
      if ('ready' in h) this.executable = h.executable;
      this.installed = install;
      return ch;
    })();
    // A session that could not start is over: the next call starts another (a new connection, if
    // this one dropped).
    this.opening.catch(() => {
      if (!this.ended) {
        this.ended = true;
        this.onEnd(this);
      }
      this.channel?.close();
    });
    return this.opening;
  }

  private async send(
    step: string,
    command: AgentCommand,
    args: Record<string, unknown>,
    stdin: RequestData | undefined,
    onProgress: ((bytes: number) => void) | undefined,
  ): Promise<AgentReply> {
    const discard = () => {
      if (stdin && !isDataFile(stdin)) stdin.destroy();
    };
    if (this.ended) {
      discard();
      throw new HostUnreachableError(`${this.remote.name}: ${step}: the agent session has ended`);
    }
    let ch: Channel;
    try {
      ch = await this.open(step);
    } catch (e) {
      discard();
      throw e;
    }
    if (this.exit) {
      discard();
      throw lostError(this.remote.name, step, this.exit, this.stderrTail);
    }
    const id = this.nextId++;
    let answered = false;
    const reply = new Promise<AgentReply>((resolve, reject) => {
      this.pendingId = id;
      this.pending = {
        resolve: (r) => {
          answered = true;
          resolve(r);
        },
        reject: (e) => {
          answered = true;
          reject(e);
        },
        step,
      };
    });
    // The answer can fail (the channel died) while its data is still being sent, before anything
    // awaits it: that failure is handled, by the await below, not an unhandled rejection.
    reply.catch(() => undefined);
    ch.stdin.write(JSON.stringify({ id, command, args, stdin: !!stdin }) + '\n');
    if (!stdin) return reply;
    const sendError = isDataFile(stdin)
      ? await this.sendFile(ch, stdin.file, () => answered, onProgress)
      : await this.sendData(ch, stdin, () => answered, onProgress);
    const r = await reply;
    // The data could not be read here: that is the failure, whatever the agent made of its end.
    if (sendError) throw sendError;
    return r;
  }

  /**
   * Ends a command's data on a live channel: the end frame, or after a read error the abort frame
   * (the agent then fails the command). Returns that read error, if any.
   */
  private endFrames(ch: Channel, failure?: { error: unknown }): Error | undefined {
    if (!this.exit) ch.stdin.write(failure ? FRAME_ABORT : FRAME_END);
    if (!failure) return undefined;
    return failure.error instanceof Error ? failure.error : new Error(String(failure.error));
  }

  /** Streams `data` as frames until it ends or the answer came first; returns a read error, if any. */
  private async sendData(
    ch: Channel,
    data: Readable,
    answered: () => boolean,
    onProgress: ((bytes: number) => void) | undefined,
  ): Promise<Error | undefined> {
    let sent = 0;
    const closed = ch.done.then(() => 'closed' as const);
    try {
      for await (const chunk of data as AsyncIterable<Buffer | string>) {
        if (answered() || this.exit) break;
        const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        if (buf.length === 0) continue;
        ch.stdin.write(frameHeader(buf.length));
        const more = ch.stdin.write(buf);
        sent += buf.length;
        onProgress?.(sent);
        if (!more && !(await drainedOrClosed(ch, closed))) break;
      }
    } catch (e) {
      return this.endFrames(ch, { error: e });
    } finally {
      data.destroy();
    }
    return this.endFrames(ch);
  }

  /**
   * Sends a file as frames, like sendData, each frame one write (its header in the room before its
   * data). The frames come from a FileReader, read once for every session sending the same file at
   * the same time (a fleet ship); at most two are in flight, and a frame's buffer is let go only
   * once the channel has taken it (ssh2 may keep a written chunk until the SSH window opens).
   */
  private async sendFile(
    ch: Channel,
    file: string,
    answered: () => boolean,
    onProgress: ((bytes: number) => void) | undefined,
  ): Promise<Error | undefined> {
    let sent = 0;
    const closed = ch.done.then(() => 'closed' as const);
    const taken: Promise<unknown>[] = [];
    let reader: FileReader | undefined;
    try {
      reader = await FileReader.open(file);
      for (let i = 0; ; i++) {
        // Frame i is asked for only once the channel has taken frame i - 2.
        const before = taken[i - 2];
        if (before && (await Promise.race([before, closed])) === 'closed') break;
        if (answered() || this.exit) break;
        const { data, release } = await reader.frame(i);
        if (!data || answered() || this.exit) {
          release(true); // not written
          break;
        }
        taken[i] = new Promise<void>((res) =>
          ch.stdin.write(data.frame, () => {
            release(!!ch.copiesWrites);
            res();
          }),
        );
        delete taken[i - 2];
        sent += data.bytes;
        onProgress?.(sent);
      }
    } catch (e) {
      return this.endFrames(ch, { error: e });
    } finally {
      reader?.close();
    }
    return this.endFrames(ch);
  }
}
