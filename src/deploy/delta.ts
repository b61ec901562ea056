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

/** A member of the archive as the scan found it: its path and what the delta archive keeps of it. */
interface Member {
  name: string;
  type: 'file' | 'directory' | 'other';
  mode: number;
  mtime: Date;
  size: number;
}

const BLOCK = 512;

/** A body being collected: a kept member's, or a GNU long name's or pax header's. */
interface Body {
  member: Member | null;
  parts: Buffer[];
  need: number;
  ext?: 'L' | 'x';
}

function cString(b: Buffer, start: number, length: number): string {
  const field = b.subarray(start, start + length);
  const nul = field.indexOf(0);
  return field.subarray(0, nul === -1 ? field.length : nul).toString('utf8');
}

/** A numeric header field: octal text, or GNU's base-256 (high bit set) for large values. */
function tarNumber(b: Buffer, start: number, length: number, what: string): number {
  if (b[start]! & 0x80) {
    let v = 0;
    for (let i = start + 1; i < start + length; i++) v = v * 256 + b[i]!;
    return v;
  }
  const text = cString(b, start, length).trim();
  if (!/^[0-7]*$/.test(text)) throw new Error(`bad ${what} field in a tar header: ${JSON.stringify(text)}`);
  return text ? parseInt(text, 8) : 0;
}

/** pax records ("LEN key=value\n") as a map. */
function paxRecords(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let off = 0;
  while (off < data.length) {
    const space = data.indexOf(0x20, off);
    const len = space === -1 ? NaN : Number(data.subarray(off, space).toString('latin1'));
    if (!Number.isInteger(len) || len <= 0 || off + len > data.length) throw new Error('bad pax header');
    const record = data.subarray(space + 1, off + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) out.set(record.slice(0, eq), record.slice(eq + 1));
    off += len;
  }
  return out;
}

/**
 * Scans the tar stream of `chunks` header by header, passing over the bodies of the members nobody
 * wants without copying them (tar-stream's parser, an object and a stream per member, cost 1.4 s of
 * CPU on the 29,000 members of the bench release, twice what inflating it costs). GNU long names
 * ('L') and pax headers ('x': path, size, mtime) name the member after them; every header's checksum
 * is checked. `wants(member)` says whether to keep a member; `kept(member, body)` gets each one kept.
 */
