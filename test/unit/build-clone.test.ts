// The builder script's clone by hard links from a base copy, and its pack without reading unchanged
// files, run by each interpreter the script must run on (CentOS 7's Python 2.7 and 3.6, python3)
// against temporary directories: no Docker. The base copy must come out of a build byte-identical
// (pip replacing a file of the base, a write through a link is caught and the copy dropped), the
// manifest of the shared files must equal a full read's, and the pack from the cache must be the
// bytes of a full pack without reading the files of the chunks it found there.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BUILD_SCRIPT } from '../../src/builder/build.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const CLONE_CHECK = String.raw`
import hashlib, json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import ckan_release_build as b
work = sys.argv[2]
out = {}
b.log = lambda text: None

def write(top, rel, data, mode=0o644):
    path = os.path.join(top, rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)

def read(path):
    with open(path, "rb") as f:
        return f.read()

def tree(top):
    """path -> (mode, bytes) of every file, and the links: what byte-identical means here."""
    got = {}
    for path in b.walk(top):
        st = os.lstat(path)
        rel = os.path.relpath(path, top)
        if os.path.islink(path):
            got[rel] = ("link", os.readlink(path))
        elif os.path.isfile(path):
            got[rel] = ("%o" % st.st_mode, hashlib.sha256(read(path)).hexdigest())
    return got

# The base venv as the base step leaves it: a script naming its path (listed: rewritten by the clone),
# sources at the fixed mtime, bytecode, a package that pip will replace, a large file.
base = os.path.join(work, "base")
write(base, "bin/tool", b"#!" + base.encode() + b"/bin/python\nprint('tool')\n", 0o755)
write(base, "lib/pkg/__init__.py", b"VERSION = 1\n")
write(base, "lib/pkg/__pycache__/__init__.cpython-36.pyc", b"bytecode")
write(base, "lib/old/mod.py", b"X = 1\n")
write(base, "lib/old/RECORD", b"old/mod.py,,\n")
write(base, "lib/big.dat", b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(40000)))
os.symlink("pkg", os.path.join(base, "lib", "alias"))
subprocess.check_call(["find", base, "-exec", "touch", "-h", "-d", "@%d" % b.FIXED_MTIME, "{}", "+"])
named = ["bin/tool"]
b.BASE_FILES = os.path.join(work, "base-files.json")
with open(b.BASE_FILES, "w") as f:
    f.write(json.dumps(b.base_files(base, named)))
before = tree(base)
releases = os.path.join(work, "releases")
os.makedirs(releases)

def clone(name):
    copy = b.BaseCopy(releases, "key1", base)
    copy.prepare()
    release = os.path.join(releases, name)
    subprocess.check_call(["cp", "-al", copy.venv, release])
    b.rewrite_paths(release, base, release, named)
    return copy, release, copy.record()

# Build 1: pip reinstalls lib/old as pip does (the old files renamed away and deleted, new ones
# written), an extension arrives, and something writes into lib/big.dat in place, through its link.
copy, release, shared = clone("r1")
out["first_shared"] = len(shared)
out["rewritten_is_own_file"] = os.lstat(os.path.join(release, "bin", "tool")).st_ino not in shared
os.rename(os.path.join(release, "lib", "old"), os.path.join(work, "stash"))
subprocess.check_call(["rm", "-rf", os.path.join(work, "stash")])
write(release, "lib/old/mod.py", b"X = 1\n")
write(release, "lib/old/RECORD", b"old/mod.py,,\n")
write(release, "src/ext/plugin.py", b"PLUGIN = 1\n")
with open(os.path.join(release, "lib", "big.dat"), "r+b") as f:
    f.seek(1000)
    f.write(b"written through the link")
b.compile_tree(sys.executable, release, "/srv/current", force=False, shared=shared)
known, changed = copy.check()
out["first_changed"] = changed
copy.finish(changed)
out["copy_dropped"] = not os.path.exists(copy.dir)
subprocess.check_call(["rm", "-rf", release])

# Build 2: the copy is made again from the base; the same reinstall, no write through a link.
copy, release, shared = clone("r2")
out["remade_equal"] = tree(copy.venv) == before
os.rename(os.path.join(release, "lib", "old"), os.path.join(work, "stash"))
subprocess.check_call(["rm", "-rf", os.path.join(work, "stash")])
write(release, "lib/old/mod.py", b"X = 1\n")
write(release, "lib/old/RECORD", b"old/mod.py,,\n")
write(release, "src/ext/plugin.py", b"PLUGIN = 1\n")
b.compile_tree(sys.executable, release, "/srv/current", force=False, shared=shared)
known, changed = copy.check()
out["second_changed"] = changed
out["known"] = len(known)
files, offenders = b.manifest(release, base, known)
full, _ = b.manifest(release, base)
out["manifest_equal"] = files == full
out["offenders"] = offenders
copy.finish(changed)
out["copy_kept"] = os.path.exists(os.path.join(copy.venv, "lib", "big.dat")) and not os.path.exists(
    os.path.join(copy.dir, "dirty"))
