// The local artifact store: <store>/<ID>/{release.tar.gz, manifest.json, build.log}. An artifact
// appears only by the rename of a complete directory, so a crashed build never leaves one half there.
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { ARTIFACT_ID } from './id.js';
import { OperationError, UsageError } from '../errors.js';
import type { Manifest } from './manifest.js';
import { readManifestFile } from './manifest-file.js';

export interface StoredArtifact {
  id: string;
  dir: string;
  archive: string;
  manifest: Manifest;
}

/** IDs of the complete artifacts (the manifest is written last), newest first: IDs begin with the UTC build time. */
export function artifactIds(store: string): string[] {
  if (!existsSync(store)) return [];
  return readdirSync(store)
    .filter((name) => ARTIFACT_ID.test(name) && existsSync(path.join(store, name, 'manifest.json')))
    .sort()
    .reverse();
}

/** Every complete artifact, newest first. */
export function listArtifacts(store: string): StoredArtifact[] {
  return artifactIds(store).map((id) => readArtifact(store, id));
}

export function readArtifact(store: string, id: string): StoredArtifact {
  const dir = path.join(store, id);
  const file = path.join(dir, 'manifest.json');
  let manifest: Manifest;
  try {
    manifest = readManifestFile(file);
  } catch (e) {
    throw new OperationError(`artifact ${id}: cannot read ${file}: ${(e as Error).message}`);
  }
  if (manifest.id !== id) throw new OperationError(`artifact ${id}: its manifest says it is ${manifest.id}`);
  return { id, dir, archive: path.join(dir, manifest.archive.file), manifest };
}

/** An ID or any unique prefix of one; an ambiguous prefix lists the candidates. */
export function findArtifact(store: string, prefix: string): StoredArtifact {
  const ids = artifactIds(store);
  const matches = ids.filter((id) => id.startsWith(prefix));
  if (matches.length === 1) return readArtifact(store, matches[0]!);
  if (matches.length === 0) {
    throw new UsageError(
      `no artifact "${prefix}" in ${store}`,
      ids.length ? 'run `ckan-release artifacts` to list them' : 'run `ckan-release build` first',
    );
  }
  throw new UsageError(`artifact ID "${prefix}" is ambiguous: ${matches.join(', ')}`);
}
