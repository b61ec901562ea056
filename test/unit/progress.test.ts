// The event stream and its three renderers: JSON lines, plain timestamped lines (throttled uploads),
// and the live display (checked on a fake terminal that applies the ANSI escapes it receives).
import { describe, expect, it } from 'vitest';
import { CkanReleaseError, UsageError } from '../../src/errors.js';
import { Events, eventsFor, progressMode, withEvents, type EventBody } from '../../src/events.js';
import { JsonRenderer, PlainRenderer, TtyRenderer, duration, type Renderer } from '../../src/progress.js';
import { screen } from '../support/terminal.js';

const T0 = Date.parse('2026-11-22T02:10:00.000Z');

/** An emitter on a fake clock; `at(ms)` moves the clock to T0 + ms. */
function fixture(renderer: Renderer) {
  let now = T0;
  const ev = new Events({ renderer, clock: () => now });
  return {
    ev,
    at(ms: number, body: EventBody) {
      now = T0 + ms;
      ev.emit(body);
    },
    setNow(ms: number) {
      now = T0 + ms;
    },
  };
}

describe('JSON renderer', () => {
  it('writes one object per line with time and type, uploads at most every 250 ms per host', () => {
    let out = '';
    const f = fixture(new JsonRenderer((t) => (out += t)));
    f.at(0, { type: 'phase', host: 'web1', phase: 'upload' });
    f.at(10, { type: 'upload', host: 'web1', sent: 1, total: 100 });
    f.at(100, { type: 'upload', host: 'web1', sent: 20, total: 100 });
    f.at(120, { type: 'upload', host: 'web2', sent: 5, total: 100 });
    f.at(300, { type: 'upload', host: 'web1', sent: 60, total: 100 });
    f.at(310, { type: 'upload', host: 'web1', sent: 100, total: 100 });
    f.at(400, { type: 'result', command: 'ship', ok: true, release: 'X' });
    const lines = out.trim().split('\n');
    const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events.map((e) => [e.type, e.host ?? null, e.sent ?? null])).toEqual([
      ['phase', 'web1', null],
      ['upload', 'web1', 1],
      ['upload', 'web2', 5],
      ['upload', 'web1', 60],
      ['upload', 'web1', 100],
      ['result', null, null],
    ]);
    expect(events[0]!.time).toBe('2026-11-22T02:10:00.000Z');
    expect(events.at(-1)).toEqual({
      time: '2026-11-22T02:10:00.400Z',
      type: 'result',
      command: 'ship',
      ok: true,
      release: 'X',
    });
  });
});

describe('plain renderer', () => {
  it('timestamps every line, to the second', () => {
    let out = '';
    const f = fixture(new PlainRenderer((t) => (out += t)));
    f.ev.setHosts(['web1']);
    f.at(1500, { type: 'phase', host: 'web1', phase: 'lock' });
    f.ev.say('web1: staged releases/X');
    f.at(2000, { type: 'host-done', host: 'web1', previous: 'A', current: 'B' });
    f.at(2000, { type: 'host-failed', host: 'web2', error: 'boom' });
    f.at(2000, { type: 'result', command: 'ship', ok: true });
    expect(out).toBe(
      '2026-11-22T02:10:01Z web1: lock\n' +
        '2026-11-22T02:10:01Z web1: staged releases/X\n' +
        '2026-11-22T02:10:02Z web1: done: runs B (was A)\n' +
        '2026-11-22T02:10:02Z web2: FAILED: boom\n',
    );
  });

  it('shows an upload at most every 2 s, with percent, rate and ETA, and its end once', () => {
    let out = '';
    const f = fixture(new PlainRenderer((t) => (out += t)));
    f.at(0, { type: 'phase', host: 'web1', phase: 'upload', detail: '10000000 bytes' });
    f.at(500, { type: 'upload', host: 'web1', sent: 1_000_000, total: 10_000_000 });
    f.at(1999, { type: 'upload', host: 'web1', sent: 3_000_000, total: 10_000_000 });
    f.at(2000, { type: 'upload', host: 'web1', sent: 4_500_000, total: 10_000_000 });
    f.at(3000, { type: 'upload', host: 'web1', sent: 7_000_000, total: 10_000_000 });
    f.at(4000, { type: 'upload', host: 'web1', sent: 10_000_000, total: 10_000_000 });
    f.at(4100, { type: 'upload', host: 'web1', sent: 10_000_000, total: 10_000_000 });
    expect(out.split('\n').filter(Boolean)).toEqual([
      '2026-11-22T02:10:00Z web1: upload: 10000000 bytes',
      '2026-11-22T02:10:02Z web1: upload 45% 2.3 MB/s (4.5 of 10.0 MB, ETA 3s)',
      '2026-11-22T02:10:04Z web1: upload 100% 2.5 MB/s (10.0 of 10.0 MB, in 4.0 s)',
    ]);
  });

  it("keeps the build's step lines as scripts read them", () => {
    let out = '';
    const f = fixture(new PlainRenderer((t) => (out += t)));
    f.at(0, { type: 'step', step: 'resolve', index: 1, count: 12, elapsed: 0 });
    f.at(0, { type: 'step', step: 'base venv', index: 3, count: 12, elapsed: 12.34, detail: 'reused x' });
    f.at(0, { type: 'log', text: 'pip says' });
    expect(out).toBe('[   0.0s] resolve\n[  12.3s] base venv: reused x\n           | pip says\n');
  });
});

