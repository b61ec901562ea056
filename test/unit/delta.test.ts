// The delta archive: exactly the needed files of release.tar.gz, with their modes and mtimes, and an
// error naming a needed file the archive does not have.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { archiveMtime, DeltaCache, makeDeltaArchive } from '../../src/deploy/delta.js';

const MTIME = new Date(946684800 * 1000);

/** A tar.gz of entries; with `members`, the tar bytes cut into that many gzip members (as the build
 * packs them: a gzip file of several members is one gzip file), at 512-byte blocks, mid-entry too. */
async function tarGz(
  entries: Partial<tarStream.Header>[],
  bodies: Record<string, string>,
  members = 1,
): Promise<string> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const ended = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    const body = bodies[e.name!];
    if (body === undefined) pack.entry({ mtime: MTIME, ...e } as tarStream.Header);
    else pack.entry({ mtime: MTIME, ...e } as tarStream.Header, body);
  }
  pack.finalize();
  await ended;
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'ckan-release-delta-')), 'release.tar.gz');
  const raw = Buffer.concat(chunks);
  const cut = Array.from({ length: members + 1 }, (_, i) =>
    i === members ? raw.length : Math.floor((raw.length / 512 / members) * i) * 512,
  );
  writeFileSync(
    file,
    Buffer.concat(cut.slice(0, -1).map((start, i) => gzipSync(raw.subarray(start, cut[i + 1])))),
  );
  return file;
}

async function members(data: Buffer): Promise<{ name: string; mode?: number; body: string; mtime?: Date }[]> {
  const extract = tarStream.extract();
  const out: { name: string; mode?: number; body: string; mtime?: Date }[] = [];
  const done = (async () => {
    for await (const e of extract) {
      let body = '';
      for await (const c of e) body += (c as Buffer).toString();
      out.push({ name: e.header.name, mode: e.header.mode, body, mtime: e.header.mtime });
    }
  })();
  extract.end(gunzipSync(data));
  await done;
  return out;
}

const release = (members = 1) =>
  tarGz(
    [
      { name: './', type: 'directory', mode: 0o755 },
      { name: './bin/', type: 'directory', mode: 0o755 },
      { name: './bin/ckan', type: 'file', mode: 0o755 },
      { name: './bin/python', type: 'symlink', linkname: 'python3' },
      { name: './src/a.py', type: 'file', mode: 0o644 },
      { name: './src/b.py', type: 'file', mode: 0o600 },
    ],
    { './bin/ckan': '#!/bin/sh\n', './src/a.py': 'a = 1\n', './src/b.py': 'b = 2\n' },
    members,
  );

