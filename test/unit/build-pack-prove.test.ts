// The warm pack's members checked ahead (Prover, during the install) and not read again, run by each
// interpreter the builder script must run on (CentOS 7's Python 2.7 and 3.6, python3) against
// temporary directories: no Docker. The archive a warm pack leads to must be byte for byte the one a
// pack without any cache writes; a member is trusted only under the key it was proved for and only
// with the bytes proved (one changed in the cache afterwards, or damaged before, is compressed again);
// the files of a proved chunk are not read.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BUILD_SCRIPT } from '../../src/builder/build.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const PROVE_CHECK = String.raw`
import hashlib, io, json, os, shutil, sys
sys.path.insert(0, sys.argv[1])
import ckan_release_build as b
work = sys.argv[2]
out = {}
b.log = lambda text: None

def write(top, rel, data):
    path = os.path.join(top, rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (b.FIXED_MTIME, b.FIXED_MTIME))

def read(path):
    with open(path, "rb") as f:
        return f.read()

def blob(seed, size):
    # Incompressible enough that chunks stay about the size of their files.
    out, n = [], 0
    while n < size:
        d = hashlib.sha256(("%s-%d" % (seed, n)).encode()).digest()
        out.append(d)
        n += len(d)
    return b"".join(out)[:size]

# Five packages of 1.2 MB each at depth 4 (lib/python3.11/site-packages/<pkg>): a chunk each.
rel = os.path.join(work, "release")
for p in range(5):
    for i in range(4):
        write(rel, "lib/python3.11/site-packages/pkg%d/mod%d.py" % (p, i), blob("%d-%d" % (p, i), 300000))
write(rel, "RELEASE.json", b"{}\n")

def files_of(top):
    files, _ = b.manifest(top, "/nonexistent-base")
    return files

def members_of(archive_stats, archive):
    """sha256 -> bytes of each member of an archive written whole."""
    data, at, got = read(archive), 0, {}
    for m in archive_stats["members"]:
        got[m["sha256"]] = data[at:at + m["bytes"]]
        at += m["bytes"]
    return got

def assemble(stats, sent, local):
    """What the build machine does (members.ts): each member from the local ones or the next sent."""
    data, at, parts = read(sent), 0, []
    for m in stats["members"]:
        if m["sha256"] in local:
            parts.append(local[m["sha256"]])
        else:
            parts.append(data[at:at + m["bytes"]])
            at += m["bytes"]
        assert hashlib.sha256(parts[-1]).hexdigest() == m["sha256"]
    return b"".join(parts)

cache = os.path.join(work, "cache")
out["no_guess"] = len(b.Prover(cache).result())

# Build 1 (cold): every chunk compressed; its files list kept as the next build's guess.
files1 = files_of(rel)
cold = b.pack(rel, files1, os.path.join(work, "cold.gz"), cache)
local = members_of(cold, os.path.join(work, "cold.gz"))
with io.open(os.path.join(work, "files.json"), "w", encoding="utf-8") as f:
    f.write(u"%s" % json.dumps(files1))
b.PackCache(cache).remember(os.path.join(work, "files.json"))

# One cached member damaged before the prover runs: not proved, and the pack finds it damaged.
victim = b.PackCache(cache).path(list(b.tar_chunks(files1))[1])
data = read(victim)
with open(victim, "wb") as f:
    f.write(data[:-4])

# Build 2: pkg2 changed; the prover checks the last release's chunks while "the install" runs.
prover = b.Prover(cache)
write(rel, "lib/python3.11/site-packages/pkg2/mod1.py", blob("changed", 300000))
prover.thread.join()  # an install long enough for the prover to finish (the pack stops it otherwise)
proved = prover.result()
out["chunks"] = cold["chunks"]
out["proved"] = len(proved)
files2 = files_of(rel)
reference = b.pack(rel, files2, os.path.join(work, "reference.gz"), None)
# A file of a proved, unchanged chunk changed behind the manifest's back (same size): not read.
write(rel, "lib/python3.11/site-packages/pkg4/mod0.py", blob("behind", 300000))
warm = b.pack(rel, files2, os.path.join(work, "warm.gz"), cache, set(local), proved)
out["warm"] = dict((k, warm[k]) for k in ("chunks", "compressed", "cached", "damaged", "proved", "skipped"))
out["warm_sha256"] = warm["sha256"]
out["warm_members_equal"] = warm["members"] == reference["members"]
whole = assemble(warm, os.path.join(work, "warm.gz"), local)
out["warm_archive_equal"] = whole == read(os.path.join(work, "reference.gz"))
out["reference_sha256_equal"] = hashlib.sha256(whole).hexdigest() == reference["sha256"]

