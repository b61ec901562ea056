// The delta archive: exactly the needed files of release.tar.gz, with their modes and mtimes, and an
// error naming a needed file the archive does not have.
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { archiveMtime, DeltaCache, makeDeltaArchive } from '../../src/deploy/delta.js';

const MTIME = new Date(946684800 * 1000);

async function tarGz(entries: Partial<tarStream.Header>[], bodies: Record<string, string>): Promise<string> {
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
  writeFileSync(file, gzipSync(Buffer.concat(chunks)));
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

const release = () =>
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
});