describe('makeDeltaArchive', () => {
  it('holds exactly the needed files, with their modes and mtimes', async () => {
    const d = await makeDeltaArchive(await release(), ['bin/ckan', 'src/b.py']);
    expect(d.files).toBe(2);
    expect(d.bytes).toBe(16);
    expect(await members(d.data)).toEqual([
      { name: 'bin/ckan', mode: 0o755, body: '#!/bin/sh\n', mtime: MTIME },
      { name: 'src/b.py', mode: 0o600, body: 'b = 2\n', mtime: MTIME },
    ]);
  });

  it('reads every member of a multi-member gzip file (the build writes one member per chunk)', async () => {
    const file = await release(3);
    const raw = readFileSync(file);
    // Three members: three gzip headers, the last at a member boundary inside the file.
    const magic = [...raw.entries()].filter(
      ([i, b]) => b === 0x1f && raw[i + 1] === 0x8b && raw[i + 2] === 8,
    );
    expect(magic.length).toBeGreaterThanOrEqual(3);
    const d = await makeDeltaArchive(file, ['bin/ckan', 'src/b.py']);
    expect(await members(d.data)).toEqual([
      { name: 'bin/ckan', mode: 0o755, body: '#!/bin/sh\n', mtime: MTIME },
      { name: 'src/b.py', mode: 0o600, body: 'b = 2\n', mtime: MTIME },
    ]);
    expect(await archiveMtime(file)).toBe(946684800);
  });

  it('names members by GNU long names and pax headers, as GNU tar writes them, and refuses a damaged header', async () => {
    const tree = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-delta-tree-'));
    const long = `lib/${'d'.repeat(120)}/${'f'.repeat(90)}.py`;
    mkdirSync(path.join(tree, path.dirname(long)), { recursive: true });
    writeFileSync(path.join(tree, long), 'long = True\n');
    writeFileSync(path.join(tree, 'lib', 'big.bin'), Buffer.alloc(70000, 7));
    writeFileSync(path.join(tree, 'lib', 'empty.py'), '');
    chmodSync(path.join(tree, long), 0o600);
    for (const format of ['gnu', 'pax']) {
      const file = path.join(tree, `../${path.basename(tree)}-${format}.tar.gz`);
      execFileSync('tar', [
        `--format=${format}`,
        '--owner=0',
        '--group=0',
        '--mtime=@946684800',
        '--sort=name',
        '-czf',
        file,
        '-C',
        tree,
        '.',
      ]);
      const d = await makeDeltaArchive(file, [long, path.dirname(long), 'lib/big.bin', 'lib/empty.py']);
      const got = await members(d.data);
      expect(got.map((m) => [m.name, m.mode, m.body.length, m.mtime])).toEqual([
        ['lib/big.bin', 0o644, 70000, MTIME],
        [path.dirname(long), 0o755, 0, MTIME],
        [long, 0o600, 12, MTIME],
        ['lib/empty.py', 0o644, 0, MTIME],
      ]);
      // One byte of a header changed: its checksum no longer holds.
      const raw = gunzipSync(readFileSync(file));
      raw[101]! ^= 1; // in the first header (its mode field)
      writeFileSync(file, gzipSync(raw));
      await expect(makeDeltaArchive(file, [long])).rejects.toThrow(/checksum/);
    }
  });

  it('is empty for an empty need list', async () => {
    expect(await members((await makeDeltaArchive(await release(), [])).data)).toEqual([]);
  });

  it('fails naming a needed file the archive does not have', async () => {
    await expect(makeDeltaArchive(await release(), ['src/a.py', 'src/missing.py'])).rejects.toThrow(
      /1 files a host needs are not in the artifact's archive, e\.g\. src\/missing\.py/,
    );
  });

  it('fails on a damaged archive', async () => {
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'ckan-release-delta-')), 'release.tar.gz');
    writeFileSync(file, Buffer.from('not a gzip file at all'));
    await expect(makeDeltaArchive(file, ['x'])).rejects.toThrow();
  });

  it('is made once per distinct need list; the archive mtime is read from its first member', async () => {
    const cache = new DeltaCache(await release());
    const [a, b, c] = await Promise.all([
      cache.get(['src/a.py']),
      cache.get(['src/a.py']),
      cache.get(['src/b.py']),
    ]);
    expect(a).toBe(b);
    expect(c).not.toBe(a);
    expect(await cache.mtime()).toBe(946684800);
    expect(await archiveMtime(await release())).toBe(946684800);
  });

  it("guesses the files a host will ask for from its releases' manifests, once per set of releases", async () => {
    const cache = new DeltaCache(await release());
    const f = (p: string, sha: string, size = 10) => ({ path: p, type: 'file', size, sha256: sha });
    const m = {
      id: 'B',
      files: [f('src/b.py', 'b2'), f('src/a.py', 'a'), { path: 'src', type: 'dir', size: 0 }],
    };
    const read: string[] = [];
    const manifests: Record<string, { files: { type: string; sha256: string }[] }> = {
      A: {
        files: [
          { type: 'file', sha256: 'a' },
          { type: 'file', sha256: 'b1' },
        ],
      },
    };
    const manifestOf = (id: string) => (read.push(id), manifests[id] ?? null);
    expect(cache.guessNeed(m, ['A', 'B'], manifestOf, 0.5)).toEqual(['src/b.py']);
    expect(cache.guessNeed(m, ['B', 'A'], manifestOf, 0.5)).toEqual(['src/b.py']);
    expect(read).toEqual(['A']);
    // Nothing known of the host's releases, or a guess beyond the share a delta is sent for: none.
    expect(cache.guessNeed(m, ['X'], manifestOf, 0.5)).toBeNull();
    expect(cache.guessNeed(m, [], manifestOf, 0.5)).toBeNull();
    expect(new DeltaCache('unused').guessNeed(m, ['A'], manifestOf, 0.4)).toBeNull();
  });
});
