// The host agent's linked releases, heal and receive (assets/host/ckan_release_host.py), run by Python
// 2.7, 3.6 and python3 against temporary directories, as the tool calls them (argv JSON, stdin):
//   - the receive through GNU tar (the filter checks and hashes, tar writes) leaves exactly the tree the
//     Python unpacker leaves, and both refuse the same hostile archives, writing nothing outside the
//     partial directory;
//   - a delta with deploy.link: hardlink links every file equal in content, mode, owner and mtime,
//     copies (or reflinks) the one whose mode differs, and yields the tree a full receive yields; the
//     seals of the releases it linked from still prove them without reading a file;
//   - an edit written through a link and a chmod are healed in the release checked (from another
//     release's right bytes, or received from the artifact), never written back through the shared
//     inode: the release that was edited keeps its edit.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { archiveMtime, makeDeltaArchive } from '../../src/deploy/delta.js';
import { agent, ok } from '../support/agent-run.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const ID_A = '20260101000000Z-aaaaaaaa';
const ID_B = '20260102000000Z-bbbbbbbb';
const MTIME = 946684800;
const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
const LONG_DIR = `lib/${'d'.repeat(120)}`;
const LONG_FILE = `${LONG_DIR}/${'f'.repeat(90)}.py`;

/** A release tree: directories, a long path (GNU long names), symlinks (one absolute), a 3 MB file
 * (crosses the 1 MiB reads), two files with one content, an executable. */
function makeTree(dir: string, version: number, toolMode: number): void {
  const files: Record<string, string | Buffer> = {
    'bin/tool': '#!/bin/sh\necho tool\n',
    'lib/pkg/__init__.py': `VERSION = ${version}\n`,
    'lib/pkg/same.py': 'print("same in every release")\n',
    'lib/pkg/empty.py': '',
    'lib/pkg/empty2.py': '',
    'lib/big.bin': Buffer.concat(
      Array.from({ length: 3000 }, (_, i) => createHash('sha512').update(String(i)).digest()),
    ).subarray(0, ((3 << 20) >> 4) << 4),
    [LONG_FILE]: 'long = True\n',
    'RELEASE.json': '{}\n',
  };
  for (const [rel, data] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    writeFileSync(path.join(dir, rel), data);
  }
  chmodSync(path.join(dir, 'bin/tool'), toolMode);
  symlinkSync('pkg', path.join(dir, 'lib/link'));
  symlinkSync('/etc/hostname', path.join(dir, 'lib/abs'));
  symlinkSync('../bin', path.join(dir, 'lib/up'));
  execFileSync('find', [dir, '-exec', 'touch', '-h', '-d', `@${MTIME}`, '{}', '+']);
}

interface Entry {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: string;
  size: number;
  sha256: string | null;
  target: string | null;
}

function manifestOf(dir: string): Entry[] {
  const out: Entry[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(path.join(dir, r));
      const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
      if (st.isSymbolicLink())
        out.push({
          path: r,
          type: 'symlink',
          mode: '0777',
          size: 0,
          sha256: null,
          target: readlinkSync(path.join(dir, r)),
        });
      else if (st.isDirectory()) {
        out.push({ path: r, type: 'dir', mode, size: 0, sha256: null, target: null });
        walk(r);
      } else {
        const data = readFileSync(path.join(dir, r));
        out.push({ path: r, type: 'file', mode, size: data.length, sha256: sha256(data), target: null });
      }
    }
  };
  walk('');
  return out;
}

/** The artifact of a tree as the build packs it: GNU tar, numeric owner 0, fixed mtime, gzip. */
const made = new Map<string, { archive: string; manifest: string; data: Buffer }>();
function artifact(work: string, id: string, version: number, toolMode: number) {
  const key = `${work} ${id}`;
  if (made.has(key)) return made.get(key)!;
  const tree = path.join(work, `tree-${id}`);
  makeTree(tree, version, toolMode);
  const archive = path.join(work, `${id}.tar.gz`);
  execFileSync('tar', [
    '--numeric-owner',
    '--owner=0',
    '--group=0',
    `--mtime=@${MTIME}`,
    '--sort=name',
    '-czf',
    archive,
    '-C',
    tree,
    '.',
  ]);
  const data = readFileSync(archive);
  const manifest = path.join(work, `manifest-${id}.json`);
  writeFileSync(
    manifest,
    JSON.stringify({ id, files: manifestOf(tree), archive: { bytes: data.length, sha256: sha256(data) } }),
  );
  made.set(key, { archive, manifest, data });
  return made.get(key)!;
}

