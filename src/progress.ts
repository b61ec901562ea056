// The three renderers of the event stream (events.ts): JSON lines, plain timestamped lines, and a live
// per-host display redrawn in place with ANSI escapes. They only format; they never decide anything.
import type { ProgressEvent } from './event-types.js';

export interface Renderer {
  render(e: ProgressEvent, now: number): void;
  close(now: number): void;
  hosts?(names: string[]): void;
  /** Around a write to stdout (which may be the same terminal): take the live block away, then back. */
  pause?(): void;
  resume?(now: number): void;
}

type Write = (text: string) => void;

export function mb(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

/** Seconds as "42s" or "3m05s". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** Rate (bytes/s) and ETA (s) of an upload that began at `start` (ms). */
export function uploadRate(
  sent: number,
  total: number,
  start: number,
  now: number,
): { rate: number; eta: number | null } {
  const secs = Math.max((now - start) / 1000, 0.001);
  const rate = sent / secs;
  return { rate, eta: rate > 0 ? (total - sent) / rate : null };
}

function percent(sent: number, total: number): number {
  return total > 0 ? Math.min(100, Math.floor((sent / total) * 100)) : 100;
}

/** The build's step lines keep the format `[  12.3s] step` that scripts already read. */
function stepLine(e: Extract<ProgressEvent, { type: 'step' }>): string {
  return `[${`${e.elapsed.toFixed(1)}s`.padStart(7)}] ${e.step}${e.detail ? `: ${e.detail}` : ''}`;
}

/** --json: one event per line on stdout; upload events at most every `uploadMs` per host. */
export class JsonRenderer implements Renderer {
  private lastUpload = new Map<string, number>();
  constructor(
    private readonly write: Write,
    private readonly uploadMs = 250,
  ) {}

  render(e: ProgressEvent, now: number): void {
    if (e.type === 'upload' && e.sent < e.total) {
      const last = this.lastUpload.get(e.host);
      if (last !== undefined && now - last < this.uploadMs) return;
      this.lastUpload.set(e.host, now);
    }
    this.write(`${JSON.stringify(e)}\n`);
  }

  close(): void {}
}

/** Without a terminal (CI): "2026-11-22T02:10:00Z web1: upload 45% 3.2 MB/s", uploads throttled. */
export class PlainRenderer implements Renderer {
  private uploads = new Map<string, { start: number; shown: number; finished: boolean }>();
  constructor(
    private readonly write: Write,
    private readonly uploadMs = 2000,
  ) {}

  render(e: ProgressEvent, now: number): void {
    const t = e.time.replace(/\.\d{3}Z$/, 'Z');
    switch (e.type) {
      case 'message':
        return this.write(`${t} ${e.text}\n`);
      case 'phase':
        if (e.phase === 'upload') this.uploads.set(e.host, { start: now, shown: now, finished: false });
        return this.write(`${t} ${e.host}: ${e.phase}${e.detail ? `: ${e.detail}` : ''}\n`);
      case 'upload': {
        let u = this.uploads.get(e.host);
        if (!u) this.uploads.set(e.host, (u = { start: now, shown: now, finished: false }));
        const done = e.sent >= e.total;
        if (u.finished || (!done && now - u.shown < this.uploadMs)) return;
        u.shown = now;
        u.finished = done;
        const { rate, eta } = uploadRate(e.sent, e.total, u.start, now);
        return this.write(
          `${t} ${e.host}: upload ${percent(e.sent, e.total)}% ${mb(rate)} MB/s (${mb(e.sent)} of ${mb(e.total)} MB` +
            `${done ? `, in ${((now - u.start) / 1000).toFixed(1)} s` : eta !== null ? `, ETA ${duration(eta)}` : ''})\n`,
        );
      }
      case 'step':
        return this.write(`${stepLine(e)}\n`);
      case 'log':
        return this.write(`           | ${e.text}\n`);
      case 'host-done':
        return this.write(`${t} ${e.host}: done: runs ${e.current} (was ${e.previous ?? 'none'})\n`);
      case 'host-failed':
        return this.write(`${t} ${e.host}: FAILED: ${e.error}\n`);
      case 'result':
        return; // the command prints its result on stdout itself
    }
  }

  close(): void {}
}

interface HostRow {
  phase: string;
  detail?: string;
  sent?: number;
  total?: number;
  start?: number;
  state?: 'done' | 'failed';
  note?: string;
}

export interface TtyOptions {
  columns?: () => number;
  /** Least time between two redraws caused by upload events. */
  intervalMs?: number;
  /** Redraw on a timer too (elapsed times and rates keep moving while nothing is emitted). */
  tick?: boolean;
}

/**
 * On a terminal: messages scroll above a live block, one row per host (phase, bytes uploaded with a
 * bar, rate and ETA; done or failed) and one for the build step. The block is redrawn in place: the
 * cursor goes up over the rows drawn last time (ESC [ n A), clears to the end of the screen (ESC [ J)
 * and writes them anew. Rows are cut to the terminal's width so that none wraps.
 */
export class TtyRenderer implements Renderer {
  private rows = new Map<string, HostRow>();
  private build: { step: string; index: number; count: number; at: number } | undefined;
  private drawn = 0;
  private lastDraw = -Infinity;
  private lastNow = 0;
  private timer: NodeJS.Timeout | undefined;
  private lastDrawWall = Date.now();
  /** After the result: the block stays as it is, and nothing redraws over what follows it. */
  private finished = false;
  private readonly columns: () => number;
  private readonly intervalMs: number;

  constructor(
    private readonly write: Write,
    opts: TtyOptions = {},
  ) {
    this.columns = opts.columns ?? (() => process.stderr.columns || 80);
    this.intervalMs = opts.intervalMs ?? 100;
    if (opts.tick ?? true) {
      this.timer = setInterval(() => {
        if (this.build || [...this.rows.values()].some((r) => !r.state))
          this.draw(this.lastNow + (Date.now() - this.lastDrawWall));
      }, 500);
      this.timer.unref();
    }
  }

  hosts(names: string[]): void {
    for (const n of names) if (!this.rows.has(n)) this.rows.set(n, { phase: 'connected' });
    this.draw(this.lastNow);
  }

  render(e: ProgressEvent, now: number): void {
    this.lastNow = now;
    switch (e.type) {
      case 'message':
        return this.above(e.text, now);
      case 'log':
        return this.above(`  | ${e.text}`, now);
      case 'phase': {
        const row = this.row(e.host);
        Object.assign(row, { phase: e.phase, detail: e.detail, sent: undefined, total: undefined });
        if (e.phase === 'upload') row.start = now;
        return this.draw(now);
      }
      case 'upload': {
        const row = this.row(e.host);
        if (row.phase !== 'upload' || row.start === undefined)
          Object.assign(row, { phase: 'upload', start: now });
        row.sent = e.sent;
        row.total = e.total;
        if (e.sent < e.total && now - this.lastDraw < this.intervalMs) return;
        return this.draw(now);
      }
      case 'step':
        if (this.build) this.above(`  ${this.build.step} ${((now - this.build.at) / 1000).toFixed(1)}s`, now);
        this.build = { step: e.step, index: e.index, count: e.count, at: now };
        return this.draw(now);
      case 'host-done':
        Object.assign(this.row(e.host), { state: 'done', note: `runs ${e.current}` });
        return this.draw(now);
      case 'host-failed':
        Object.assign(this.row(e.host), { state: 'failed', note: e.error.split('\n')[0] });
        return this.draw(now);
      case 'result':
        if (this.build) {
          this.above(`  ${this.build.step} ${((now - this.build.at) / 1000).toFixed(1)}s`, now);
          this.build = undefined;
        }
        this.draw(now);
        return this.finish();
    }
  }

  close(now: number): void {
    if (!this.finished) this.draw(now);
    this.finish();
  }

  pause(): void {
    if (this.finished || !this.drawn) return;
    this.write(this.clear());
    this.drawn = 0;
  }

  resume(now: number): void {
    if (!this.finished) this.draw(now);
  }

  private finish(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.finished = true;
    this.drawn = 0;
  }

  private row(host: string): HostRow {
    let r = this.rows.get(host);
    if (!r) this.rows.set(host, (r = { phase: 'connected' }));
    return r;
  }

  /** Lines of the live block for the state at `now`. */
  lines(now: number): string[] {
    const out: string[] = [];
    if (this.build) {
      const secs = ((now - this.build.at) / 1000).toFixed(1);
      out.push(`build  [${this.build.index}/${this.build.count}] ${this.build.step}  ${secs}s`);
    }
    const width = Math.max(0, ...[...this.rows.keys()].map((h) => h.length));
    for (const [host, r] of this.rows) {
      const name = host.padEnd(width);
      if (r.state === 'done') out.push(`${name}  done    ${r.note ?? ''}`);
      else if (r.state === 'failed') out.push(`${name}  FAILED  ${r.note ?? ''}`);
      else if (r.phase === 'upload' && r.total !== undefined && r.sent !== undefined) {
        const pct = percent(r.sent, r.total);
        const bar = '#'.repeat(Math.floor(pct / 5)).padEnd(20, '.');
        const { rate, eta } = uploadRate(r.sent, r.total, r.start ?? now, now);
        out.push(
          `${name}  upload  ${String(pct).padStart(3)}% [${bar}] ${mb(r.sent)}/${mb(r.total)} MB  ${mb(rate)} MB/s` +
            `${eta !== null && r.sent < r.total ? `  ETA ${duration(eta)}` : ''}`,
        );
      } else out.push(`${name}  ${r.phase}${r.detail ? `  ${r.detail}` : ''}`);
    }
    const cols = Math.max(20, this.columns());
    return out.map((l) => (l.length >= cols ? `${l.slice(0, cols - 2)}…` : l));
  }

  private clear(): string {
    return this.drawn ? `\x1b[${this.drawn}A\r\x1b[J` : '';
  }

  private draw(now: number): void {
    if (this.finished) return;
    const lines = this.lines(now);
    this.write(this.clear() + lines.map((l) => `${l}\n`).join(''));
    this.drawn = lines.length;
    this.lastDraw = now;
    this.lastDrawWall = Date.now();
  }

  /** A permanent line above the live block. */
  private above(text: string, now: number): void {
    if (this.finished) return this.write(`${text}\n`);
    const lines = this.lines(now);
    this.write(this.clear() + `${text}\n` + lines.map((l) => `${l}\n`).join(''));
    this.drawn = lines.length;
    this.lastDraw = now;
    this.lastDrawWall = Date.now();
  }
}
