// Images built from a directory with a Dockerfile (docker/<os>/), tagged by a digest of everything that
// goes into them, so an unchanged builder is reused and a changed one is never confused with the old.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import tar from 'tar-fs';
import { OperationError } from '../errors.js';
import { imageExists, type Say } from './engine.js';

/** sha256 over the context directory's files (path, mode, content) and the build args. */
export function contextDigest(dir: string, buildArgs: Record<string, string>): string {
  const hash = createHash('sha256');
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const relPath = path.posix.join(rel, name);
      const st = statSync(path.join(dir, relPath));
      if (st.isDirectory()) walk(relPath);
      else {
        hash.update(`${relPath}\0${st.mode & 0o777}\0`);
        hash.update(readFileSync(path.join(dir, relPath)));
        hash.update('\0');
      }
    }
  };
  walk('');
  for (const key of Object.keys(buildArgs).sort()) hash.update(`arg ${key}=${buildArgs[key]}\0`);
  return hash.digest('hex');
}

export interface ImageBuild {
  /** Directory holding the Dockerfile: the build context. */
  context: string;
  /** Repository part of the tag, e.g. ckan-release-builder. */
  repository: string;
  /** Prefix of the tag, e.g. the OS name. */
  flavour: string;
  buildArgs?: Record<string, string>;
  labels?: Record<string, string>;
}

export interface BuiltImage {
  tag: string;
  id: string;
  reused: boolean;
}

/** Builds the image unless one with the same input digest exists. */
export async function ensureImage(
  docker: Docker,
  spec: ImageBuild,
  say: Say,
  log?: (chunk: string) => void,
): Promise<BuiltImage> {
  const buildArgs = spec.buildArgs ?? {};
  const tag = `${spec.repository}:${spec.flavour}-${contextDigest(spec.context, buildArgs).slice(0, 12)}`;
  if (await imageExists(docker, tag)) {
    const id = (await docker.getImage(tag).inspect()).Id;
    say(`image ${tag}: reused`);
    return { tag, id, reused: true };
  }
  say(`image ${tag}: building from ${spec.context}`);
  const stream = await docker.buildImage(tar.pack(spec.context) as unknown as NodeJS.ReadableStream, {
    t: tag,
    buildargs: buildArgs,
    labels: spec.labels ?? {},
    // Host networking: package managers inside the build reach the mirrors the host reaches, also on
    // machines whose engine runs without a bridge network.
    networkmode: 'host',
    rm: true,
    forcerm: true,
  });
  const tail: string[] = [];
  await new Promise<void>((resolve, reject) => {
    docker.modem.followProgress(
      stream,
      (err: Error | null, events: { error?: string; errorDetail?: { message?: string } }[]) => {
        // followProgress reports success even when the build failed: the error is in an event.
        const failed = events?.find((e) => e.error || e.errorDetail);
        if (err) reject(err);
        else if (failed) reject(new Error(failed.errorDetail?.message ?? failed.error));
        else resolve();
      },
      (event: { stream?: string }) => {
        if (!event.stream) return;
        log?.(event.stream);
        tail.push(...event.stream.split('\n').filter(Boolean));
        tail.splice(0, Math.max(0, tail.length - 20));
      },
    );
  }).catch((e: Error) => {
    throw new OperationError(
      `building image ${tag} from ${spec.context} failed: ${e.message}\n${tail.join('\n')}`,
    );
  });
  const id = (await docker.getImage(tag).inspect()).Id;
  say(`image ${tag}: built`);
  return { tag, id, reused: false };
}