/** Every entry as the host sees it: path, type, mode, owner, mtime, link target, and each file's
 * sha256 (the release directory itself and symlinks' own mtimes aside, as delta.test.ts does). */
function treeOf(dir: string, links = false): string {
  const root = path.dirname(path.dirname(dir));
  const listing = execFileSync(
    'sh',
    [
      '-c',
      `cd "$1" && find . -mindepth 1 -printf '%p %y %m %U:%G %T@${links ? ' %n' : ''} %l\\n' | LC_ALL=C sort && find . -type f ! -name ckan.ini -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`,
      'sh',
      dir,
    ],
    { encoding: 'utf8' },
  );
  // The config and the shared link are made at staging time (their mtimes: the time of the ship).
  return listing
    .replaceAll(root, 'ROOT')
    .replace(/^(\.\/ckan\.ini|\.\/storage) (\S+ \S+ \S+) \S+ /gm, '$1 $2 - ')
    .replace(/^(\S+ l \S+ \S+) \S+ /gm, '$1 - ');
}

// The deploy owner, as hosts have it (deploy.owner/group), where the test runs as root.
const OWNER = process.getuid?.() === 0 ? { owner: 'nobody', group: 'nogroup' } : {};

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.each(TEST_PYTHONS)('linked releases, heal and the tar receive (Python $label)', (py) => {
  const work = mkdtempSync(path.join(os.tmpdir(), `ckan-release-links-${py.label}-`));
  dirs.push(work);

  async function setupRoot(python: string, name: string) {
    const root = path.join(work, name);
    await ok(python, 'setup', { root, shared: ['data'] });
    mkdirSync(path.join(root, '.ckan-release', 'tmp'));
    return root;
  }

  const finalize = (
    python: string,
    root: string,
    id: string,
    op: string,
    partial: unknown,
    manifest: string,
  ) =>
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
        ...OWNER,
        shared: [{ path: 'data', link: 'storage' }],
      },
      '[app:main]\n',
    );

  it('GNU tar behind the filter leaves the tree the Python unpacker leaves', async () => {
    const python = requirePython(py);
    const a = artifact(work, ID_A, 1, 0o755);
    const trees: string[] = [];
    for (const unpack of ['tar', 'python']) {
      const root = await setupRoot(python, `recv-${unpack}`);
      const got = await ok(
        python,
        'receive',
        { root, id: ID_A, op: 'op1', manifest: a.manifest, unpack },
        a.data,
      );
      await finalize(python, root, ID_A, 'op1', got.partial, a.manifest);
      trees.push(treeOf(path.join(root, 'releases', ID_A), true));
      // The files were sealed as written: the check of the release reads none of them.
      const v = await ok(python, 'verify', {
        root,
        id: ID_A,
        manifest_sha256: sha256(readFileSync(a.manifest)),
        allowed_extra: ['ckan.ini', 'storage'],
        full: false,
      });
      expect(v).toMatchObject({ ok: true, by: 'tree seal', hashed: 0 });
    }
    expect(trees[0]).toContain(`${LONG_FILE.split('/').pop()}`);
    expect(trees[0]).toContain(' l 777 ');
    expect(trees[0]).toBe(trees[1]);
  });

  it('both unpackers refuse hostile archives before anything lands outside the partial directory', async () => {
    const python = requirePython(py);
    const root = await setupRoot(python, 'hostile');
    const outside = path.join(work, 'outside');
    mkdirSync(outside);
    const cases: [string, RegExp][] = [
      ['dotdot', /points outside the release/],
      ['absolute', /points outside the release/],
      ['symlink-out', /would be written through a symlink/],
      ['symlink-up', /would be written through a symlink/],
      ['device', /is a device, fifo or hard link: refused/],
      ['hardlink-in', /is a device, fifo or hard link: refused/],
      ['not-in-manifest', /is not in the manifest/],
      ['wrong-sha', /sha256 [0-9a-f]+ differs from the manifest's/],
      ['wrong-type', /the archive has a file, the manifest a symlink/],
      ['missing', /manifest entries are missing from the archive, e.g. bin\/absent/],
      ['truncated', /the archive is damaged or truncated: \d+ bytes arrived/],
      ['pax-escape', /points outside the release/],
      ['twice', /appears twice/],
    ];
    for (const unpack of ['tar', 'python'])
      for (const [name, why] of cases) {
        const op = `h${unpack}${name.replace(/[^a-z]/g, '')}`;
        const made = JSON.parse(
          execFileSync('python3', ['-c', HOSTILE, name, ID_A, outside], { encoding: 'utf8' }),
        ) as { archive: string; manifest: unknown };
        const m = path.join(root, '.ckan-release', 'tmp', `${op}-manifest.json`);
        writeFileSync(m, JSON.stringify(made.manifest));
        const r = await agent(
          python,
          'receive',
          { root, id: ID_A, op, manifest: m, unpack },
          Buffer.from(made.archive, 'base64'),
        );
        expect([unpack, name, r.code, r.json.error]).toEqual([unpack, name, 3, 'bad-artifact']);
        expect(String(r.json.message)).toMatch(why);
        expect(readdirSync(outside)).toEqual([]);
        const partial = path.join(root, 'releases', `.partial-${ID_A}-${op}`);
        expect(readdirSync(path.join(root, 'releases'))).toEqual([`.partial-${ID_A}-${op}`]);
        const inside = execFileSync(
          'find',
          [
            partial,
            '(',
            '-type',
            'c',
            '-o',
            '-type',
            'b',
            '-o',
            '-type',
            'p',
            '-o',
            '-links',
            '+1',
            '-type',
            'f',
            ')',
            '-print',
          ],
          { encoding: 'utf8' },
        );
        expect(inside).toBe('');
        await ok(python, 'clean', { root, op });
      }
  });

  /** A received in full, then B received in full with deploy.link: hardlink (6 files linked to A's). */
  async function fullThenLinked(python: string, name: string) {
    const a = artifact(work, ID_A, 1, 0o755);
    const b = artifact(work, ID_B, 2, 0o700);
    const root = await setupRoot(python, name);
    const got = await ok(
      python,
      'receive',
      { root, id: ID_A, op: 'op1', manifest: a.manifest, ...OWNER },
      a.data,
    );
    await finalize(python, root, ID_A, 'op1', got.partial, a.manifest);
    const gotB = await ok(
      python,
      'receive',
      { root, id: ID_B, op: 'op2', manifest: b.manifest, link: 'hardlink', ...OWNER },
      b.data,
    );
    expect(gotB.linked).toBe(6);
    await finalize(python, root, ID_B, 'op2', gotB.partial, b.manifest);
    return { a, b, root };
  }

  it('a linked delta equals a full receive; an edit through a link and a chmod are healed, never written through', async () => {
    const python = requirePython(py);
    const a = artifact(work, ID_A, 1, 0o755);
    // B: one file changed, and bin/tool with another mode (same content: not a link).
    const b = artifact(work, ID_B, 2, 0o700);
    const root = await setupRoot(python, 'linked');
    const full = await setupRoot(python, 'full');
    const got = await ok(
      python,
      'receive',
      { root, id: ID_A, op: 'op1', manifest: a.manifest, ...OWNER },
      a.data,
    );
    await finalize(python, root, ID_A, 'op1', got.partial, a.manifest);
    await ok(python, 'switch', { root, id: ID_A, op: 'op1' });
    await ok(python, 'ledger', { root, entries: [{ event: 'healthy', release: ID_A }] });

    const mtime = await archiveMtime(b.archive);
    expect(mtime).toBe(MTIME);
    const plan = await ok(python, 'delta', {
      root,
      id: ID_B,
      op: 'op2',
      manifest: b.manifest,
      mtime,
      link: 'hardlink',
      ...OWNER,
    });
    expect(plan).toMatchObject({ delta: true, need: ['lib/pkg/__init__.py'], whole: false });
    const counts = plan.link as { linked: number; reflinked: number; copied: number };
    expect(counts.linked).toBe(6);
    expect(counts.reflinked + counts.copied).toBe(1);
    const d = await makeDeltaArchive(b.archive, plan.need as string[]);
    await ok(
      python,
      'receive',
      {
        root,
        id: ID_B,
        op: 'op2',
        manifest: b.manifest,
        delta: { mtime, bytes: d.data.length, sha256: sha256(d.data) },
        ...OWNER,
      },
      d.data,
    );
    await finalize(python, root, ID_B, 'op2', plan.partial, b.manifest);
    await ok(python, 'switch', { root, id: ID_B, op: 'op2' });
    await ok(python, 'ledger', { root, entries: [{ event: 'healthy', release: ID_B }] });
    const fullGot = await ok(
      python,
      'receive',
      { root: full, id: ID_B, op: 'op1', manifest: b.manifest, ...OWNER },
      b.data,
    );
    await finalize(python, full, ID_B, 'op1', fullGot.partial, b.manifest);

    const A = path.join(root, 'releases', ID_A);
    const B = path.join(root, 'releases', ID_B);
    // Identical to the full ship in content, modes, owners and mtimes; files shared by inode.
    expect(treeOf(B)).toBe(treeOf(path.join(full, 'releases', ID_B)));
    const ino = (p: string) => statSync(p).ino;
    expect(ino(`${B}/lib/pkg/same.py`)).toBe(ino(`${A}/lib/pkg/same.py`));
    expect(ino(`${B}/${LONG_FILE}`)).toBe(ino(`${A}/${LONG_FILE}`));
    expect(ino(`${B}/bin/tool`)).not.toBe(ino(`${A}/bin/tool`));
    expect(ino(`${B}/lib/pkg/__init__.py`)).not.toBe(ino(`${A}/lib/pkg/__init__.py`));
    // Linking moved the shared inodes' ctimes; the seals moved with them: A is still proved by stats.
    const manifestSha = sha256(readFileSync(a.manifest));
    const verifyA = (extra: Record<string, unknown> = {}) =>
      ok(python, 'verify', {
        root,
        id: ID_A,
        manifest_sha256: manifestSha,
        allowed_extra: ['ckan.ini', 'storage'],
        keep_manifest: true,
        ...OWNER,
        ...extra,
      });
    expect(await verifyA()).toMatchObject({ ok: true, by: 'tree seal', hashed: 0 });

    // An operator edits B's file in place (an editor that writes through the link) and chmods another.
    const same = readFileSync(`${A}/lib/pkg/same.py`);
    writeFileSync(`${B}/lib/pkg/same.py`, 'print("hot fix")\n', { flag: 'r+' });
    chmodSync(`${B}/lib/big.bin`, 0o600);
    const edited = readFileSync(`${B}/lib/pkg/same.py`);
    expect(edited.toString()).toMatch(/^print\("hot fix"\)\n/);
    expect(readFileSync(`${A}/lib/pkg/same.py`)).toEqual(edited);
    // Without heal (deploy.link: copy keeps today's rule): refused.
    const refused = await verifyA();
    expect(refused).toMatchObject({ ok: false });
    expect(String((refused.problems as string[]).join('; '))).toMatch(
      /lib\/big\.bin has mode 0600, not 0644; lib\/pkg\/same\.py: sha256 differs/,
    );
    // With heal: the mode from B's right bytes (a new inode with A's mode), the bytes from the artifact.
    const heal = { heal: { mtime }, op: 'op3' };
    const first = await verifyA(heal);
    expect(first).toMatchObject({ ok: false, heal_need: ['lib/pkg/same.py'] });
    expect(first.healed).toEqual([
      { path: 'lib/big.bin', was: 'lib/big.bin has mode 0600, not 0644', from: `${ID_B}/lib/big.bin` },
    ]);
    const h = await makeDeltaArchive(a.archive, first.heal_need as string[]);
    const received = await ok(
      python,
      'receive',
      {
        root,
        id: ID_A,
        op: 'op3',
        manifest: first.manifest,
        heal: { bytes: h.data.length, sha256: sha256(h.data) },
        ...OWNER,
      },
      h.data,
    );
    expect(received.healed).toEqual(['lib/pkg/same.py']);
    expect(await verifyA(heal)).toMatchObject({ ok: true, healed: [] });
    expect(existsSync(path.join(root, '.ckan-release', 'tmp', 'op3-heal'))).toBe(false);
    // A has the artifact's bytes and modes again, in its own inodes; B keeps what the operator did.
    expect(readFileSync(`${A}/lib/pkg/same.py`)).toEqual(same);
    expect(readFileSync(`${B}/lib/pkg/same.py`)).toEqual(edited);
    expect(statSync(`${A}/lib/big.bin`).mode & 0o7777).toBe(0o644);
    expect(statSync(`${B}/lib/big.bin`).mode & 0o7777).toBe(0o600);
    expect(readFileSync(`${A}/lib/big.bin`)).toEqual(readFileSync(`${B}/lib/big.bin`));
    expect(ino(`${A}/lib/pkg/same.py`)).not.toBe(ino(`${B}/lib/pkg/same.py`));
    const fullA = await ok(
      python,
      'receive',
      { root: full, id: ID_A, op: 'op2', manifest: a.manifest, ...OWNER },
      a.data,
    );
    await finalize(python, full, ID_A, 'op2', fullA.partial, a.manifest);
    expect(treeOf(A)).toBe(treeOf(path.join(full, 'releases', ID_A)));
    // Once healed, a further edit through B no longer reaches A; A's directory mtimes are untouched.
    writeFileSync(`${B}/lib/pkg/same.py`, 'print("another fix")\n', { flag: 'r+' });
    expect(readFileSync(`${A}/lib/pkg/same.py`)).toEqual(same);
    expect(statSync(`${A}/lib/pkg`).mtimeMs / 1000).toBe(MTIME);
    expect(await verifyA(heal)).toMatchObject({ ok: true, by: 'tree seal' });
  });

  it('a linked delta never links a base file its seal does not prove, nor one under a symlinked directory', async () => {
    const python = requirePython(py);
    const a = artifact(work, ID_A, 1, 0o755);
    const b = artifact(work, ID_B, 2, 0o700);
    const root = await setupRoot(python, 'unproved');
    const got = await ok(
      python,
      'receive',
      { root, id: ID_A, op: 'op1', manifest: a.manifest, ...OWNER },
      a.data,
    );
    await finalize(python, root, ID_A, 'op1', got.partial, a.manifest);
    await ok(python, 'switch', { root, id: ID_A, op: 'op1' });
    const A = path.join(root, 'releases', ID_A);
    // Edited in place after A was sealed, with its size and mtime kept: only the ctime (and the bytes) tell.
    const same = `${A}/lib/pkg/same.py`;
    const before = readFileSync(same);
    writeFileSync(same, before.toString().toUpperCase(), { flag: 'r+' });
    utimesSync(same, MTIME, MTIME);
    // A directory of A replaced by a symlink to a copy of it, with the right bytes inside.
    renameSync(`${A}/${LONG_DIR}`, `${A}/${LONG_DIR}.moved`);
    symlinkSync(path.basename(`${LONG_DIR}.moved`), `${A}/${LONG_DIR}`);
    const plan = await ok(python, 'delta', {
      root,
      id: ID_B,
      op: 'op2',
      manifest: b.manifest,
      mtime: MTIME,
      link: 'hardlink',
      ...OWNER,
    });
    expect(plan).toMatchObject({ delta: true });
    expect((plan.need as string[]).sort()).toEqual(
      [LONG_FILE, 'lib/pkg/__init__.py', 'lib/pkg/same.py'].sort(),
    );
    expect(plan.tampered as string[]).toEqual(
      expect.arrayContaining([`${ID_A}/${LONG_FILE}`, `${ID_A}/lib/pkg/same.py`]),
    );
    const partial = String(plan.partial);
    expect(existsSync(`${partial}/lib/pkg/same.py`)).toBe(false);
    expect(existsSync(`${partial}/${LONG_FILE}`)).toBe(false);
    // What it linked is still A's inode, and A's seal still proves those files: only the edited one is
    // read when A is checked (the moved directory aside).
    expect(statSync(`${partial}/lib/big.bin`).ino).toBe(statSync(`${A}/lib/big.bin`).ino);
    const d = await makeDeltaArchive(b.archive, plan.need as string[]);
    await ok(
      python,
      'receive',
      {
        root,
        id: ID_B,
        op: 'op2',
        manifest: b.manifest,
        delta: { mtime: MTIME, bytes: d.data.length, sha256: sha256(d.data) },
        ...OWNER,
      },
      d.data,
    );
    await finalize(python, root, ID_B, 'op2', partial, b.manifest);
    const B = path.join(root, 'releases', ID_B);
    expect(readFileSync(`${B}/lib/pkg/same.py`)).toEqual(before);
    expect(statSync(`${B}/lib/pkg/same.py`).ino).not.toBe(statSync(same).ino);
    rmSync(`${A}/${LONG_DIR}`);
    renameSync(`${A}/${LONG_DIR}.moved`, `${A}/${LONG_DIR}`);
    writeFileSync(same, before, { flag: 'r+' });
    utimesSync(same, MTIME, MTIME);
    await new Promise((r) => setTimeout(r, 250));
    const v = await ok(python, 'verify', {
      root,
      id: ID_A,
      manifest_sha256: sha256(readFileSync(a.manifest)),
      allowed_extra: ['ckan.ini', 'storage'],
    });
    expect(v).toMatchObject({ ok: true, by: 'seal', hashed: 1 });
  });

  it('a full receive links what a kept release has the same, and the release is still a full ship', async () => {
    const python = requirePython(py);
    const { a, b, root } = await fullThenLinked(python, 'full-linked');
    const A = path.join(root, 'releases', ID_A);
    const B = path.join(root, 'releases', ID_B);
    expect(statSync(`${B}/lib/big.bin`).ino).toBe(statSync(`${A}/lib/big.bin`).ino);
    expect(statSync(`${B}/bin/tool`).ino).not.toBe(statSync(`${A}/bin/tool`).ino);
    const plain = await setupRoot(python, 'full-plain');
    const p = await ok(
      python,
      'receive',
      { root: plain, id: ID_B, op: 'op1', manifest: b.manifest, ...OWNER },
      b.data,
    );
    await finalize(python, plain, ID_B, 'op1', p.partial, b.manifest);
    expect(treeOf(B)).toBe(treeOf(path.join(plain, 'releases', ID_B)));
    // A's seal moved with the links: proved by stats, no file read.
    const v = await ok(python, 'verify', {
      root,
      id: ID_A,
      manifest_sha256: sha256(readFileSync(a.manifest)),
      allowed_extra: ['ckan.ini', 'storage'],
    });
    expect(v).toMatchObject({ ok: true, hashed: 0 });
  });

  it("a prune of a linked release and of a linked leftover partial moves the kept release's seal along", async () => {
    const python = requirePython(py);
    const { a, b, root } = await fullThenLinked(python, 'prune-linked');
    await ok(python, 'switch', { root, id: ID_B, op: 'op2' });
    // An interrupted delta's partial, linked to B's files, left behind.
    const left = await ok(python, 'delta', {
      root,
      id: ID_A,
      op: 'op3',
      manifest: a.manifest,
      mtime: MTIME,
      link: 'hardlink',
      ...OWNER,
    });
    expect((left.link as { linked: number }).linked).toBe(6);
    const B = path.join(root, 'releases', ID_B);
    expect(statSync(`${B}/lib/big.bin`).nlink).toBe(3);
    const pruned = await ok(python, 'prune', {
      root,
      op: 'op4',
      remove: [{ release: ID_A, why: 'keep_releases' }],
      paths: [{ path: path.basename(left.partial as string), why: 'leftover' }],
    });
    expect((pruned.removed as unknown[]).length).toBe(2);
    expect(existsSync(path.join(root, 'releases', ID_A))).toBe(false);
    expect(existsSync(left.partial as string)).toBe(false);
    // Each removed name moved the shared inodes' ctime; B's seal moved with them: no file read.
    expect(statSync(`${B}/lib/big.bin`).nlink).toBe(1);
    const v = await ok(python, 'verify', {
      root,
      id: ID_B,
      manifest_sha256: sha256(readFileSync(b.manifest)),
      allowed_extra: ['ckan.ini', 'storage'],
      ...OWNER,
    });
    expect(v).toMatchObject({ ok: true, hashed: 0 });
  });
});

