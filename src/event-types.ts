// The events of the event stream (events.ts emits them, progress.ts renders them): their own module,
// so that neither of the two imports the other's types back.

/** Where a host is in a deploy (ship, promote, rollback) or in setup. */
export type Phase =
  | 'connected'
  | 'preflight'
  | 'lock'
  | 'upload'
  | 'finalize'
  | 'verify'
  | 'staged'
  | 'before_switch'
  | 'server files'
  | 'switch'
  | 'restart'
  | 'health'
  | 'after_switch'
  | 'switch back'
  | 'prune'
  | 'setup';

export type EventBody =
  /** A host entered a phase; `detail` says more (a hook's command, the bytes to send). */
  | { type: 'phase'; host: string; phase: Phase; detail?: string }
  /** Bytes of the release archive sent to a host so far, of `total`. */
  | { type: 'upload'; host: string; sent: number; total: number }
  /** A build step started; `elapsed`: seconds since the build started. */
  | { type: 'step'; step: string; index: number; count: number; elapsed: number; detail?: string }
  /** The build's own output (pip and so on), only with `build --verbose`. */
  | { type: 'log'; text: string }
  /** A host finished its part: it now runs `current`. */
  | { type: 'host-done'; host: string; previous: string | null; current: string }
  /** A host failed; `error` is the message. */
  | { type: 'host-failed'; host: string; error: string }
  /** A line of human output; `host` when it is about one host. */
  | { type: 'message'; text: string; host?: string }
  /** The last event: what the command did (or, with ok false, why it failed). */
  | ({ type: 'result'; command: string; ok: boolean } & Record<string, unknown>);

export type ProgressEvent = EventBody & { time: string };
