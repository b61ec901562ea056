// deploy.fetch: direct (README "Hosts fetch for themselves"). With an S3 store, each host downloads the
// artifact from the bucket itself, through presigned GET URLs this machine signs (short-lived, one per
// object), so the client sends no artifact bytes: the manifest first (the probe: a host that cannot
// reach the store falls back to SSH here, before anything is unpacked), then exactly the chunks its
// chunk cache lacks, which the agent downloads in parallel, checks and feeds to the same receive as the
// SSH ship. The URLs go to the agent on stdin (never on a command line) and are never printed: every
// message from these steps is passed through redactPresigned. A delta ship keeps going through SSH
// (the delta archive is cut from the artifact on this machine: a few kB, against chunks of 1 MB and
// more that hold its files).
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { chunksOf, type Manifest } from '../artifact/manifest.js';
import type { S3Store } from '../artifact/s3.js';
import type { Config } from '../config/types.js';
import { CkanReleaseError, OperationError } from '../errors.js';
import { redactPresigned } from '../redact.js';
import { AgentRefusal, callAgent, type AgentHost } from './agent.js';
import type { AgentAnswer } from './protocol.js';

/** How long a presigned URL is valid: a chunk's GET starts within this (a 132 MB fetch at 150 kB/s). */
export const URL_SECONDS = 900;

interface FetchSession {
  config: Config;
  op: string;
  say: (line: string) => void;
}

/** What this deploy knows of the store: the published manifest's bytes and sha256, or that it has none. */
interface Direct {
  store: S3Store;
  manifest: { bytes: number; sha256: string } | undefined;
}

const direct = new WeakMap<object, Promise<Direct | undefined>>();
/** Per host of a deploy: the chunks its cache holds (the manifest came from the store), or absent (SSH). */
const fetching = new WeakMap<object, Map<string, Set<string>>>();

/**
 * The store of a deploy with `fetch: direct`, once per session: the published manifest is read (one
 * GET, then kept in the local store's .s3-manifests/) to give hosts its sha256. An artifact that is not
 * published goes to every host through SSH, and the output says so once.
 */
function directFor(s: FetchSession, m: Manifest): Promise<Direct | undefined> {
  if (s.config.deploy.fetch !== 'direct' || !s.config.s3) return Promise.resolve(undefined);
  let d = direct.get(s);
  if (!d) {
    d = (async () => {
      const { S3Store } = await import('../artifact/s3.js');
      const reader = new S3Store(s.config.s3!);
      let body: Buffer | undefined;
      try {
        body = await reader.manifestBytes(m.id, s.config.store);
      } finally {
        reader.close();
      }
      if (!body) {
        s.say(`${m.id} is not published to ${reader.url}: sending it to every host through SSH`);
        return undefined;
      }
      // Signing sends nothing: this client never opens a connection.
      return {
        store: new S3Store(s.config.s3!),
        manifest: { bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') },
      };
    })();
    direct.set(s, d);
  }
  return d;
}

function hostsOf(s: FetchSession): Map<string, Set<string>> {
  let m = fetching.get(s);
  if (!m) fetching.set(s, (m = new Map()));
  return m;
}

/** The same error with every presigned URL's query taken out of its message. */
function redacted(e: unknown): unknown {
  if (!(e instanceof Error)) return e;
  const message = redactPresigned(e.message);
  if (message === e.message) return e;
  if (e instanceof CkanReleaseError) return new OperationError(message, e.hint);
  return new Error(message);
}

/**
 * Puts the manifest where the agent reads it (<root>/.ckan-release/tmp/<op>-manifest.json, as
 * `upload` does): from the store, when the host can reach it, else sent by `upload`.
 */
export async function placeManifest(
  s: FetchSession,
  h: { name: string },
  agent: AgentHost,
  m: Manifest,
  upload: () => Promise<string>,
): Promise<string> {
  const d = await directFor(s, m);
  if (!d?.manifest) return upload();
  const url = await d.store.presignGet(d.store.manifestKey(m.id), URL_SECONDS);
  let r: AgentAnswer<'fetch-manifest'>;
  try {
    r = await callAgent<AgentAnswer<'fetch-manifest'>>(
      agent,
      'fetch the manifest from the store',
      'fetch-manifest',
      { root: s.config.root, id: m.id, op: s.op, ...d.manifest },
      { stdin: Readable.from([JSON.stringify({ url, chunks: chunksOf(m) })]) },
    );
  } catch (e) {
    if (e instanceof AgentRefusal && e.kind === 'store-unreachable') {
      s.say(
        `${h.name}: ${redactPresigned(e.message.replace(`${h.name}: `, ''))}: sending through SSH instead`,
      );
      return upload();
    }
    throw redacted(e);
  }
  hostsOf(s).set(h.name, new Set(r.cached));
  return r.manifest;
}

/**
 * A full ship with `fetch: direct`: the host downloads the chunks it lacks and receives them; returns
 * the partial directory, or undefined when the archive must be sent through SSH (the host got its
 * manifest through SSH, or cannot reach the store: said per host).
 */
export async function fetchRelease(
  s: FetchSession,
  h: { name: string },
  agent: AgentHost,
  m: Manifest,
  manifestPath: string,
  owner: { owner: string | null; group: string | null },
  link?: string,
): Promise<string | undefined> {
  const cached = hostsOf(s).get(h.name);
  const d = cached && (await directFor(s, m));
  if (!cached || !d) return undefined;
  const t0 = Date.now();
  const chunks = await Promise.all(
    chunksOf(m).map(async (c) =>
      cached.has(c.sha256)
        ? c
        : { ...c, url: await d.store.presignGet(d.store.chunkKey(c.sha256), URL_SECONDS) },
    ),
  );
  let r: { partial: string; downloaded: number; downloaded_bytes: number; cached: number };
  try {
    r = await callAgent(
      agent,
      'fetch the release from the store',
      'fetch',
      {
        root: s.config.root,
        id: m.id,
        op: s.op,
        manifest: manifestPath,
        ...(link ? { link } : {}),
        ...owner,
      },
      { stdin: Readable.from([JSON.stringify({ chunks })]) },
    );
  } catch (e) {
    if (e instanceof AgentRefusal && e.kind === 'store-unreachable') {
      s.say(
        `${h.name}: ${redactPresigned(e.message.replace(`${h.name}: `, ''))}: sending through SSH instead`,
      );
      return undefined;
    }
    throw redacted(e);
  }
  const unique = new Set(chunksOf(m).map((c) => c.sha256)).size;
  s.say(
    `${h.name}: fetched from ${d.store.url}: ${r.downloaded} of ${unique} chunks downloaded (${(r.downloaded_bytes / 1e6).toFixed(1)} MB), ${r.cached} from its chunk cache, in ${((Date.now() - t0) / 1000).toFixed(1)} s; every file checked against the manifest`,
  );
  return r.partial;
}