// Hostile archives, made with Python's tarfile (as guarantees.test.ts makes them), and a pax header
// whose path leaves the release.
const HOSTILE = String.raw`
import base64, hashlib, io, json, sys, tarfile
case, rid, outside = sys.argv[1], sys.argv[2], sys.argv[3]
buf = io.BytesIO()
tar = tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT if case == "pax-escape" else tarfile.GNU_FORMAT)
files = []
def add(name, kind="file", data=b"x", target=None, manifest=True, manifest_data=None, pax=None):
    info = tarfile.TarInfo(name)
    info.mtime = 1700000000
    if pax:
        info.pax_headers = pax
    if kind == "file":
        info.size = len(data); info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    elif kind == "dir":
        info.type = tarfile.DIRTYPE; info.mode = 0o755
        tar.addfile(info)
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE; info.linkname = target
        tar.addfile(info)
    elif kind == "hardlink":
        info.type = tarfile.LNKTYPE; info.linkname = target
        tar.addfile(info)
    elif kind == "chr":
        info.type = tarfile.CHRTYPE; info.devmajor = 1; info.devminor = 3; info.mode = 0o666
        tar.addfile(info)
    if manifest:
        d = manifest_data if manifest_data is not None else data
        files.append({"path": name.lstrip("/"), "type": {"dir": "dir", "symlink": "symlink"}.get(kind, "file"),
                      "mode": "0755" if kind == "dir" else "0644", "size": len(d),
                      "sha256": hashlib.sha256(d).hexdigest() if kind not in ("dir", "symlink") else None,
                      "target": target if kind == "symlink" else None})
add("bin", "dir")
add("bin/ok.txt", data=b"fine")
if case == "dotdot":
    add("bin/../../escape-dotdot")
elif case == "absolute":
    add(outside + "/escape-absolute")
elif case == "symlink-out":
    add("lib", "symlink", target=outside)
    add("lib/escape")
elif case == "symlink-up":
    add("up", "symlink", target="../..")
    add("up/escape-up")
elif case == "device":
    add("bin/null", "chr")
elif case == "hardlink-in":
    add("bin/again", "hardlink", target="bin/ok.txt")
elif case == "not-in-manifest":
    add("bin/stowaway", manifest=False)
elif case == "wrong-sha":
    add("bin/app.py", data=b"print('evil')", manifest_data=b"print('good')")
elif case == "wrong-type":
    add("bin/tool", data=b"x")
    files[-1]["type"] = "symlink"; files[-1]["target"] = "/bin/sh"
elif case == "missing":
    files.append({"path": "bin/absent", "type": "file", "mode": "0644", "size": 1,
                  "sha256": hashlib.sha256(b"x").hexdigest(), "target": None})
elif case == "pax-escape":
    add("bin/innocent", pax={"path": "../../escape-pax"})
elif case == "twice":
    add("bin/ok.txt", data=b"fine", manifest=False)
add("bin/zz-last.txt", data=b"last")
tar.close()
data = buf.getvalue()
archive = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
if case == "truncated":
    data = data[: len(data) * 2 // 3]
sys.stdout.write(json.dumps({"archive": base64.b64encode(data).decode(),
                             "manifest": {"id": rid, "files": files, "archive": archive}}))
`;