describe('live terminal renderer', () => {
  function tty(columns = 100) {
    let out = '';
    const r = new TtyRenderer((t) => (out += t), { columns: () => columns, tick: false });
    return { f: fixture(r), out: () => out };
  }

  it('draws a row per host and redraws it in place', () => {
    const { f, out } = tty();
    f.ev.setHosts(['web1', 'web22']);
    expect(screen(out())).toEqual(['web1   connected', 'web22  connected']);
    f.at(0, { type: 'phase', host: 'web1', phase: 'preflight' });
    expect(out()).toContain('\x1b[2A\r\x1b[J');
    expect(screen(out())).toEqual(['web1   preflight', 'web22  connected']);
    f.at(0, { type: 'phase', host: 'web22', phase: 'upload', detail: '10000000 bytes' });
    f.at(2000, { type: 'upload', host: 'web22', sent: 4_000_000, total: 10_000_000 });
    expect(screen(out())).toEqual([
      'web1   preflight',
      'web22  upload   40% [########............] 4.0/10.0 MB  2.0 MB/s  ETA 3s',
    ]);
    f.at(2500, { type: 'host-done', host: 'web1', previous: null, current: 'B' });
    f.at(2600, { type: 'host-failed', host: 'web22', error: 'web22: did not become healthy\nmore' });
    expect(screen(out())).toEqual(['web1   done    runs B', 'web22  FAILED  web22: did not become healthy']);
  });

  it('prints messages above the live rows, which stay at the bottom', () => {
    const { f, out } = tty();
    f.ev.setHosts(['web1']);
    f.ev.say('connected to web1');
    f.at(0, { type: 'phase', host: 'web1', phase: 'lock' });
    f.ev.say('web1: took over an expired lock');
    expect(screen(out())).toEqual(['connected to web1', 'web1: took over an expired lock', 'web1  lock']);
  });

  it('redraws for uploads at most every 100 ms, always for the last bytes', () => {
    const { f, out } = tty();
    f.ev.setHosts(['web1']);
    f.at(0, { type: 'phase', host: 'web1', phase: 'upload' });
    f.at(1000, { type: 'upload', host: 'web1', sent: 10, total: 100 });
    const n = out().length;
    f.at(1050, { type: 'upload', host: 'web1', sent: 20, total: 100 });
    expect(out().length).toBe(n);
    f.at(1060, { type: 'upload', host: 'web1', sent: 100, total: 100 });
    expect(screen(out())).toEqual(['web1  upload  100% [####################] 0.0/0.0 MB  0.0 MB/s']);
  });

  it('shows the build step with its number and time, and keeps finished steps above', () => {
    const { f, out } = tty();
    f.at(0, { type: 'step', step: 'resolve', index: 1, count: 12, elapsed: 0 });
    f.at(1200, { type: 'step', step: 'image', index: 2, count: 12, elapsed: 1.2 });
    f.setNow(4200);
    f.ev.close();
    expect(screen(out())).toEqual(['  resolve 1.2s', 'build  [2/12] image  3.0s']);
  });

  it('keeps stdout whole on the same terminal: the block steps aside for it, and stays put after the result', () => {
    let out = '';
    const r = new TtyRenderer((t) => (out += t), { columns: () => 80, tick: false });
    const ev = new Events({ renderer: r, clock: () => T0, out: (t) => (out += t) });
    ev.setHosts(['web1']);
    ev.emit({ type: 'phase', host: 'web1', phase: 'lock' });
    ev.print('plan: line one\n');
    ev.emit({ type: 'host-done', host: 'web1', previous: 'A', current: 'B' });
    ev.emit({ type: 'result', command: 'ship', ok: true });
    ev.print('web1: A -> B\n');
    ev.close();
    expect(screen(out)).toEqual(['plan: line one', 'web1  done    runs B', 'web1: A -> B']);
  });

  it('cuts rows to the terminal width so that none wraps', () => {
    const { f, out } = tty(30);
    f.ev.setHosts(['web1']);
    f.at(0, { type: 'phase', host: 'web1', phase: 'before_switch', detail: 'x'.repeat(100) });
    const rows = screen(out());
    expect(rows).toHaveLength(1);
    expect(rows[0]!.length).toBeLessThan(30);
    expect(rows[0]!.endsWith('…')).toBe(true);
  });
});

