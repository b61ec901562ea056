// Checks of a built artifact shared by the build tests: the pack's own report line, and the archive
// unpacked by the system's tar against its manifest.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';

export const PACK_LINE =
  /pack: (\d+) entries in (\d+) chunks, (\d+) compressed, (\d+) from the cache(?:, (\d+) damaged cache entries replaced)?, [\d.]+ MB/;

export interface PackLine {
  entries: number;
  chunks: number;
  compressed: number;
  cached: number;
  damaged: number;
}

export function packLine(output: string): PackLine {
  const m = PACK_LINE.exec(output);
  expect(m, output).not.toBeNull();
  return {
    entries: Number(m![1]),
    chunks: Number(m![2]),
    compressed: Number(m![3]),
    cached: Number(m![4]),
    damaged: Number(m![5] ?? 0),
  };
}

/** Unpacks the artifact with the system's tar and checks it against its manifest, entry by entry. */
export function expectArchiveMatches(dir: string, manifest: Manifest): void {
  const out = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-unpack-'));
  execFileSync('tar', ['-xzf', path.join(dir, 'release.tar.gz'), '-C', out]);
  const listed = new Set<string>();
  for (const f of manifest.files) {
    listed.add(f.path);
    const p = path.join(out, f.path);
    const st = lstatSync(p);
    expect((st.mode & 0o7777).toString(8).padStart(4, '0'), f.path).toBe(f.mode);
    if (f.type === 'file') {
      expect(st.isFile(), f.path).toBe(true);
      expect(st.size, f.path).toBe(f.size);
      expect(sha256(p), f.path).toBe(f.sha256);
    } else if (f.type === 'symlink') {
      expect(readlinkSync(p), f.path).toBe(f.target);
    } else {
      expect(st.isDirectory(), f.path).toBe(true);
    }
  }
  const onDisk: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(out, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      onDisk.push(r);
      if (lstatSync(path.join(out, r)).isDirectory()) walk(r);
    }
  };
  walk('');
  expect(onDisk.filter((p) => !listed.has(p))).toEqual([]);
  expect(onDisk.length).toBe(manifest.files.length);
}

export function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}
