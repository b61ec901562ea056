// The local artifact store: listing newest first, ID prefixes, and only complete artifacts.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { findArtifact, listArtifacts } from '../../src/artifact/store.js';
import { artifactId } from '../../src/artifact/id.js';
import { UsageError } from '../../src/errors.js';

function store(...ids: string[]): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-store-'));
  for (const id of ids) {
    mkdirSync(path.join(dir, id));
    writeFileSync(
      path.join(dir, id, 'manifest.json'),
      JSON.stringify({ id, created: 'x', archive: { file: 'release.tar.gz', bytes: 1, sha256: 'ab' } }),
    );
  }
  return dir;
}

describe('artifact IDs', () => {
  it('are the UTC build time and 8 hex digits of the inputs digest', () => {
    expect(artifactId(new Date('2026-11-21T23:05:09.123Z'), 'deadbeefcafe')).toBe('20261121230509Z-deadbeef');
  });
});

describe('the store', () => {
  const a = '20261120100000Z-aaaaaaaa';
  const b = '20261121100000Z-bbbbbbbb';
  const c = '20261121100000Z-bbbbcccc';

  it('lists complete artifacts newest first, ignoring staging directories and logs', () => {
    const dir = store(a, b);
    mkdirSync(path.join(dir, `.staging-${c}-1`));
    mkdirSync(path.join(dir, '20261122100000Z-dddddddd')); // no manifest: a crashed copy, not an artifact
    mkdirSync(path.join(dir, '.logs'));
    expect(listArtifacts(dir).map((x) => x.id)).toEqual([b, a]);
  });

  it('finds an artifact by a unique prefix', () => {
    const dir = store(a, b, c);
    expect(findArtifact(dir, '20261120').id).toBe(a);
    expect(findArtifact(dir, '20261121100000Z-bbbbc').id).toBe(c);
    expect(findArtifact(dir, b).id).toBe(b);
  });

  it('an ambiguous prefix lists the candidates; an unknown one is bad input', () => {
    const dir = store(a, b, c);
    expect(() => findArtifact(dir, '20261121')).toThrow(
      new UsageError(`artifact ID "20261121" is ambiguous: ${c}, ${b}`),
    );
    expect(() => findArtifact(dir, '2025')).toThrow(UsageError);
    expect(() => findArtifact(dir, '2025')).toThrow(`no artifact "2025" in ${dir}`);
  });

  it('a manifest that names another ID is refused', () => {
    const dir = store(a);
    writeFileSync(
      path.join(dir, a, 'manifest.json'),
      JSON.stringify({ id: b, archive: { file: 'release.tar.gz' } }),
    );
    expect(() => findArtifact(dir, a)).toThrow(`artifact ${a}: its manifest says it is ${b}`);
  });
});
