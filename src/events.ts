// One event stream for everything a command reports while it runs (build steps, per-host deploy
// phases, upload progress, messages, the final result), and the one place that chooses how it is shown:
// a live display on a terminal, timestamped lines without one (CI), or one JSON object per line with
// --json. Commands and the deploy code only emit; the renderers in progress.ts only format.
import { CkanReleaseError } from './errors.js';
import { redactUrls } from './redact.js';
import type { EventBody, ProgressEvent } from './event-types.js';
import { JsonRenderer, PlainRenderer, TtyRenderer, type Renderer } from './progress.js';

export type { EventBody, Phase, ProgressEvent } from './event-types.js';

export interface EventsOptions {
  renderer: Renderer;
  clock?: () => number;
  /** stdout, for print(). */
  out?: (text: string) => void;
}

/** The emitter: stamps each event with its time, masks secrets, hands it to the renderer. */
export class Events {
  private secrets: string[] = [];
  private hosts: string[] = [];
  private closed = false;
  readonly clock: () => number;
  readonly renderer: Renderer;
  private readonly out: (text: string) => void;

  constructor(opts: EventsOptions) {
    this.renderer = opts.renderer;
    this.clock = opts.clock ?? Date.now;
    this.out = opts.out ?? ((t) => process.stdout.write(t));
  }

  /**
   * The command's own output on stdout (IDs, plans, `host: previous -> current`): written around the
   * live display, so that a terminal showing both keeps the text whole.
   */
  print(text: string): void {
    this.renderer.pause?.();
    this.out(text);
    this.renderer.resume?.(this.clock());
  }

  /** Values that must never appear in an event (the environment's secrets): masked as ***. */
  addSecrets(values: string[]): void {
    // Longest first, so that a secret containing another is masked whole.
    this.secrets = [...new Set([...this.secrets, ...values.filter((v) => v.length >= 3)])].sort(
      (a, b) => b.length - a.length,
    );
  }

  /** The hosts of the session, in order: the live display gives each a row from the start. */
  setHosts(hosts: string[]): void {
    this.hosts = hosts;
    this.renderer.hosts?.(hosts);
  }

  emit(body: EventBody): void {
    if (this.closed) return;
    const now = this.clock();
    const event = this.mask({ time: new Date(now).toISOString(), ...body } as ProgressEvent);
    this.renderer.render(event, now);
  }

  /** A human line, as Session.say gives them: "host: what happened" or a line about all hosts. */
  readonly say = (line: string): void => {
    const host = this.hosts.find((h) => line.startsWith(`${h}: `) || line.startsWith(`WARNING ${h}: `));
    this.emit(host ? { type: 'message', text: line, host } : { type: 'message', text: line });
  };

  /** Ends the stream: the live display leaves its last state on the screen. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.renderer.close(this.clock());
  }

  /** The text with URL credentials and the secret values masked, as in every event. */
  readonly scrub = (text: string): string => {
    let t = redactUrls(text);
    for (const s of this.secrets) t = t.split(s).join('***');
    return t;
  };

  private mask(e: ProgressEvent): ProgressEvent {
    const clean = (v: unknown): unknown => {
      if (typeof v === 'string') return this.scrub(v);
      if (Array.isArray(v)) return v.map(clean);
      if (v && typeof v === 'object')
        return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, clean(x)]));
      return v;
    };
    return clean(e) as ProgressEvent;
  }
}

export type ProgressMode = 'tty' | 'plain' | 'json';

/** The one place the mode is chosen: --json wins; else a live display when stderr is a terminal. */
export function progressMode(opts: {
  json: boolean;
  isTTY?: boolean;
  env?: NodeJS.ProcessEnv;
}): ProgressMode {
  if (opts.json) return 'json';
  if (opts.env?.CKAN_RELEASE_PROGRESS === 'plain' || opts.env?.TERM === 'dumb') return 'plain';
  return opts.isTTY ? 'tty' : 'plain';
}

export interface EventsIo {
  out: (text: string) => void;
  err: (text: string) => void;
  env?: NodeJS.ProcessEnv;
  isTTY?: boolean;
  columns?: () => number;
}

/** Events for one command run: JSON lines on stdout, or a display / plain lines on stderr. */
export function eventsFor(io: EventsIo, json: boolean): Events {
  const mode = progressMode({ json, isTTY: io.isTTY, env: io.env });
  const renderer =
    mode === 'json'
      ? new JsonRenderer(io.out)
      : mode === 'tty'
        ? new TtyRenderer(io.err, { columns: io.columns })
        : new PlainRenderer(io.err);
  return new Events({ renderer, out: io.out });
}

/**
 * Runs a command's body with its events: a failure becomes a last `result` event with ok false (the
 * error is still thrown, so cli.ts prints it and picks the exit code); the stream is closed either way.
 */
export async function withEvents<T>(ev: Events, command: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    ev.emit({
      type: 'result',
      command,
      ok: false,
      error: e instanceof Error ? e.message : String(e),
      exit_code: e instanceof CkanReleaseError ? e.exitCode : 1,
    });
    throw e;
  } finally {
    ev.close();
  }
}