describe('the emitter', () => {
  it('masks secrets and URL credentials in every field', () => {
    let out = '';
    const ev = new Events({ renderer: new JsonRenderer((t) => (out += t)), clock: () => T0 });
    ev.addSecrets(['hunter2-secret', 'ab']);
    ev.emit({ type: 'message', text: 'password hunter2-secret in https://bob:tok@git.example/x' });
    ev.emit({ type: 'result', command: 'ship', ok: false, nested: { list: ['hunter2-secret'] } });
    expect(out).not.toContain('hunter2');
    expect(out).not.toContain('tok@');
    expect(out).toContain('password *** in https://***@git.example/x');
    // Too short to mask without garbling everything else.
    expect(out).toContain('"command":"ship"');
  });

  it('attaches the host to messages about one host', () => {
    let out = '';
    const ev = new Events({ renderer: new JsonRenderer((t) => (out += t)), clock: () => T0 });
    ev.setHosts(['web1', 'web10']);
    ev.say('web10: staged');
    ev.say('WARNING web1: prune failed');
    ev.say('connected to web1, web10');
    const hosts = out
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { host?: string }).host ?? null);
    expect(hosts).toEqual(['web10', 'web1', null]);
  });

  it('drops events after close', () => {
    let out = '';
    const ev = new Events({ renderer: new JsonRenderer((t) => (out += t)) });
    ev.close();
    ev.emit({ type: 'message', text: 'late' });
    expect(out).toBe('');
  });

  it('withEvents ends a failure with a result event carrying the exit code, and rethrows', async () => {
    let out = '';
    const ev = new Events({ renderer: new JsonRenderer((t) => (out += t)) });
    await expect(
      withEvents(ev, 'ship', () => Promise.reject(new UsageError('no artifact in store'))),
    ).rejects.toBeInstanceOf(CkanReleaseError);
    expect(JSON.parse(out.trim())).toMatchObject({
      type: 'result',
      command: 'ship',
      ok: false,
      error: 'no artifact in store',
      exit_code: 2,
    });
  });
});

describe('choosing the renderer', () => {
  it('--json, else a terminal, else plain lines', () => {
    expect(progressMode({ json: true, isTTY: true })).toBe('json');
    expect(progressMode({ json: false, isTTY: true })).toBe('tty');
    expect(progressMode({ json: false, isTTY: false })).toBe('plain');
    expect(progressMode({ json: false })).toBe('plain');
    expect(progressMode({ json: false, isTTY: true, env: { TERM: 'dumb' } })).toBe('plain');
    expect(progressMode({ json: false, isTTY: true, env: { CKAN_RELEASE_PROGRESS: 'plain' } })).toBe('plain');
  });

  it('JSON goes to stdout, the others to stderr', () => {
    const seen = { out: '', err: '' };
    const io = { out: (t: string) => (seen.out += t), err: (t: string) => (seen.err += t) };
    const j = eventsFor(io, true);
    j.say('hello');
    j.close();
    expect(seen.out).toMatch(/^\{"time":"[^"]+","type":"message","text":"hello"\}\n$/);
    expect(seen.err).toBe('');
    const p = eventsFor(io, false);
    p.say('hello');
    p.close();
    expect(seen.err).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ hello\n$/);
    const t = eventsFor({ ...io, isTTY: true, columns: () => 80 }, false);
    t.setHosts(['web1']);
    t.close();
    expect(seen.err).toContain('web1  connected\n');
  });

  it('durations read as seconds or minutes', () => {
    expect(duration(0.2)).toBe('1s');
    expect(duration(59)).toBe('59s');
    expect(duration(125)).toBe('2m05s');
  });
});
