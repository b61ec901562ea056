// The warm build's archive assembled on the build machine from the members the container sent and the
// members of the newest local artifacts (src/builder/members.ts).
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { assembleArchive, localMembers } from '../../src/builder/members.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const member = (text: string) => gzipSync(Buffer.from(text.repeat(1000)));
const work = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-members-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** An artifact in the store whose archive is these members, with its manifest's chunk list. */
function artifact(store: string, id: string, members: Buffer[], chunks = true): void {
  const dir = path.join(store, id);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'release.tar.gz'), Buffer.concat(members));
  const archive = {
    file: 'release.tar.gz',
    bytes: members.reduce((n, m) => n + m.length, 0),
    sha256: sha256(Buffer.concat(members)),
    ...(chunks ? { chunks: members.map((m) => ({ bytes: m.length, sha256: sha256(m) })) } : {}),
  };
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ id, archive, files: [] }));
}

describe('a warm archive assembled from local members', () => {
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map(member) as [Buffer, Buffer, Buffer, Buffer, Buffer];
  const store = path.join(work, 'store');
  artifact(store, '20260101000000Z-00000001', [a, b]);
  artifact(store, '20260102000000Z-00000002', [b, c]);
  artifact(store, '20260103000000Z-00000003', [e], false); // before chunks were recorded: lends nothing

  it('knows the members of the newest artifacts that record their chunks', () => {
    const local = localMembers(store);
    expect([...local.keys()].sort()).toEqual([a, b, c].map(sha256).sort());
    expect(local.get(sha256(c))).toMatchObject({ offset: b.length, bytes: c.length });
    expect(localMembers(store, 1).size).toBe(0);
    expect(localMembers(path.join(work, 'none')).size).toBe(0);
  });

  it('writes the whole archive from the sent members and the local ones, in order', () => {
    const whole = [c, d, a, d, b];
    const sent = path.join(work, 'sent.gz');
    writeFileSync(sent, Buffer.concat([d, d]));
    const out = path.join(work, 'release.tar.gz');
    const chunks = whole.map((m) => ({ bytes: m.length, sha256: sha256(m) }));
    const got = assembleArchive(chunks, localMembers(store), sent, out);
    expect(readFileSync(out).equals(Buffer.concat(whole))).toBe(true);
    // The whole archive's sha256, hashed as it was written: what the store checks.
    expect(got).toBe(sha256(readFileSync(out)));
    expect(gunzipSync(readFileSync(out)).toString()).toBe(
      ['c', 'd', 'a', 'd', 'b'].map((t) => t.repeat(1000)).join(''),
    );
  });

  it('refuses a damaged local member or a short sent file, naming it', () => {
    const chunks = [a, d].map((m) => ({ bytes: m.length, sha256: sha256(m) }));
    const sent = path.join(work, 'sent-short.gz');
    writeFileSync(sent, d.subarray(0, 10));
    expect(() => assembleArchive(chunks, localMembers(store), sent, path.join(work, 'x.tar.gz'))).toThrow(
      /member 1 \(sha256 [0-9a-f]{64}\) sent by the build container is damaged or short/,
    );
    const first = path.join(store, '20260101000000Z-00000001', 'release.tar.gz');
    const bytes = readFileSync(first);
    bytes[5] = bytes[5]! ^ 0xff;
    writeFileSync(first, bytes);
    writeFileSync(sent, d);
    expect(() => assembleArchive(chunks, localMembers(store), sent, path.join(work, 'y.tar.gz'))).toThrow(
      /member 0 \(sha256 [0-9a-f]{64}\) in .*20260101000000Z-00000001\/release\.tar\.gz is damaged or short/,
    );
  });
});
