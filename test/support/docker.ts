// The real Docker engine for integration tests. No engine means a failing test that says how to get
// one, never a silent skip.
import { cpSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import tar from 'tar-fs';
import { demuxBuffer } from '../../src/docker/run.js';
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

/** Runs a shell script in a fresh container of the builder image, with the artifact's tarball at /in. */
export async function inFreshContainer(
  artifactDir: string,
  script: string,
  builderOs = 'debian12',
): Promise<{ code: number; out: string }> {
  const docker = await testDocker();
  const image = (await builderImage(builderOs)).tag;
  const container = await docker.createContainer({
    Image: image,
    Cmd: ['sh', '-c', script],
    HostConfig: { NetworkMode: 'none' },
    Labels: { 'ckan-release': '1' },
  });
  try {
    const stage = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-in-'));
    mkdirSync(path.join(stage, 'in'));
    cpSync(path.join(artifactDir, 'release.tar.gz'), path.join(stage, 'in/release.tar.gz'));
    await container.putArchive(tar.pack(stage) as unknown as NodeJS.ReadableStream, { path: '/' });
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    const logs = (await container.logs({ stdout: true, stderr: true })) as Buffer;
    return { code: StatusCode, out: demuxBuffer(logs) };
  } finally {
    await container.remove({ force: true });
  }
}
