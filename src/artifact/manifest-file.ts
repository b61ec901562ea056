// Reading an artifact's manifest.json, and the form hosts keep of it (JSON.stringify of the parsed
// manifest, named by its sha256). A realistic manifest is several MB (29,000 entries: 7.6 MB, parsed in
// about 40-60 ms, serialized and hashed in 50 more), and a ship of a release already on its hosts needs
// only its header and that sha256: both are kept beside the manifest in `.manifest-header-v2.json`, keyed
// by the manifest file's stat (device, inode, size, mtime and ctime in ns). While the stat is the same,
// the header comes from there and the file list is parsed only when something reads `files`; any change
// to the file (a write, a rename over it, a copy) changes its ctime, and it is read whole again.
// A full ship needs the file list's sizes and the form sent to hosts, gzipped: the header cache keeps
// the sizes' sum and the JSON's length, and the gzip made by the first ship is kept beside it in
// `.manifest-sent-v2.json.gz`, named in the header cache by its length and sha256 (about 0.1 s of the
// client's time before the upload could start, for the bench's release).
// Both names carry the format's version: a release of this tool that keeps another format beside the
// same manifest (an older checkout, a CI image not yet upgraded) keeps its own files, instead of each
// overwriting the other's at every run and both reading the whole manifest again (measured: 56c8095's
// `.manifest-header.json` and this format taking turns cost each tool about 0.08 s per ship).
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { OperationError } from '../errors.js';
import { fileCount, knownFileCount, type Manifest } from './manifest.js';

/** The header cache's format, in its content and in both file names (see the top of this file). */
const FORMAT = 2;
/** Beside the manifest: its header, file count and sha256 as sent, for one stat of the file. */
export const HEADER_CACHE = `.manifest-header-v${FORMAT}.json`;
/** Beside the manifest: manifestGzip of it, as the header cache names it. */
export const GZIP_CACHE = `.manifest-sent-v${FORMAT}.json.gz`;

/** A file changed this recently may change again within the same clock tick: not cached (git's "racy clean"). */
const RACY_MS = 2000;

interface HeaderCache {
  version: typeof FORMAT;
  stat: string;
  sha256: string;
  files: number;
  /** The sum of the files' sizes. */
  bytes: number;
  /** The length of manifestJson in UTF-8. */
  json_bytes: number;
  /** GZIP_CACHE's length and sha256, once a ship made it. */
  gzip?: { bytes: number; sha256: string };
  /** The manifest without its file list, keys in the file's order (`files` null in its place). */
  header: Record<string, unknown>;
}

const shaOf = new WeakMap<Manifest, string>();
const jsonOf = new WeakMap<Manifest, string>();
const bytesOf = new WeakMap<Manifest, Buffer>();
const gzipOf = new WeakMap<Manifest, Promise<Buffer>>();
const sizeOf = new WeakMap<Manifest, number>();
const jsonBytesOf = new WeakMap<Manifest, number>();
/** The file a manifest was read from, the stat it had, and the header cache that stat has. */
const sourceOf = new WeakMap<Manifest, { file: string; key: string; cache: HeaderCache }>();
const gzipAsync = promisify(gzip);

function statKey(file: string): { key: string; ctimeMs: number } {
  const st = statSync(file, { bigint: true });
  return {
    key: [st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].join(':'),
    ctimeMs: Number(st.ctimeNs / 1_000_000n),
  };
}

function readCache(file: string, key: string): HeaderCache | undefined {
  try {
    const c = JSON.parse(readFileSync(path.join(path.dirname(file), HEADER_CACHE), 'utf8')) as HeaderCache;
    if (
      c.version === FORMAT &&
      c.stat === key &&
      typeof c.sha256 === 'string' &&
      typeof c.files === 'number' &&
      typeof c.bytes === 'number' &&
      typeof c.json_bytes === 'number' &&
      c.header &&
      'files' in c.header
    )
      return c;
  } catch {
    // missing or unreadable: the manifest is read whole
  }
  return undefined;
}

