// A small real release made by the test, without Docker or the builder: a .tar.gz of a few files,
// directories and a symlink (members named "./path", owner 0, fixed mtime, as the builder packs them)
// and its manifest, written as an artifact of a local store (<store>/<ID>/release.tar.gz +
// manifest.json), so that the host agent and the executor take it as they take a built one.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import type { Manifest, ManifestFile } from '../../src/artifact/manifest.js';
import type { StoredArtifact } from '../../src/artifact/store.js';

/** A file's content (mode 0644), or a file with its mode, a directory, or a symlink. */
export type TreeEntry = string | { content: string; mode?: string } | { dir: true } | { link: string };

export const RELEASE_MTIME = 1_700_000_000;

/** "3.11.7": what the preflight compares with the host's interpreter (they are the same here). */
function pythonVersion(python: string): string {
  return execFileSync(python, ['-c', 'import sys; print("%d.%d.%d" % sys.version_info[:3])'], {
    encoding: 'utf8',
  }).trim();
}

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

async function packTree(tree: Record<string, TreeEntry>): Promise<{ tar: Buffer; files: ManifestFile[] }> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((resolve) => pack.on('end', resolve));
  const files: ManifestFile[] = [];
  // Parents before children, as tar lists a tree; every parent directory is an entry of its own.
  const all = new Map<string, TreeEntry>(Object.entries(tree));
  for (const p of [...all.keys()]) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!all.has(dir)) all.set(dir, { dir: true });
    }
  }
  const common = { mtime: new Date(RELEASE_MTIME * 1000), uid: 0, gid: 0, uname: 'root', gname: 'root' };
  for (const p of [...all.keys()].sort()) {
    const e = all.get(p)!;
    if (typeof e === 'object' && 'dir' in e) {
      pack.entry({ ...common, name: `./${p}`, type: 'directory', mode: 0o755 });
      files.push({ path: p, type: 'dir', mode: '0755', size: 0, sha256: null, target: null });
    } else if (typeof e === 'object' && 'link' in e) {
      pack.entry({ ...common, name: `./${p}`, type: 'symlink', linkname: e.link, mode: 0o777 });
      files.push({ path: p, type: 'symlink', mode: '0777', size: 0, sha256: null, target: e.link });
    } else {
      const content = typeof e === 'string' ? e : e.content;
      const mode = typeof e === 'string' ? '0644' : (e.mode ?? '0644');
      const data = Buffer.from(content);
      pack.entry({ ...common, name: `./${p}`, type: 'file', mode: parseInt(mode, 8) }, data);
      files.push({ path: p, type: 'file', mode, size: data.length, sha256: sha256(data), target: null });
    }
  }
  pack.finalize();
  await ended;
  return { tar: Buffer.concat(chunks), files };
}

export interface ReleaseOptions {
  /** The interpreter the agent runs with for this release (the manifest's builder.python.path). */
  python?: string;
  /** The root the release was built for (config.root). */
  root?: string;
  plugins?: string[];
}

/** Writes <store>/<id>/{release.tar.gz, manifest.json} for the tree and returns it as a stored artifact. */
export async function writeRelease(
  store: string,
  id: string,
  tree: Record<string, TreeEntry>,
  opts: ReleaseOptions = {},
): Promise<StoredArtifact> {
  const { tar, files } = await packTree(tree);
  const archive = gzipSync(tar, { level: 6 });
  const root = opts.root ?? '/srv/ckan';
  const manifest: Manifest = {
    format: 1,
    id,
    created: new Date(RELEASE_MTIME * 1000).toISOString(),
    project: 'at-test',
    root,
    release_path: path.posix.join(root, 'releases', id),
    inputs_digest: sha256(id),
    builder: {
      os: 'debian12',
      image: 'none',
      image_id: 'none',
      base_image: 'none',
      base_venv: '/opt/ckan-release/base-venv',
      python: {
        version: pythonVersion(opts.python ?? 'python3'),
        path: opts.python ?? 'python3',
        implementation: 'cpython',
      },
    },
    libraries: [],
    ckan: { source: 'none', ref: 'none', commit: '0'.repeat(40), version: '2.9.11' },
    extensions: opts.plugins?.length
      ? [{ name: 'ckanext-at', source: 'none', ref: 'none', commit: '0'.repeat(40), plugins: opts.plugins }]
      : [],
    plugins: {},
    patches: [],
    pip: { index_url: null, find_links: [], extra_args: [], freeze: [] },
    archive: { file: 'release.tar.gz', bytes: archive.length, sha256: sha256(archive) },
    files,
  };
  const dir = path.join(store, id);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'release.tar.gz'), archive);
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  return { id, dir, archive: path.join(dir, 'release.tar.gz'), manifest };
}

/** The tar.gz of arbitrary members (for hostile archives: "../x", names not in the manifest). */
export function rawArchive(
  members: { name: string; content?: string; type?: 'file' | 'symlink'; linkname?: string }[],
): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<Buffer>((resolve) =>
    pack.on('end', () => resolve(gzipSync(Buffer.concat(chunks)))),
  );
  for (const m of members) {
    if (m.type === 'symlink') pack.entry({ name: m.name, type: 'symlink', linkname: m.linkname ?? 'x' });
    else pack.entry({ name: m.name, type: 'file', mode: 0o644 }, Buffer.from(m.content ?? ''));
  }
  pack.finalize();
  return ended;
}
