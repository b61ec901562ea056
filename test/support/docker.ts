// The real Docker engine for integration tests. No engine means a failing test that says how to get
// one, never a silent skip.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { dockerfileBases, ensureBaseImage, ensureEngine } from '../../src/docker/engine.js';
import { ensureImage, type BuiltImage } from '../../src/docker/images.js';

const say = (line: string) => process.stderr.write(`[test-docker] ${line}\n`);

let engine: Promise<Docker> | undefined;

/** The engine, started if we may (root + dockerd), with debian:bookworm-slim present. */
export function testDocker(): Promise<Docker> {
  engine ??= (async () => {
    const docker = await ensureEngine(say);
    await ensureBaseImage(docker, say);
    return docker;
  })();
  return engine;
}

/** The builder image of docker/<os>, its base images made first when absent (debootstrap for Debian). */
export async function builderImage(os = 'debian12'): Promise<BuiltImage> {
  const docker = await testDocker();
  for (const base of dockerfileBases(readFileSync(path.resolve('docker', os, 'Dockerfile'), 'utf8')))
    await ensureBaseImage(docker, say, base);
  return ensureImage(
    docker,
    {
      context: path.resolve('docker', os),
      repository: 'ckan-release-builder',
      flavour: os,
      buildArgs: { PYTHON: 'python3' },
    },
    say,
  );
}
