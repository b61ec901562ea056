// The builder script (assets/builder/ckan_release_build.py) and the host agent
// (assets/host/ckan_release_host.py) run on CentOS 7's Python 2.7 and 3.6 as well as today's python3:
// their own code, run by each interpreter against temporary directories (no Docker, no SSH).
//   - the builder's path rewrite, bytecode compile and stale-bytecode removal, manifest and pack (with
//     its cache, a damaged cache entry, and GNU tar's bytes as the reference);
//   - the agent's commands as the tool calls them (argv JSON, stdin): setup, lock, facts, receive of
//     the packed archive, finalize, switch, ledger, delta + delta receive, verify, a refused cut
//     archive, clean, prune, health against a local status_show, unlock.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { archiveMtime, makeDeltaArchive } from '../../src/deploy/delta.js';
import { BUILD_SCRIPT } from '../../src/builder/build.js';
import { hostRollbackTarget, prunePlan, type HostFacts } from '../../src/plan.js';
import { agent, ok } from '../support/agent-run.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const BUILDER_CHECK = String.raw`
import hashlib, json, os, shutil, subprocess, sys, zlib
sys.path.insert(0, sys.argv[1])
import ckan_release_build as b
work = sys.argv[2]
BASE = "/opt/ckan-release/base-venv"
CURRENT = "/srv/ckan/current"
out = {}

def write(rel, top, data, mode=0o644):
    path = os.path.join(top, rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)

# A clone of the base venv: files and a link that name the base path, as the base step listed them.
rel = os.path.join(work, "rel")
write("bin/tool", rel, b"#!" + BASE.encode() + b"/bin/python\nprint('tool')\n", 0o755)
write("lib/blob.so", rel, b"\x7fELF\0" + BASE.encode() + b"\0")
write("lib/pkg/stale.pyc", rel, b"bytecode of the base")
os.symlink(BASE + "/lib/pkg", os.path.join(rel, "lib", "link"))
changed, binaries = b.rewrite_paths(rel, BASE, rel, ["bin/tool", "lib/blob.so", "lib/link", "lib/pkg/stale.pyc"])
with open(os.path.join(rel, "bin", "tool"), "rb") as f:
    tool = f.read()
out["rewrite"] = {"changed": changed, "binaries": binaries, "tool": tool.decode(),
                  "tool_mode": "%o" % (os.stat(os.path.join(rel, "bin", "tool")).st_mode & 0o777),
                  "link": os.readlink(os.path.join(rel, "lib", "link")),
                  "stale_gone": not os.path.exists(os.path.join(rel, "lib", "pkg", "stale.pyc"))}
os.unlink(os.path.join(rel, "lib", "blob.so"))
long_line = b"#!" + b"/very/long" * 14 + b"/bin/python\nimport x\n"
out["trampoline"] = b.fix_shebang(long_line, "bin/x").decode()

# Bytecode: compiled with fixed mtimes naming <current>/..., then a changed and a removed source.
write("lib/pkg/__init__.py", rel, b"VERSION = 1\n")
write("lib/pkg/mod.py", rel, b"def f():\n    return 1\n")
write("lib/pkg/gone.py", rel, b"X = 1\n")
b.compile_tree(sys.executable, rel, CURRENT, force=True)
src = lambda name: os.path.join(rel, "lib", "pkg", name)
compiled = lambda name: [p for p in b.bytecode_of(src(name)) if os.path.exists(p)]
with open(compiled("mod.py")[0], "rb") as f:
    out["names_current"] = (CURRENT + "/lib/pkg/mod.py").encode() in f.read()
out["compiled"] = dict((n, len(compiled(n))) for n in ("__init__.py", "mod.py", "gone.py"))
write("lib/pkg/mod.py", rel, b"def f():\n    return 2\n")
os.unlink(src("gone.py"))
out["dropped"] = b.drop_stale_bytecode(rel)
out["after_drop"] = dict((n, len(compiled(n))) for n in ("__init__.py", "mod.py"))
out["orphans_left"] = len(b.orphan_bytecode(os.path.join(rel, "lib", "pkg"), os.listdir(os.path.join(rel, "lib", "pkg"))))
b.compile_tree(sys.executable, rel, CURRENT, force=False)
out["recompiled"] = len(compiled("mod.py"))

# Manifest and pack: twice (the second from the cache), then with a cache member cut short.
files, offenders = b.manifest(rel, BASE)
out["offenders"] = offenders
cache = os.path.join(work, "cache")
stats = []
for name in ("a1", "a2"):
    stats.append(b.pack(rel, files, os.path.join(work, name + ".tar.gz"), cache))
