// `notify:` webhooks: a JSON POST to each URL when ship, promote or rollback starts, succeeds or fails.
// Slack-compatible (`text`), with the facts as fields of their own. A webhook that fails or hangs is
// reported and never fails the deploy; each is bounded by a timeout, and all are sent in parallel.
// The payload is built from the operation's facts only (no config values, no secrets), and masked on
// top; a webhook URL is a credential itself (Slack's are), so messages name only its origin.
import os from 'node:os';

export type NoticeEvent = 'start' | 'success' | 'failure';

export interface Notice {
  event: NoticeEvent;
  /** ship | promote | rollback */
  operation: string;
  environment: string;
  artifact: string;
  /** user@machine */
  who: string;
  hosts: string[];
  /** success: each host's previous release. */
  from?: (string | null)[];
  seconds?: number;
  error?: string;
  /** What changed from the release it replaces (diffSummary), when both manifests are known. */
  diff?: string;
}

export const NOTIFY_TIMEOUT_MS = 5000;

export function who(): string {
  return `${os.userInfo().username}@${os.hostname()}`;
}

/** Only scheme, host and port: the path and query of a webhook URL are often its secret. */
export function webhookName(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}/...`;
  } catch {
    return '(an invalid URL)';
  }
}

export function noticeText(n: Notice): string {
  const head = `ckan-release ${n.operation} ${n.environment} ${n.artifact}`;
  const hosts = `${n.hosts.length} host${n.hosts.length === 1 ? '' : 's'}`;
  const took = n.seconds === undefined ? '' : ` in ${n.seconds.toFixed(1)} s`;
  const froms = [...new Set((n.from ?? []).map((f) => f ?? 'none'))];
  switch (n.event) {
    case 'start':
      return `${head}: started by ${n.who} on ${hosts} (${n.hosts.join(', ')})`;
    case 'success':
      return (
        `${head}: done by ${n.who}${took}, ${hosts} healthy${froms.length ? ` (was ${froms.join(', ')})` : ''}` +
        (n.diff ? `\nchanges: ${n.diff}` : '')
      );
    case 'failure':
      return `${head}: FAILED (${n.who}${took}): ${n.error ?? 'unknown error'}`;
  }
}

export interface NotifyReport {
  url: string;
  ok: boolean;
  status?: number;
  error?: string;
}

/**
 * Posts the notice to every URL (in parallel, each within timeoutMs); never throws. `mask` scrubs
 * the payload (the command's secret values); `say` reports each failure.
 */
export async function notify(
  urls: string[],
  n: Notice,
  opts: { mask: (text: string) => string; say: (line: string) => void; timeoutMs?: number },
): Promise<NotifyReport[]> {
  if (!urls.length) return [];
  const body = opts.mask(JSON.stringify({ text: noticeText(n), ...n }));
  const timeout = opts.timeoutMs ?? NOTIFY_TIMEOUT_MS;
  return Promise.all(
    urls.map(async (url): Promise<NotifyReport> => {
      const name = webhookName(url);
      try {
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'user-agent': 'ckan-release' },
          body,
          signal: AbortSignal.timeout(timeout),
          redirect: 'error',
        });
        // The body is not needed; read it within the same bound so the socket is released.
        await res.arrayBuffer().catch(() => undefined);
        if (!res.ok) {
          opts.say(`notify ${name}: ${n.event} notice refused: HTTP ${res.status} (the deploy goes on)`);
          return { url: name, ok: false, status: res.status };
        }
        return { url: name, ok: true, status: res.status };
      } catch (e) {
        const err = e as Error;
        const why =
          err.name === 'TimeoutError' || err.name === 'AbortError'
            ? `no answer within ${timeout / 1000} s`
            : ((err.cause as Error | undefined)?.message ?? err.message);
        opts.say(`notify ${name}: ${n.event} notice failed: ${why} (the deploy goes on)`);
        return { url: name, ok: false, error: why };
      }
    }),
  );
}
