// The manifest's header cache (src/artifact/manifest-file.ts): a ship of a release already on its
// hosts takes the header and the sha256 hosts know it by from .manifest-header.json while the manifest
// file's stat is unchanged, and reads the file whole whenever it changed or the cache is unusable.
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { gunzipSync } from 'node:zlib';
import {
  fileCount,
  GZIP_CACHE,
  HEADER_CACHE,
  manifestGzip,
  manifestJson,
  manifestJsonLength,
  manifestSha256,
  readManifestFile,
  totalSize,
} from '../../src/artifact/manifest-file.js';
import type { Manifest } from '../../src/artifact/manifest.js';

const LATER = () => Date.now() + 60_000; // the file is old enough to be cached

function artifactDir(files = 3, extra: Record<string, unknown> = {}): { dir: string; file: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-manifest-file-'));
  const file = path.join(dir, 'manifest.json');
  // `files` in the middle, as a builder might order it: its position must survive the cache.
  const m = {
    format: 1,
    id: '20261202100000Z-aaaaaaaa',
    files: Array.from({ length: files }, (_, i) => ({
      path: `f${i}`,
      type: 'file',
      mode: '0644',
      size: i,
      sha256: 'ab'.repeat(32),
      target: null,
    })),
    archive: { file: 'release.tar.gz', bytes: 1, sha256: 'cd' },
    ...extra,
  };
  writeFileSync(file, JSON.stringify(m, null, 2) + '\n');
  return { dir, file };
}

const sha = (text: string) => createHash('sha256').update(text).digest('hex');
/** What the tool computed before the cache: the sha256 of JSON.stringify of the parsed file. */
const expectedSha = (file: string) => sha(JSON.stringify(JSON.parse(readFileSync(file, 'utf8'))));
const lazy = (m: Manifest) => typeof Object.getOwnPropertyDescriptor(m, 'files')?.get === 'function';

describe('the manifest header cache', () => {
  it('is not written for a manifest written moments ago (its ctime could still not move on a change)', () => {
    const { dir, file } = artifactDir();
    const m = readManifestFile(file);
    expect(m.files).toHaveLength(3);
    expect(existsSync(path.join(dir, HEADER_CACHE))).toBe(false);
  });

  it('gives the header, the file count and the sha256 without parsing the file list', () => {
    const { dir, file } = artifactDir(5);
    const first = readManifestFile(file, LATER());
    expect(existsSync(path.join(dir, HEADER_CACHE))).toBe(true);
    expect(manifestSha256(first)).toBe(expectedSha(file));

    const m = readManifestFile(file, LATER());
    expect(lazy(m)).toBe(true);
    expect(m.id).toBe('20261202100000Z-aaaaaaaa');
    expect(m.archive.bytes).toBe(1);
    expect(fileCount(m)).toBe(5);
    expect(totalSize(m)).toBe(0 + 1 + 2 + 3 + 4);
    expect(manifestJsonLength(m)).toBe(
      Buffer.byteLength(JSON.stringify(JSON.parse(readFileSync(file, 'utf8')))),
    );
    expect(manifestSha256(m)).toBe(expectedSha(file));
    expect(lazy(m)).toBe(true); // none of that read the file list
    // Reading files parses it; the manifest as sent is byte for byte what it was (keys in order).
    expect(m.files.map((f) => f.path)).toEqual(['f0', 'f1', 'f2', 'f3', 'f4']);
    expect(lazy(m)).toBe(false);
    expect(manifestJson(m)).toBe(JSON.stringify(JSON.parse(readFileSync(file, 'utf8'))));
    expect(sha(manifestJson(m))).toBe(manifestSha256(m));
    expect(Object.keys(m)).toEqual(['format', 'id', 'files', 'archive']);
  });

  it('is not used once the manifest changed, even to the same size', () => {
    const { dir, file } = artifactDir(3, { project: 'aaaa' });
    readManifestFile(file, LATER());
    const cached = readFileSync(path.join(dir, HEADER_CACHE), 'utf8');
    // The same length, another value; written in place (same inode): its ctime and mtime move (a
    // clock tick later: the cache is only ever written for a file 2 s old, see the first test).
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30);
    writeFileSync(file, readFileSync(file, 'utf8').replace('"aaaa"', '"bbbb"'));
    const m = readManifestFile(file, LATER());
    expect(lazy(m)).toBe(false);
    expect((m as unknown as { project: string }).project).toBe('bbbb');
    expect(manifestSha256(m)).toBe(expectedSha(file));
    expect(readFileSync(path.join(dir, HEADER_CACHE), 'utf8')).not.toBe(cached); // recorded anew

    // Replaced by rename (a new inode), then the cache put back as it was: still the new file's.
    const other = path.join(dir, 'other.json');
    writeFileSync(other, readFileSync(file, 'utf8').replace('"bbbb"', '"cccc"'));
    renameSync(other, file);
    writeFileSync(path.join(dir, HEADER_CACHE), cached);
    expect((readManifestFile(file, LATER()) as unknown as { project: string }).project).toBe('cccc');
  });

  it("lives beside an older tool's header cache without either overwriting the other's", () => {
    const { dir, file } = artifactDir(4);
    // What 56c8095 (format 1) keeps: its own name, its own format.
    const older = path.join(dir, '.manifest-header.json');
    const olderText = JSON.stringify({
      version: 1,
      stat: 'its stat',
      sha256: 'its sha',
      header: { files: null },
    });
    writeFileSync(older, olderText);
    expect(HEADER_CACHE).not.toBe('.manifest-header.json');
    readManifestFile(file, LATER());
    const m = readManifestFile(file, LATER());
    expect(lazy(m)).toBe(true); // ours, written by the first read, served the second
    expect(manifestSha256(m)).toBe(expectedSha(file));
    expect(readFileSync(older, 'utf8')).toBe(olderText);
  });

  it('is ignored when unreadable, and a store it cannot be written to reads the manifest whole', () => {
    const { dir, file } = artifactDir();
    writeFileSync(path.join(dir, HEADER_CACHE), '{"version": 1, "stat": ');
    const m = readManifestFile(file, LATER());
    expect(lazy(m)).toBe(false);
    expect(manifestSha256(m)).toBe(expectedSha(file));

    const ro = artifactDir();
    chmodSync(ro.dir, 0o555);
    try {
      const r = readManifestFile(ro.file, LATER());
      expect(r.files).toHaveLength(3);
      // As root the directory stays writable; otherwise nothing was left behind.
      if (process.getuid?.() !== 0) expect(existsSync(path.join(ro.dir, HEADER_CACHE))).toBe(false);
    } finally {
      chmodSync(ro.dir, 0o755);
    }
  });

  it('refuses a manifest that is not JSON as reading it whole does', () => {
    const { file } = artifactDir();
    writeFileSync(file, '{"id": ');
    expect(() => readManifestFile(file, LATER())).toThrow(SyntaxError);
  });
});

