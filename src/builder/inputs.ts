// Everything an artifact is made of, resolved on the build machine and pinned: the digest of these
// inputs is the second half of the artifact ID.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/types.js';
import { UsageError } from '../errors.js';
import { git, pin, type Pinned } from './git.js';

export interface PinnedSource {
  name: string;
  source: string;
  url: string;
  ref: string;
  commit: string;
  mirror: string;
  fetched: boolean;
}

export interface PinnedExtension extends PinnedSource {
  plugins: string[];
  requirements: string[] | 'auto';
}

export interface PatchInput {
  /** ckan or an extension name. */
  target: string;
  /** As shown to the user and recorded in the manifest: patches/<target>/<name>. */
  file: string;
  abs: string;
  sha256: string;
}

export interface BuildInputs {
  ckan: PinnedSource;
  extensions: PinnedExtension[];
  patches: PatchInput[];
}

export async function resolveInputs(config: Config, gitCache: string): Promise<BuildInputs> {
  const pinOne = async (
    name: string,
    src: { source: string; url: string; ref: string },
  ): Promise<PinnedSource> => {
    const p: Pinned = await pin(gitCache, src.url, src.ref, name === 'ckan' ? 'ckan' : `extension ${name}`);
    return { name, source: src.source, url: src.url, ref: src.ref, ...p };
  };
  const [ckan, ...extensions] = await Promise.all([
    pinOne('ckan', config.ckan),
    ...config.extensions.map(async (x) => ({
      ...(await pinOne(x.name, x)),
      plugins: x.plugins,
      requirements: x.requirements,
    })),
  ]);
  await Promise.all((extensions as PinnedExtension[]).map(checkRequirementFiles));
  return { ckan: ckan!, extensions: extensions as PinnedExtension[], patches: readPatches(config) };
}

/** Requirements files named in extensions[].requirements exist at the pinned commit (before any build). */
async function checkRequirementFiles(x: PinnedExtension): Promise<void> {
  if (x.requirements === 'auto') return;
  for (const file of x.requirements) {
    const r = await git(['--git-dir', x.mirror, 'cat-file', '-e', `${x.commit}:${file}`]);
    if (r.code !== 0)
      throw new UsageError(
        `extension ${x.name}: requirements file ${file} (extensions[].requirements) is not in ${x.ref} (${x.commit.slice(0, 12)})`,
        'name a file of the extension, or leave requirements out to have it found (requirements.txt, pip-requirements.txt), or none',
      );
  }
}

/** patches/<target>/*.patch, targets and files in sorted order (the order they are applied in). */
export function readPatches(config: Config): PatchInput[] {
  if (!config.patches) return [];
  const out: PatchInput[] = [];
  const base = path.basename(config.patches);
  for (const target of readdirSync(config.patches).sort()) {
    const dir = path.join(config.patches, target);
    if (!statSync(dir).isDirectory()) continue;
    for (const name of readdirSync(dir).sort()) {
      if (!name.endsWith('.patch')) continue;
      const abs = path.join(dir, name);
      out.push({
        target,
        file: `${base}/${target}/${name}`,
        abs,
        sha256: createHash('sha256').update(readFileSync(abs)).digest('hex'),
      });
    }
  }
  return out;
}

/**
 * What local find-links directories hold, by content: each wheel's name and sha256, per directory
 * position. Not the directories' paths: the same wheels under another path (a tmp copy of the project,
 * another checkout) are the same input and must reuse the same base venv image.
 */
export function findLinksListing(dirs: string[]): string[] {
  const out: string[] = [];
  dirs.forEach((dir, i) => {
    if (/^[a-z]+:\/\//i.test(dir)) {
      out.push(dir);
      return;
    }
    for (const name of readdirSync(dir).sort()) {
      const file = path.join(dir, name);
      if (!statSync(file).isFile()) continue;
      out.push(`${i}/${name}:${createHash('sha256').update(readFileSync(file)).digest('hex')}`);
    }
  });
  return out;
}

export function digest(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex');
}