out["copy_equal"] = tree(copy.venv) == before
out["base_equal"] = tree(base) == before

# Pack: without a cache (every file read), with an empty cache, and from the cache after the large
# file was changed behind the manifest's back (same size): a cached chunk reads none of its files.
cache = os.path.join(work, "cache")
full_pack = b.pack(release, files, os.path.join(work, "full.tar.gz"), None)
cold = b.pack(release, files, os.path.join(work, "cold.tar.gz"), cache)
big = os.path.join(release, "lib", "big.dat")
data = bytearray(read(big))
data[5] ^= 0xFF
os.unlink(big)
write(release, "lib/big.dat", bytes(data))
warm = b.pack(release, files, os.path.join(work, "warm.tar.gz"), cache)
out["packs"] = [dict((k, s[k]) for k in ("chunks", "compressed", "cached", "sha256")) for s in (full_pack, cold, warm)]
out["archives_equal"] = read(os.path.join(work, "full.tar.gz")) == read(os.path.join(work, "warm.tar.gz"))
# Without the cache the changed file is read, and refused: the archive holds what the manifest says.
try:
    b.pack(release, files, os.path.join(work, "again.tar.gz"), None)
    out["refused"] = None
except b.BuildFailure as e:
    out["refused"] = e.message

# A copy whose file changed mode between builds is made again before it is used.
os.chmod(os.path.join(copy.venv, "lib", "pkg", "__init__.py"), 0o600)
copy = b.BaseCopy(releases, "key1", base)
out["damaged_entry"] = copy.damaged_entry()
print(json.dumps(out))
`;

interface CloneResult {
  first_shared: number;
  rewritten_is_own_file: boolean;
  first_changed: string[];
  copy_dropped: boolean;
  remade_equal: boolean;
  second_changed: string[];
  known: number;
  manifest_equal: boolean;
  offenders: string[];
  copy_kept: boolean;
  copy_equal: boolean;
  base_equal: boolean;
  packs: { chunks: number; compressed: number; cached: number; sha256: string }[];
  archives_equal: boolean;
  refused: string | null;
  damaged_entry: string | null;
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.each(TEST_PYTHONS)('the builder clone on Python $label', (py) => {
  it('hard-links the base copy, keeps it byte-identical or drops it, and packs the unchanged from the cache', () => {
    const python = requirePython(py);
    const work = mkdtempSync(path.join(os.tmpdir(), `ckan-release-clone-${py.label}-`));
    dirs.push(work);
    const r = JSON.parse(
      execFileSync(python, ['-c', CLONE_CHECK, path.dirname(BUILD_SCRIPT), work], {
        encoding: 'utf8',
        env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
      })
        .split('\n')
        .filter(Boolean)
        .pop()!,
    ) as CloneResult;
    // Six files in the list (the script naming the base path is not: the clone rewrites it).
    expect(r.first_shared).toBe(5);
    expect(r.rewritten_is_own_file).toBe(true);
    // pip's reinstall moved lib/old's inodes (removed links) but not their bytes; the write did.
    expect(r.first_changed).toEqual(['lib/big.dat']);
    expect(r.copy_dropped).toBe(true);
    expect(r.remade_equal).toBe(true);
    expect(r.second_changed).toEqual([]);
    // Still shared and unchanged: lib/pkg/__init__.py, its bytecode, lib/big.dat.
    expect(r.known).toBe(5);
    expect(r.manifest_equal).toBe(true);
    expect(r.offenders).toEqual([]);
    expect(r.copy_kept).toBe(true);
    expect(r.copy_equal).toBe(true);
    expect(r.base_equal).toBe(true);
    const [full, cold, warm] = r.packs;
    expect(cold!.compressed).toBe(cold!.chunks);
    expect(warm!.cached).toBe(warm!.chunks);
    expect(new Set(r.packs.map((p) => p.sha256)).size).toBe(1);
    expect(full!.chunks).toBe(cold!.chunks);
    expect(r.archives_equal).toBe(true);
    expect(r.refused).toBe('lib/big.dat changed while the release was packed');
    expect(r.damaged_entry).toBe("lib/pkg/__init__.py differs from the base image's");
  });
});