describe('the file list read after the header', () => {
  it('is refused, naming the file, when the manifest changed or vanished in between', () => {
    const { file } = artifactDir();
    readManifestFile(file, LATER());
    const m = readManifestFile(file, LATER());
    expect(lazy(m)).toBe(true);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30);
    writeFileSync(file, readFileSync(file, 'utf8'));
    expect(() => m.files).toThrow(`${file} changed or disappeared while this command was using it`);
    readManifestFile(file, LATER()); // read whole, and cached anew for the rewritten file
    const n = readManifestFile(file, LATER());
    expect(lazy(n)).toBe(true);
    rmSync(file);
    expect(() => n.files).toThrow(/changed or disappeared/);
  });
});

describe('the gzipped manifest kept beside it', () => {
  const sent = (file: string) => JSON.stringify(JSON.parse(readFileSync(file, 'utf8')));
  const settled = async (m: Manifest) => {
    const z = await manifestGzip(m);
    // What a host inflates: the very JSON it checks the sha256 of.
    expect(gunzipSync(z).toString()).toBe(manifestJson(m));
    return z;
  };

  it('is made by the first ship, then sent without parsing or serializing the manifest', async () => {
    const { dir, file } = artifactDir(40);
    // Too new for a header cache: nothing kept.
    await settled(readManifestFile(file));
    expect(existsSync(path.join(dir, GZIP_CACHE))).toBe(false);
    const first = readManifestFile(file, LATER()); // read whole, its header cache written
    const made = await manifestGzip(first);
    expect(lazy(first)).toBe(false); // made from the parsed file
    expect(gunzipSync(made).toString()).toBe(sent(file));
    expect(readFileSync(path.join(dir, GZIP_CACHE))).toEqual(made);

    const m = readManifestFile(file, LATER());
    const kept = await manifestGzip(m);
    expect(lazy(m)).toBe(true); // taken from the file kept: the file list was never read
    expect(kept).toEqual(made);
  });

  it('is made again when it is damaged or stale, and never for a changed manifest', async () => {
    const { dir, file } = artifactDir(40, { project: 'aaaa' });
    readManifestFile(file, LATER());
    await manifestGzip(readManifestFile(file, LATER()));
    const kept = path.join(dir, GZIP_CACHE);
    const good = readFileSync(kept);

    // Damaged (same length, other bytes): not sent, made again and kept anew.
    const bad = Buffer.from(good);
    bad.writeUInt8(bad.readUInt8(bad.length - 12) ^ 0xff, bad.length - 12);
    writeFileSync(kept, bad);
    let m = readManifestFile(file, LATER());
    expect(await settled(m)).toEqual(good);
    expect(lazy(m)).toBe(false);
    expect(readFileSync(kept)).toEqual(good);

    // Missing: made again.
    rmSync(kept);
    m = readManifestFile(file, LATER());
    expect(await settled(m)).toEqual(good);
    expect(existsSync(kept)).toBe(true);

    // The manifest rewritten (same length): the kept gzip is another manifest's, never sent for it.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30);
    writeFileSync(file, readFileSync(file, 'utf8').replace('"aaaa"', '"bbbb"'));
    m = readManifestFile(file, LATER());
    const z = await settled(m);
    expect(gunzipSync(z).toString()).toBe(sent(file));
    expect(gunzipSync(z).toString()).toContain('"bbbb"');
  });
});