members = sorted(os.listdir(os.path.join(cache, "gzip-members")))
victim = os.path.join(cache, "gzip-members", members[0])
with open(victim, "rb") as f:
    data = f.read()
with open(victim, "wb") as f:
    f.write(data[:-4])  # the gzip trailer cut: all content inflates, the member has no end
stats.append(b.pack(rel, files, os.path.join(work, "a3.tar.gz"), cache))
out["pack"] = [dict((k, s[k]) for k in ("chunks", "compressed", "cached", "damaged", "sha256")) for s in stats]
raw = b"x" * 100000
member = b.gzip_member(raw)
out["member_holds"] = [b.member_holds(member, raw), b.member_holds(member[:-4], raw),
                       b.member_holds(member + member, raw), b.member_holds(member, raw[:-1])]
# GNU tar writes the same tar bytes.
names = b"".join(("./" + e["path"]).encode() + b"\0" for e in files)
gnu = subprocess.Popen(["tar", "--numeric-owner", "--owner=0", "--group=0", "--mtime=@%d" % b.FIXED_MTIME,
                        "--no-recursion", "--null", "-C", rel, "-T", "-", "-cf", "-"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE).communicate(names)[0]
with open(os.path.join(work, "a1.tar.gz"), "rb") as f:
    ours = zlib.decompressobj(31)
    mine, rest = b"", f.read()
    while rest:
        mine += ours.decompress(rest)
        rest = ours.unused_data
        ours = zlib.decompressobj(31)
out["gnu_tar_equal"] = mine == gnu
with open(os.path.join(work, "files-a.json"), "w") as f:
    f.write(json.dumps(files))

# Release B: release A with one source changed.
rel_b = os.path.join(work, "rel-b")
subprocess.check_call(["cp", "-a", rel, rel_b])
write("lib/pkg/__init__.py", rel_b, b"VERSION = 2\n")
subprocess.check_call(["touch", "-h", "-d", "@%d" % b.FIXED_MTIME, os.path.join(rel_b, "lib", "pkg", "__init__.py")])
files_b, _ = b.manifest(rel_b, BASE)
b.pack(rel_b, files_b, os.path.join(work, "b.tar.gz"), None)
with open(os.path.join(work, "files-b.json"), "w") as f:
    f.write(json.dumps(files_b))
print(json.dumps(out))
`;

interface BuilderResult {
  rewrite: {
    changed: number;
    binaries: string[];
    tool: string;
    tool_mode: string;
    link: string;
    stale_gone: boolean;
  };
  trampoline: string;
  names_current: boolean;
  compiled: Record<string, number>;
  dropped: number;
  after_drop: Record<string, number>;
  orphans_left: number;
  recompiled: number;
  offenders: string[];
  pack: { chunks: number; compressed: number; cached: number; damaged: number; sha256: string }[];
  member_holds: boolean[];
  gnu_tar_equal: boolean;
}

const ID_0 = '20251231000000Z-00000001';
const ID_A = '20260101000000Z-aaaaaaaa';
const ID_B = '20260102000000Z-bbbbbbbb';
const ID_C = '20260103000000Z-cccccccc';

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.each(TEST_PYTHONS)('the scripts on Python $label', (py) => {
  const work = mkdtempSync(path.join(os.tmpdir(), `ckan-release-py-${py.label}-`));
  dirs.push(work);
  let builder: BuilderResult;

  it('builder: path rewrite, bytecode, manifest and pack', () => {
    const python = requirePython(py);
    builder = JSON.parse(
      execFileSync(python, ['-c', BUILDER_CHECK, path.dirname(BUILD_SCRIPT), work], {
        encoding: 'utf8',
        env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
      })
        .split('\n')
        .filter(Boolean)
        .pop()!,
    ) as BuilderResult;
    const rel = path.join(work, 'rel');
    expect(builder.rewrite).toEqual({
      changed: 2,
      binaries: ['lib/blob.so'],
      tool: `#!${rel}/bin/python\nprint('tool')\n`,
      tool_mode: '755',
      link: `${rel}/lib/pkg`,
      stale_gone: true,
    });
    expect(builder.trampoline).toMatch(
      /^#!\/bin\/sh\n'''exec' "\/very\/long.*\/bin\/python" "\$0" "\$@"\n' '''\nimport x\n$/,
    );
    expect(builder.names_current).toBe(true);
    expect(builder.compiled).toEqual({ '__init__.py': 1, 'mod.py': 1, 'gone.py': 1 });
    // The changed source's bytecode and the removed source's go; the unchanged one's stays.
    expect(builder.dropped).toBe(2);
    expect(builder.after_drop).toEqual({ '__init__.py': 1, 'mod.py': 0 });
    expect(builder.orphans_left).toBe(0);
    expect(builder.recompiled).toBe(1);
    expect(builder.offenders).toEqual([]);
    const [first, second, third] = builder.pack;
    expect(first!.compressed).toBe(first!.chunks);
    expect(second!.cached).toBe(second!.chunks);
    expect(third).toMatchObject({ damaged: 1, cached: third!.chunks - 1 });
    expect(new Set(builder.pack.map((s) => s.sha256)).size).toBe(1);
    expect(builder.member_holds).toEqual([true, false, false, false]);
    expect(builder.gnu_tar_equal).toBe(true);
  });

  it('agent: setup, lock, receive, finalize, switch, delta, verify, prune, health, unlock', async () => {
    const python = requirePython(py);
    expect(builder, 'the builder check above made the archives').toBeDefined();
    const root = path.join(work, 'root');
    const manifestFor = (id: string, files: string, archive: string) => {
      const data = readFileSync(archive);
      const file = path.join(work, `manifest-${id}.json`);
      writeFileSync(
        file,
        JSON.stringify({
          id,
          files: JSON.parse(readFileSync(path.join(work, files), 'utf8')) as unknown[],
          archive: { file: 'release.tar.gz', bytes: data.length, sha256: sha256(data) },
        }),
      );
      return file;
    };
    const archiveA = path.join(work, 'a1.tar.gz');
    const archiveB = path.join(work, 'b.tar.gz');
    const mA = manifestFor(ID_A, 'files-a.json', archiveA);
    const mB = manifestFor(ID_B, 'files-b.json', archiveB);
    const mC = manifestFor(ID_C, 'files-a.json', archiveA);
    const m0 = manifestFor(ID_0, 'files-a.json', archiveA);
    const owner = { token: 'op1', user: 'test', machine: 'here', pid: 1, operation: 'ship' };

    expect(await ok(python, 'setup', { root, shared: ['data'] })).toMatchObject({ adopted: null });
    // Where the tool uploads each operation's manifest.
    mkdirSync(path.join(root, '.ckan-release', 'tmp'));
    expect(await ok(python, 'lock', { root, owner, ttl: 600 })).toEqual({ locked: true, taken_over: null });
    const busy = await agent(python, 'lock', { root, owner: { ...owner, token: 'other' }, ttl: 600 });
    expect([busy.code, busy.json.error]).toEqual([3, 'locked']);

    const facts = await ok(python, 'facts', { root });
    const want = py.label === 'python3' ? /^3\./ : new RegExp(`^${py.label.replace('.', '\\.')}\\.`);
    expect((facts.python as { version: string }).version).toMatch(want);
    expect(facts).toMatchObject({ layout: true, current: null, lock: { token: 'op1' } });

    // Full receive of the packed archive, finalize with a config file and a shared link, switch.
    const got = await ok(
      python,
      'receive',
      { root, id: ID_A, op: 'op1', manifest: mA },
      readFileSync(archiveA),
    );
    const finalize = (id: string, op: string, partial: unknown, manifest: string) =>
      ok(
        python,
        'finalize',
        {
          root,
          id,
          op,
          partial,
          manifest,
          config_file: 'ckan.ini',
          shared: [{ path: 'data', link: 'storage' }],
        },
        '[app:main]\n',
      );
    expect(await finalize(ID_A, 'op1', got.partial, mA)).toMatchObject({ existed: false });
    expect(await ok(python, 'switch', { root, id: ID_A, op: 'op1' })).toEqual({
      previous: null,
      current: ID_A,
    });
    await ok(python, 'ledger', { root, entries: [{ event: 'healthy', release: ID_A }] });
    expect(readlinkSync(path.join(root, 'current'))).toBe(`releases/${ID_A}`);
    expect(readFileSync(path.join(root, 'releases', ID_A, 'lib/pkg/__init__.py'), 'utf8')).toBe(
      'VERSION = 1\n',
    );
    expect(readlinkSync(path.join(root, 'releases', ID_A, 'storage'))).toBe(
      path.join(root, 'shared', 'data'),
    );

    // Release B as a delta: everything copied from A but the one changed file, which is sent.
    const mtime = await archiveMtime(archiveB);
    const plan = await ok(python, 'delta', { root, id: ID_B, op: 'op2', manifest: mB, mtime });
    expect(plan).toMatchObject({ delta: true, need: ['lib/pkg/__init__.py'], whole: true });
    const d = await makeDeltaArchive(archiveB, plan.need as string[]);
    const deltaArgs = { mtime, bytes: d.data.length, sha256: sha256(d.data) };
    await ok(python, 'receive', { root, id: ID_B, op: 'op2', manifest: mB, delta: deltaArgs }, d.data);
    await finalize(ID_B, 'op2', plan.partial, mB);
    expect(await ok(python, 'switch', { root, id: ID_B, op: 'op2' })).toEqual({
      previous: ID_A,
      current: ID_B,
    });
    await ok(python, 'ledger', { root, entries: [{ event: 'healthy', release: ID_B }] });
    expect(readFileSync(path.join(root, 'current', 'lib/pkg/__init__.py'), 'utf8')).toBe('VERSION = 2\n');

    const after = await ok(python, 'facts', { root });
    expect(after).toMatchObject({ current: ID_B });
    // The agent sends the verdicts; the tool decides the rollback target from them (plan.ts).
    expect(hostRollbackTarget(after as unknown as HostFacts)).toBe(ID_A);
    const verify = await ok(python, 'verify', {
      root,
      id: ID_A,
      manifest_sha256: sha256(readFileSync(mA)),
      allowed_extra: ['ckan.ini', 'storage'],
    });
    expect(verify).toMatchObject({ ok: true, by: 'tree seal' });

    // A cut archive is refused (Python 2's zlib has no eof to tell), and clean removes its partial.
    const whole = readFileSync(archiveA);
    const cut = await agent(
      python,
      'receive',
      { root, id: ID_A, op: 'op3', manifest: mA },
      whole.subarray(0, whole.length - 6),
    );
    expect([cut.code, cut.json.error]).toEqual([3, 'bad-artifact']);
    expect(String(cut.json.message)).toMatch(/damaged or truncated/);
    expect(await ok(python, 'clean', { root, op: 'op3' })).toEqual({ removed: [`.partial-${ID_A}-op3`] });

    // Two more releases staged, never activated, one older and one newer than the others: prune keeps
    // the current one, the rollback target and the newest other one, and removes only the oldest.
    for (const [id, m, op] of [
      [ID_0, m0, 'op4'],
      [ID_C, mC, 'op5'],
    ] as const) {
      const r = await ok(python, 'receive', { root, id, op, manifest: m }, whole);
      await finalize(id, op, r.partial, m);
    }
    const now = (await ok(python, 'facts', { root })) as unknown as HostFacts;
    const prunes = prunePlan(
      now.releases.map((r) => r.id),
      now.partials,
      now.current,
      hostRollbackTarget(now),
      3,
      now.tmp,
    );
    const pruned = await ok(python, 'prune', {
      root,
      op: 'op6',
      remove: prunes.flatMap((x) =>
        x.release ? [{ release: x.release, why: 'beyond keep_releases=3' }] : [],
      ),
      paths: prunes.flatMap((x) => (x.path ? [{ path: x.path, why: x.why }] : [])),
      protect: [ID_A],
    });
    const removed = (pruned.removed as { release: string | null }[]).filter((r) => r.release);
    expect(removed.map((r) => r.release)).toEqual([ID_0]);
    expect(readdirSync(path.join(root, 'releases')).sort()).toEqual([ID_A, ID_B, ID_C]);

    // health: polls status_show until it lists the plugins.
    const server = http.createServer((_req, res) => {
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ success: true, result: { ckan_version: '2.9.11', extensions: ['stats'] } }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/3/action/status_show`;
      expect(await ok(python, 'health', { url, timeout: 20, plugins: ['stats'] })).toMatchObject({
        healthy: true,
        ckan_version: '2.9.11',
      });
    } finally {
      server.close();
    }

    expect(await ok(python, 'unlock', { root, token: 'op1' })).toMatchObject({ unlocked: true });
    const ledger = readFileSync(path.join(root, '.ckan-release', 'ledger.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event: string; release?: string });
    expect(ledger.map((e) => `${e.event} ${e.release}`)).toEqual([
      `staged ${ID_A}`,
      `activated ${ID_A}`,
      `healthy ${ID_A}`,
      `staged ${ID_B}`,
      `activated ${ID_B}`,
      `healthy ${ID_B}`,
      `staged ${ID_0}`,
      `staged ${ID_C}`,
      `pruned ${ID_0}`,
    ]);
  });
});