# A proved member replaced in the cache after it was proved (another valid member), and not on the
# build machine: the pack notices it is not the bytes proved, compresses the chunk again.
write(rel, "lib/python3.11/site-packages/pkg4/mod0.py", blob("4-0", 300000))
chunks2 = list(b.tar_chunks(files2))
target = b.PackCache(cache).path(chunks2[3])
shutil.copyfile(b.PackCache(cache).path(chunks2[0]), target)
again = b.pack(rel, files2, os.path.join(work, "again.gz"), cache, set(), proved)
out["again"] = dict((k, again[k]) for k in ("chunks", "compressed", "cached", "damaged", "proved", "skipped"))
out["again_archive_equal"] = read(os.path.join(work, "again.gz")) == read(os.path.join(work, "reference.gz"))
out["again_sha256_equal"] = again["sha256"] == reference["sha256"]
print(json.dumps(out))
`;

interface Counts {
  chunks: number;
  compressed: number;
  cached: number;
  damaged: number;
  proved: number;
  skipped: number;
}

interface ProveResult {
  no_guess: number;
  chunks: number;
  proved: number;
  warm: Counts;
  warm_sha256: string | null;
  warm_members_equal: boolean;
  warm_archive_equal: boolean;
  reference_sha256_equal: boolean;
  again: Counts;
  again_archive_equal: boolean;
  again_sha256_equal: boolean;
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.each(TEST_PYTHONS)('the warm pack on Python $label', (py) => {
  it('trusts only the members proved against their chunks, reads none of their files, and writes the very archive of a pack without cache', () => {
    const python = requirePython(py);
    const work = mkdtempSync(path.join(os.tmpdir(), `ckan-release-prove-${py.label}-`));
    dirs.push(work);
    const r = JSON.parse(
      execFileSync(python, ['-c', PROVE_CHECK, path.dirname(BUILD_SCRIPT), work], {
        encoding: 'utf8',
        env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
      })
        .split('\n')
        .filter(Boolean)
        .pop()!,
    ) as ProveResult;
    // No files list of an earlier pack: nothing to check ahead.
    expect(r.no_guess).toBe(0);
    // The chunks: RELEASE.json with pkg0 (cut once it holds 1 MB), pkg1..pkg4, the end blocks.
    expect(r.chunks).toBe(6);
    // All the last release's members but the one damaged before the prover ran.
    expect(r.proved).toBe(r.chunks - 1);
    // pkg2's chunk is new; the damaged one (pkg1) is found by the pack and compressed again, to the
    // bytes the build machine has; the other four are proved, on the build machine already, and not
    // read (the archive's sha256 is then the build machine's to compute).
    expect(r.warm).toEqual({ chunks: 6, compressed: 2, cached: 4, damaged: 1, proved: 4, skipped: 5 });
    expect(r.warm_sha256).toBeNull();
    expect(r.warm_members_equal).toBe(true);
    expect(r.warm_archive_equal).toBe(true);
    expect(r.reference_sha256_equal).toBe(true);
    // pkg3's member swapped for another valid one after the proof: compressed again, not sent; pkg1
    // and pkg2 (in the cache since the warm pack) are checked by the pack itself, as without a proof.
    expect(r.again).toEqual({ chunks: 6, compressed: 1, cached: 5, damaged: 1, proved: 3, skipped: 0 });
    expect(r.again_archive_equal).toBe(true);
    expect(r.again_sha256_equal).toBe(true);
  });
});
