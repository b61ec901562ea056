// The delta archive: the files a host could not take from its earlier releases, cut out of the
// artifact's release.tar.gz as a stream (gunzip -> tar parse -> tar pack -> gzip), never unpacked to
// disk. Hosts that need the same files (the usual case: every host of an environment runs the same
// release) share one archive, made once per deploy.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createGunzip, createGzip } from 'node:zlib';
import tarStream from 'tar-stream';
import { OperationError } from '../errors.js';

export interface DeltaArchive {
  data: Buffer;
  /** How many files it holds, and their uncompressed bytes. */
  files: number;
  bytes: number;
}

/** A tar member name as the manifest's path ("./a/b" -> "a/b"). */
function memberPath(name: string): string {
  return name.replace(/^\.\//, '').replace(/\/$/, '');
}

/** Builds the gzipped tar of exactly the `need` paths (regular files, directories) of `archive`. */
export async function makeDeltaArchive(archive: string, need: readonly string[]): Promise<DeltaArchive> {
  const wanted = new Set(need);
  const extract = tarStream.extract();
  const pack = tarStream.pack();
  // Level 6, as the full archive: the delta is small, and the host's gunzip cost does not depend on it.
  const gzip = createGzip({ level: 6 });
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    gzip.on('data', (c: Buffer) => chunks.push(c));
    gzip.on('end', resolve);
    gzip.on('error', reject);
  });
  pack.pipe(gzip);
  const source = createReadStream(archive, { highWaterMark: 1 << 20 });
  const gunzip = createGunzip();
  source.on('error', (e) => extract.destroy(e));
  gunzip.on('error', (e) => extract.destroy(e));
  source.pipe(gunzip).pipe(extract);
  let files = 0;
  let bytes = 0;
  for await (const entry of extract) {
    const rel = memberPath(entry.header.name);
    if (entry.header.type === 'directory' && wanted.has(rel)) {
      entry.resume();
      pack.entry({
        name: rel,
        mode: entry.header.mode,
        mtime: entry.header.mtime,
        uid: 0,
        gid: 0,
        type: 'directory',
      });
      wanted.delete(rel);
    } else if (entry.header.type === 'file' && wanted.has(rel)) {
      const body: Buffer[] = [];
      for await (const c of entry) body.push(c as Buffer);
      const data = Buffer.concat(body);
      await new Promise<void>((resolve, reject) =>
        pack.entry(
          {
            name: rel,
            size: data.length,
            mode: entry.header.mode,
            mtime: entry.header.mtime,
            uid: 0,
            gid: 0,
            type: 'file',
          },
          data,
          (err) => (err ? reject(err) : resolve()),
        ),
      );
      wanted.delete(rel);
      files += 1;
      bytes += data.length;
    } else {
      entry.resume();
    }
  }
  pack.finalize();
  await done;
  if (wanted.size) {
    throw new OperationError(
      `${archive}: ${wanted.size} files a host needs are not in the artifact's archive, e.g. ${[...wanted][0]}`,
    );
  }
  return { data: Buffer.concat(chunks), files, bytes };
}

/**
 * The mtime the build gave every member of the archive (GNU tar --mtime): read from its first header.
 * The host gives it to what it copies from an earlier release, so a delta release has the same mtimes
 * as a full ship whatever happened to the base's (a .pyc header records its source's mtime).
 */
export async function archiveMtime(archive: string): Promise<number> {
  const extract = tarStream.extract();
  const source = createReadStream(archive, { highWaterMark: 1 << 16 });
  const gunzip = createGunzip();
  source.pipe(gunzip).pipe(extract);
  try {
    for await (const entry of extract) {
      const mtime = entry.header.mtime;
      if (!mtime) break;
      return Math.floor(mtime.getTime() / 1000);
    }
  } finally {
    source.destroy();
    gunzip.destroy();
  }
  throw new OperationError(`${archive}: no first entry with an mtime`);
}

/** One delta archive per distinct set of needed files, for the whole deploy. */
export class DeltaCache {
  private readonly made = new Map<string, Promise<DeltaArchive>>();
  private mtimeOnce: Promise<number> | undefined;
  constructor(private readonly archive: string) {}

  mtime(): Promise<number> {
    this.mtimeOnce ??= archiveMtime(this.archive);
    return this.mtimeOnce;
  }

  get(need: readonly string[]): Promise<DeltaArchive> {
    const key = createHash('sha256').update(need.join('\n')).digest('hex');
    let p = this.made.get(key);
    if (!p) {
      p = makeDeltaArchive(this.archive, need);
      this.made.set(key, p);
    }
    return p;
  }
}

/** What a delta took from the host's releases, as the ship's output says it. */
export function reusedText(plan: {
  reused?: number;
  reused_bytes?: number;
  bases: string[];
  whole?: boolean;
  link?: { linked: number; reflinked: number; copied: number } | null;
}): string {
  const what = `${plan.reused} files (${((plan.reused_bytes ?? 0) / 1e6).toFixed(1)} MB)`;
  const from = `${plan.bases[0]}${plan.bases.length > 1 ? ' and older releases' : ''}`;
  if (plan.link) {
    const { linked, reflinked, copied } = plan.link;
    const other = [reflinked ? `${reflinked} reflinked` : '', copied ? `${copied} copied` : '']
      .filter(Boolean)
      .join(', ');
    return `${what} linked from ${from}${other ? ` (${linked} hard links; ${other}: their mode, owner or mtime differ)` : ''}`;
  }
  return `${what} copied from ${plan.bases[0]}${plan.whole ? ' (whole, proved unchanged by its tree seal)' : ''}${plan.bases.length > 1 ? ' and older releases' : ''}`;
}