/** Whether it was written (not in a read-only store: every run then reads the manifest whole, as before). */
function writeCache(file: string, c: HeaderCache): boolean {
  const dest = path.join(path.dirname(file), HEADER_CACHE);
  const tmp = `${dest}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, JSON.stringify(c));
    renameSync(tmp, dest);
    return true;
  } catch {
    rmSync(tmp, { force: true });
    return false;
  }
}

/**
 * The manifest in `file` (throws what readFileSync or JSON.parse throw). From the header cache when it
 * matches the file's stat: `files` is then parsed from the file at its first read.
 */
export function readManifestFile(file: string, now = Date.now()): Manifest {
  const { key, ctimeMs } = statKey(file);
  const cached = readCache(file, key);
  if (cached) {
    const m = {} as Record<string, unknown>;
    for (const [k, v] of Object.entries(cached.header)) {
      if (k !== 'files') {
        m[k] = v;
        continue;
      }
      Object.defineProperty(m, 'files', {
        enumerable: true,
        configurable: true,
        get() {
          // The file list of the very file the header came from, or a clear refusal.
          let whole: Manifest | undefined;
          try {
            if (statKey(file).key === key) whole = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
          } catch {
            // gone or unreadable: refused below
          }
          if (!whole || !Array.isArray(whole.files))
            throw new OperationError(`${file} changed or disappeared while this command was using it`);
          // Redefined in place: the key keeps its position, so JSON.stringify(m) is unchanged.
          Object.defineProperty(m, 'files', { value: whole.files, enumerable: true, writable: true });
          return whole.files;
        },
      });
    }
    const manifest = m as unknown as Manifest;
    shaOf.set(manifest, cached.sha256);
    knownFileCount(manifest, cached.files);
    sizeOf.set(manifest, cached.bytes);
    jsonBytesOf.set(manifest, cached.json_bytes);
    sourceOf.set(manifest, { file, key, cache: cached });
    return manifest;
  }
  const m = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  if (now - ctimeMs > RACY_MS && Array.isArray(m.files)) {
    const sha256 = manifestSha256(m);
    const c: HeaderCache = {
      version: FORMAT,
      stat: key,
      sha256,
      files: m.files.length,
      bytes: totalSize(m),
      json_bytes: Buffer.byteLength(manifestJson(m)),
      header: { ...m, files: null },
    };
    // The stat again: the file must be the one just read.
    if (statKey(file).key === key && writeCache(file, c)) sourceOf.set(m, { file, key, cache: c });
  }
  return m;
}

/** The manifest as sent to hosts; its sha256 names the copy a host keeps. Computed once per manifest. */
export function manifestJson(m: Manifest): string {
  let json = jsonOf.get(m);
  if (json === undefined) {
    json = JSON.stringify(m);
    jsonOf.set(m, json);
  }
  return json;
}

/** manifestJson(m) as UTF-8, encoded once per manifest: the same bytes go to every host of a fleet. */
export function manifestBytes(m: Manifest): Buffer {
  let bytes = bytesOf.get(m);
  if (bytes === undefined) {
    bytes = Buffer.from(manifestJson(m));
    bytesOf.set(m, bytes);
  }
  return bytes;
}

/** manifestBytes(m).length, without serializing the manifest when the header cache gave it. */
export function manifestJsonLength(m: Manifest): number {
  return jsonBytesOf.get(m) ?? manifestBytes(m).length;
}

/** The sum of the sizes of m's files, without parsing the file list when the header cache gave it. */
export function totalSize(m: Manifest): number {
  let n = sizeOf.get(m);
  if (n === undefined) {
    n = m.files.reduce((sum, f) => sum + f.size, 0);
    sizeOf.set(m, n);
  }
  return n;
}

/**
 * manifestBytes(m) gzipped, as put-manifest sends it: made once per manifest, in Node's thread pool.
 * Level 1: the bench's 7.6 MB of JSON is 1.37 MB in 40 ms (level 6: 1.31 MB in 60 ms), where an SSH
 * channel moved about 63 MB/s (0.12 s for the JSON itself). Kept beside a manifest file with a header
 * cache (see the top of this file): read from there while it has the length and sha256 the header
 * cache names, made again otherwise.
 */
export function manifestGzip(m: Manifest): Promise<Buffer> {
  let z = gzipOf.get(m);
  if (z === undefined) {
    z = keptGzip(m).then(
      (kept) => kept ?? gzipAsync(manifestBytes(m), { level: 1 }).then((made) => keepGzip(m, made)),
    );
    gzipOf.set(m, z);
  }
  return z;
}

const sha256Of = (data: Buffer) => createHash('sha256').update(data).digest('hex');

async function keptGzip(m: Manifest): Promise<Buffer | undefined> {
  const src = sourceOf.get(m);
  const named = src?.cache.gzip;
  if (!src || !named) return undefined;
  try {
    const data = await readFile(path.join(path.dirname(src.file), GZIP_CACHE));
    if (data.length === named.bytes && sha256Of(data) === named.sha256) return data;
  } catch {
    // missing or unreadable: made again
  }
  return undefined;
}

/** Keeps what manifestGzip made beside the manifest file, if it has a header cache still current. */
async function keepGzip(m: Manifest, data: Buffer): Promise<Buffer> {
  const src = sourceOf.get(m);
  if (!src) return data;
  const dir = path.dirname(src.file);
  const tmp = path.join(dir, `${GZIP_CACHE}.tmp-${process.pid}`);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path.join(dir, GZIP_CACHE));
    const c: HeaderCache = { ...src.cache, gzip: { bytes: data.length, sha256: sha256Of(data) } };
    if (statKey(src.file).key === src.key && writeCache(src.file, c)) src.cache = c;
  } catch {
    await rm(tmp, { force: true });
  }
  return data;
}

/** sha256 of manifestJson(m), without serializing it when the header cache gave it. */
export function manifestSha256(m: Manifest): string {
  let sha = shaOf.get(m);
  if (sha === undefined) {
    sha = createHash('sha256').update(manifestJson(m)).digest('hex');
    shaOf.set(m, sha);
  }
  return sha;
}

// fileCount lives in the pure manifest.ts (the planner uses it); this module records the counts it knows.
export { fileCount };