async function scanTar(
  chunks: AsyncIterable<Buffer>,
  wants: (m: Member) => boolean,
  kept: (m: Member, body: Buffer) => Promise<void>,
): Promise<void> {
  let header = Buffer.alloc(0); // the part of a header block that has arrived
  let toPass = 0; // bytes of the current body (and its padding) still to come
  // (Set by the callbacks: the assertion keeps TypeScript from narrowing it to null in the loop.)
  let body = null as Body | null;
  let longName: string | undefined;
  let pax: Map<string, string> | undefined;
  let ended = false;
  const finishBody = async () => {
    const b = body!;
    body = null;
    const data = Buffer.concat(b.parts);
    if (b.ext === 'L') longName = cString(data, 0, data.length);
    else if (b.ext === 'x') pax = paxRecords(data);
    else await kept(b.member!, data);
  };
  const onHeader = async (h: Buffer) => {
    if (h.every((x) => x === 0)) {
      ended = true; // the end-of-archive blocks; what follows is padding
      return;
    }
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (sum !== tarNumber(h, 148, 8, 'checksum')) throw new Error('invalid tar header (checksum)');
    const flag = String.fromCharCode(h[156]!);
    let size = tarNumber(h, 124, 12, 'size');
    if (flag === 'L' || flag === 'x') {
      toPass = Math.ceil(size / BLOCK) * BLOCK;
      body = { member: null, parts: [], need: size, ext: flag };
      if (toPass === 0) await finishBody();
      return;
    }
    let name = cString(h, 0, 100);
    if (h.subarray(257, 262).toString('latin1') === 'ustar') {
      const prefix = cString(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    let mtime = tarNumber(h, 136, 12, 'mtime');
    if (longName !== undefined) name = longName;
    if (pax) {
      name = pax.get('path') ?? name;
      if (pax.has('size')) size = Number(pax.get('size'));
      if (pax.has('mtime')) mtime = Math.floor(Number(pax.get('mtime')));
    }
    longName = undefined;
    pax = undefined;
    const member: Member = {
      name: memberPath(name),
      type: flag === '0' || flag === '\0' || flag === '7' ? 'file' : flag === '5' ? 'directory' : 'other',
      mode: tarNumber(h, 100, 8, 'mode'),
      mtime: new Date(mtime * 1000),
      size: flag === '5' || flag === '2' || flag === '1' ? 0 : size,
    };
    toPass = Math.ceil(member.size / BLOCK) * BLOCK;
    if (wants(member)) {
      if (member.type === 'file' && member.size > 0) body = { member, parts: [], need: member.size };
      else await kept(member, Buffer.alloc(0));
    }
  };
  for await (const chunk of chunks) {
    let off = 0;
    while (off < chunk.length && !ended) {
      if (toPass > 0) {
        const n = Math.min(toPass, chunk.length - off);
        if (body && body.need > 0) {
          const take = Math.min(n, body.need);
          body.parts.push(chunk.subarray(off, off + take));
          body.need -= take;
        }
        off += n;
        toPass -= n;
        if (toPass === 0 && body) await finishBody();
        continue;
      }
      if (header.length === 0 && chunk.length - off >= BLOCK) {
        const h = chunk.subarray(off, off + BLOCK);
        off += BLOCK;
        await onHeader(h);
        continue;
      }
      const take = Math.min(BLOCK - header.length, chunk.length - off);
      header = Buffer.concat([header, chunk.subarray(off, off + take)]);
      off += take;
      if (header.length === BLOCK) {
        const h = header;
        header = Buffer.alloc(0);
        await onHeader(h);
      }
    }
  }
  if (!ended && (toPass > 0 || header.length > 0)) throw new Error('unexpected end of the tar archive');
}

/** Builds the gzipped tar of exactly the `need` paths (regular files, directories) of `archive`. */
export async function makeDeltaArchive(archive: string, need: readonly string[]): Promise<DeltaArchive> {
  const wanted = new Set(need);
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
  const gunzip = createGunzip({ chunkSize: 1 << 20 });
  source.on('error', (e) => gunzip.destroy(e));
  let files = 0;
  let bytes = 0;
  await scanTar(
    source.pipe(gunzip),
    (m) => m.type !== 'other' && wanted.has(m.name),
    (m, data) =>
      new Promise<void>((resolve, reject) => {
        const header = { name: m.name, mode: m.mode, mtime: m.mtime, uid: 0, gid: 0 };
        wanted.delete(m.name);
        if (m.type === 'directory') {
          pack.entry({ ...header, type: 'directory' });
          return resolve();
        }
        files += 1;
        bytes += data.length;
        pack.entry({ ...header, size: data.length, type: 'file' }, data, (err) =>
          err ? reject(err) : resolve(),
        );
      }),
  );
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
  private readonly guesses = new Map<string, string[] | null>();
  private mtimeOnce: Promise<number> | undefined;
  constructor(private readonly archive: string) {}

  /**
   * The files a host holding `releases` will most likely ask for: those of `m` whose content none of
   * them has, by their manifests (`manifestOf`: from the local store; null where it lacks one). Only
   * a head start, cut while the host assembles the release: the host's answer decides what is sent,
   * and a wrong guess costs one more cut. Null when there is nothing to go by, or when the guess is
   * more than `maxShare` of the release's bytes (a delta would not be sent). Once per set of releases.
   */
  guessNeed(
    m: { id: string; files: readonly { path: string; type: string; size: number; sha256?: string | null }[] },
    releases: readonly string[],
    manifestOf: (id: string) => { files: readonly { type: string; sha256?: string | null }[] } | null,
    maxShare: number,
  ): string[] | null {
    const ids = releases.filter((id) => id !== m.id).sort();
    const key = ids.join(' ');
    if (!this.guesses.has(key)) {
      const have = new Set<string>();
      for (const id of ids)
        for (const f of manifestOf(id)?.files ?? []) if (f.type === 'file' && f.sha256) have.add(f.sha256);
      // m's file list only when there is something to go by (a host with no release: not parsed at all).
      let guess: string[] | null = null;
      if (have.size) {
        const need = m.files.filter((f) => f.type === 'file' && !have.has(f.sha256 ?? ''));
        const total = m.files.reduce((n, f) => n + f.size, 0);
        const bytes = need.reduce((n, f) => n + f.size, 0);
        if (bytes <= total * maxShare) guess = need.map((f) => f.path).sort();
      }
      this.guesses.set(key, guess);
    }
    return this.guesses.get(key)!;
  }

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
