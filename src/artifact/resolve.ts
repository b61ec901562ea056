// What commands ask of "the store", whichever it is: the local directory, or an S3 store with the
// local directory as its cache. IDs resolve over both (an artifact built here but not yet published can
// still ship); whatever a command needs is fetched into the local cache first, so deploys read local
// files only, and a damaged chunk is refused before any host is touched.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/types.js';
import { UsageError } from '../errors.js';
import { s3Url } from './location.js';
import type { Manifest } from './manifest.js';
import type { PublishResult, S3Store } from './s3.js';
import { artifactIds, listArtifacts, readArtifact, type StoredArtifact } from './store.js';

type Say = (line: string) => void;

/** The S3 store of the config, or undefined for a local one (the SDK is loaded only when needed). */
export async function openS3(config: Config): Promise<S3Store | undefined> {
  if (!config.s3) return undefined;
  const { S3Store } = await import('./s3.js');
  return new S3Store(config.s3);
}

/** The store's name in messages. */
export function storeName(config: Config): string {
  return config.s3 ? s3Url(config.s3) : config.store;
}

async function withS3<T>(config: Config, fn: (s3: S3Store | undefined) => Promise<T>): Promise<T> {
  const s3 = await openS3(config);
  try {
    return await fn(s3);
  } finally {
    s3?.close();
  }
}

/** Every artifact of the store, newest first (an S3 store: the published ones only). */
export function listStore(config: Config): Promise<Manifest[]> {
  return withS3(config, async (s3) => {
    if (!s3) return listArtifacts(config.store).map((a) => a.manifest);
    const ids = await s3.ids();
    const out: Manifest[] = [];
    for (const id of ids) {
      const m = await s3.manifest(id, config.store);
      if (m) out.push(m);
    }
    return out;
  });
}

/** The IDs a prefix may name: the store's and the local cache's, newest first. */
async function knownIds(
  config: Config,
  s3: S3Store | undefined,
): Promise<{ ids: string[]; remote: Set<string> }> {
  // IDs only: reading every manifest of the store to list them took 50 ms per realistic artifact.
  const local = artifactIds(config.store);
  const remote = new Set(s3 ? await s3.ids() : []);
  return { ids: [...new Set([...local, ...remote])].sort().reverse(), remote };
}

function match(config: Config, ids: string[], prefix: string): string {
  const matches = ids.filter((id) => id.startsWith(prefix));
  if (matches.length === 1) return matches[0]!;
  if (matches.length === 0)
    throw new UsageError(
      `no artifact "${prefix}" in ${storeName(config)}`,
      ids.length ? 'run `ckan-release artifacts` to list them' : 'run `ckan-release build` first',
    );
  throw new UsageError(`artifact ID "${prefix}" is ambiguous: ${matches.join(', ')}`);
}

/** One manifest, without fetching the archive. */
export function showArtifact(config: Config, prefix: string): Promise<{ manifest: Manifest; where: string }> {
  return withS3(config, async (s3) => {
    const { ids, remote } = await knownIds(config, s3);
    const id = match(config, ids, prefix);
    if (s3 && remote.has(id))
      return { manifest: (await s3.manifest(id, config.store))!, where: `${s3.url}manifests/${id}.json` };
    const a = readArtifact(config.store, id);
    return { manifest: a.manifest, where: a.dir };
  });
}

/**
 * The artifact a prefix names (undefined: the newest), in the local cache: fetched from the S3 store
 * when it is not there yet (only the chunks the cache lacks). `exact`: an ID the store may not have
 * (rollback to a release only the hosts still hold): undefined when neither has it.
 */
export async function resolveArtifact(
  config: Config,
  prefix: string | undefined,
  say: Say,
): Promise<StoredArtifact>;
export async function resolveArtifact(
  config: Config,
  prefix: string,
  say: Say,
  exact: true,
): Promise<StoredArtifact | undefined>;
export async function resolveArtifact(
  config: Config,
  prefix: string | undefined,
  say: Say,
  exact = false,
): Promise<StoredArtifact | undefined> {
  return withS3(config, async (s3) => {
    const { ids, remote } = await knownIds(config, s3);
    let id: string;
    if (exact) {
      if (!ids.includes(prefix!)) return undefined;
      id = prefix!;
    } else if (prefix === undefined) {
      if (!ids.length)
        throw new UsageError(`no artifact in ${storeName(config)}`, 'run `ckan-release build` first');
      id = ids[0]!;
    } else id = match(config, ids, prefix);
    if (!s3 || !remote.has(id)) return readArtifact(config.store, id);
    const r = await s3.fetch(id, config.store);
    if (r.fetched)
      say(
        `fetched ${id} from ${s3.url}: ${r.downloadedChunks} of ${r.chunks} chunks downloaded (${(r.downloadedBytes / 1e6).toFixed(1)} MB), the rest from the local cache; every chunk checked`,
      );
    return r.artifact;
  });
}

/** build and `artifacts publish`: uploads what the S3 store lacks; undefined for a local store. */
export function publishArtifact(
  config: Config,
  artifact: StoredArtifact,
  say: Say,
): Promise<PublishResult | undefined> {
  return withS3(config, async (s3) => {
    if (!s3) return undefined;
    const r = await s3.publish(artifact);
    say(
      r.published
        ? `published ${artifact.id} to ${s3.url}: ${r.uploadedChunks} of ${r.chunks} chunks uploaded (${(r.uploadedBytes / 1e6).toFixed(1)} of ${(r.bytes / 1e6).toFixed(1)} MB), the rest were there`
        : `${artifact.id} was already published to ${s3.url}`,
    );
    return r;
  });
}

/** A manifest from the local store or the S3 store (no archive is fetched); undefined if neither has it. */
export async function knownManifest(config: Config, id: string): Promise<Manifest | undefined> {
  if (existsSync(path.join(config.store, id, 'manifest.json')))
    return readArtifact(config.store, id).manifest;
  return withS3(config, async (s3) =>
    s3 ? s3.manifest(id, config.store).catch(() => undefined) : undefined,
  );
}
