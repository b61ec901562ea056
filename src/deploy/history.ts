// `ckan-release history ENV`: the environment's operations, from the ledgers of all its hosts merged
// (pure). One operation's entries share its token (`op`) on every host; an entry without one (setup's
// adoption, ledgers of old versions) stands alone.

export interface LedgerEntry {
  event: string;
  release?: string;
  time?: string;
  op?: string;
  previous?: string | null;
  by?: { user?: string; machine?: string; operation?: string } | null;
  started?: string;
  why?: string;
  from?: string;
}

export interface Operation {
  /** The first moment known: `started` when the ledger has it, else the first entry's time. */
  time: string;
  /** user@machine, when recorded. */
  who: string | null;
  /** ship | promote | rollback | setup | ...: the first word of the operation's name. */
  what: string;
  artifact: string | null;
  /** Each host's release before the operation (unique values). */
  from: (string | null)[];
  to: string | null;
  /**
   * healthy: done; failed: switched and switched back; incomplete: no end recorded (stopped before any
   * switch after staging, interrupted, or still running). A phase 1 that fails before staging writes
   * nothing on any host, so it is not here.
   */
  result: 'healthy' | 'failed' | 'incomplete' | 'adopted';
  hosts: string[];
  /** From `started` to the last entry; null when only one moment is known. */
  seconds: number | null;
  why: string | null;
  op: string | null;
}

export function mergeLedgers(ledgers: { host: string; entries: LedgerEntry[] }[]): Operation[] {
  const groups = new Map<string, { host: string; e: LedgerEntry }[]>();
  let solo = 0;
  for (const { host, entries } of ledgers) {
    for (const e of entries) {
      if (e.event === 'pruned') continue;
      const key = e.op ? `op:${e.op}` : `solo:${solo++}`;
      const g = groups.get(key) ?? [];
      g.push({ host, e });
      groups.set(key, g);
    }
  }
  const ops: Operation[] = [];
  for (const [key, g] of groups) {
    const events = (name: string) => g.filter((x) => x.e.event === name);
    const with_ = g.find((x) => x.e.by)?.e.by ?? null;
    // By the moment, not the text: hosts wrote whole seconds ("...:31Z") before milliseconds.
    const byMoment = (a: string, b: string) => Date.parse(a) - Date.parse(b);
    const times = g
      .map((x) => x.e.time)
      .filter((t): t is string => !!t)
      .sort(byMoment);
    const started = g
      .map((x) => x.e.started)
      .filter((t): t is string => !!t)
      .sort(byMoment)[0];
    const first = started ?? times[0] ?? '';
    const last = times[times.length - 1];
    const hosts = [...new Set(g.map((x) => x.host))];
    const target =
      events('activated')[0]?.e.release ??
      events('staged')[0]?.e.release ??
      events('healthy')[0]?.e.release ??
      g[0]!.e.release ??
      null;
    let result: Operation['result'];
    if (events('failed').length) result = 'failed';
    else if (events('adopted').length) result = 'adopted';
    else if (
      events('healthy').length &&
      hosts.every((h) => g.some((x) => x.host === h && x.e.event === 'healthy'))
    )
      result = 'healthy';
    else result = 'incomplete';
    const opName = with_?.operation ?? (events('adopted').length ? 'setup' : g[0]!.e.event);
    const why = events('failed')[0]?.e.why ?? null;
    ops.push({
      time: first,
      who: with_?.user ? `${with_.user}@${with_.machine ?? '?'}` : null,
      what: opName.split(' ')[0]!,
      artifact: target,
      from: [...new Set(events('activated').map((x) => x.e.previous ?? null))],
      to:
        result === 'healthy' || result === 'adopted'
          ? target
          : result === 'failed'
            ? (g.find((x) => x.e.event === 'rolled_back')?.e.release ?? null)
            : null,
      result,
      hosts: hosts.sort(),
      seconds: last && first && last !== first ? (Date.parse(last) - Date.parse(first)) / 1000 : null,
      why,
      op: key.startsWith('op:') ? key.slice(3) : null,
    });
  }
  return ops.sort(
    (a, b) => Date.parse(a.time) - Date.parse(b.time) || (a.time < b.time ? -1 : a.time > b.time ? 1 : 0),
  );
}

export function formatHistory(env: string, ops: Operation[]): string {
  if (!ops.length) return `${env}: no operations recorded\n`;
  return (
    ops
      .map((o) => {
        const from = o.from.length ? o.from.map((f) => f ?? 'none').join(',') : '-';
        const took = o.seconds === null ? '' : ` ${o.seconds.toFixed(1)}s`;
        return `${o.time}  ${(o.who ?? '?').padEnd(20)} ${o.what.padEnd(8)} ${from} -> ${o.artifact ?? '?'}  ${o.result}${took}  [${o.hosts.join(' ')}]${o.why ? `\n    why: ${o.why}` : ''}`;
      })
      .join('\n') + '\n'
  );
}
