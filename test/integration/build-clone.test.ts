// The clone by hard links and the pack from the cache, on the real engine with the debian12 builder and
// the fixture repositories: the base copy comes out of a build that reinstalls a package of the base
// byte for byte the base image's venv, and a warm build of the same inputs at the same time writes the
// very bytes of the cold one. Its own project and volumes (no ports, no hosts).
import { cpSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { build, type BuildResult } from '../../src/builder/build.js';
import { loadConfig } from '../../src/config/load.js';
import { demuxBuffer } from '../../src/docker/run.js';
import { expectArchiveMatches, packLine } from '../support/artifact.js';
import { testDocker } from '../support/docker.js';
import { testProject, type TestProject } from '../support/project.js';

let docker: Docker;
let project: TestProject;
const PACK_VOLUME = `ckan-release-pack-cache-clone-${process.pid}`;
const COPIES_VOLUME = `ckan-release-base-copies-clone-${process.pid}`;
const extraVolumes: string[] = [];

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  process.env.CKAN_RELEASE_PACK_CACHE_VOLUME = PACK_VOLUME;
  process.env.CKAN_RELEASE_BASE_COPIES_VOLUME = COPIES_VOLUME;
}, 600_000);

afterAll(async () => {
  delete process.env.CKAN_RELEASE_PACK_CACHE_VOLUME;
  delete process.env.CKAN_RELEASE_BASE_COPIES_VOLUME;
  for (const v of [PACK_VOLUME, COPIES_VOLUME, ...extraVolumes])
    await docker
      .getVolume(v)
      .remove()
      .catch(() => undefined);
  rmSync(project.dir, { recursive: true, force: true });
});

/** Runs a shell script in a container of `image` with `volume` mounted at /copies; its exit code and output. */
async function withVolume(
  image: string,
  volume: string,
  script: string,
): Promise<{ code: number; out: string }> {
  const container = await docker.createContainer({
    Image: image,
    Cmd: ['sh', '-c', script],
    HostConfig: { NetworkMode: 'none', Mounts: [{ Type: 'volume', Source: volume, Target: '/copies' }] },
    Labels: { 'ckan-release': '1' },
  });
  try {
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    const logs = (await container.logs({ stdout: true, stderr: true })) as Buffer;
    return { code: StatusCode, out: demuxBuffer(logs) };
  } finally {
    await container.remove({ force: true });
  }
}

describe('a build that reinstalls a package of the base through the hard-linked clone', () => {
  let output: string;
  let log: string;
  let manifest: Manifest;

  beforeAll(async () => {
    // scheming now requires fixturelib-markup, which the base has (CKAN's requirements), and pip
    // reinstalls everything it resolves: it removes the base's files of that package from the
    // release (links to the base copy) and writes new ones.
    const patches = path.join(project.dir, 'patches-reinstall');
    cpSync(path.join(project.dir, 'patches'), patches, { recursive: true });
    mkdirSync(path.join(patches, 'ckanext-scheming'), { recursive: true });
    writeFileSync(
      path.join(patches, 'ckanext-scheming', '0001-require-markup.patch'),
      [
        '--- a/requirements.txt',
        '+++ b/requirements.txt',
        '@@ -1 +1,2 @@',
        ' # ckanext-scheming fixture: no requirements beyond CKAN itself.',
        '+fixturelib-markup==1.0.0',
        '',
      ].join('\n'),
    );
    const file = project.variant('reinstall', (t) =>
      t
        .replace('patches: patches/', 'patches: patches-reinstall/')
        .replace(
          'find_links: [./.fixtures/wheelhouse]',
          'find_links: [./.fixtures/wheelhouse]\n    extra_args: [--force-reinstall]',
        ),
    );
    // Twice: the first build makes its base and the base copy; the second clones from that copy.
    for (let i = 0; i < 2; i++) {
      const r = await project.cli('--config', file, 'build');
      output = r.err;
      expect(r.code, r.err).toBe(0);
      const dir = path.join(project.dir, '.ckan-release/artifacts', r.out.trim());
      log = readFileSync(path.join(dir, 'build.log'), 'utf8');
      manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
    }
  }, 900_000);

  it('reinstalls the package and clones by hard links from the base copy', () => {
    expect(output).toMatch(/base venv: reused/);
    expect(log).toMatch(/Successfully uninstalled fixturelib-markup/);
    expect(log).toMatch(
      /cloned by hard links from \/usr\/lib\/ckan\/releases\/\.ckan-release-base\/[0-9a-f]{32}\/venv \(\d+ files shared\)/,
    );
    // The reinstall moved the links of the package's files, not their bytes: nothing changed.
    expect(log).toMatch(/base copy: \d+ shared files unchanged, 0 changed/);
    expect(log).not.toMatch(/changed during the build/);
  });

  it('leaves the base copy byte for byte the base venv of the image (content, modes, links)', async () => {
    const image = await docker.getImage(manifest.builder.base_image).inspect();
    const key = image.Id.replace(/^sha256:/, '').slice(0, 32);
    const copy = `/copies/.ckan-release-base/${key}`;
    const r = await withVolume(
      manifest.builder.base_image,
      COPIES_VOLUME,
      [
        'set -e',
        `test -e ${copy}/ok && test ! -e ${copy}/dirty`,
        `diff -r --no-dereference /opt/ckan-release/base-venv ${copy}/venv`,
        `(cd /opt/ckan-release/base-venv && find . -printf '%P %y %m %s %l\\n' | sort) > /tmp/image`,
        `(cd ${copy}/venv && find . -printf '%P %y %m %s %l\\n' | sort) > /tmp/copy`,
        'cmp /tmp/image /tmp/copy',
        'wc -l < /tmp/copy',
        // Nothing of a release is left in the volume.
        'ls -A /copies',
      ].join('\n'),
    );
    expect(r.out).toMatch(/^\d+\n\.ckan-release-base\n$/);
    expect(r.code).toBe(0);
    expect(Number(r.out.split('\n')[0])).toBeGreaterThan(100);
  });

  it('still holds every file its manifest says, with every hash right', () => {
    expectArchiveMatches(path.join(project.dir, '.ckan-release/artifacts', manifest.id), manifest);
  });
});

describe('a warm build of the same inputs at the same time', () => {
  let cold: BuildResult;
  let warm: BuildResult;
  const infos: string[] = [];

  beforeAll(async () => {
    const config = loadConfig(project.config);
    const packCacheVolume = `${PACK_VOLUME}-same`;
    const baseCopiesVolume = `${COPIES_VOLUME}-same`;
    extraVolumes.push(packCacheVolume, baseCopiesVolume);
    const now = () => new Date('2026-01-02T03:04:05.000Z');
    const opts = { config, docker, now, packCacheVolume, baseCopiesVolume };
    // Empty volumes: the base copy is made, every chunk compressed from the files read.
    cold = await build(opts);
    const kept = `${cold.dir}.cold`;
    renameSync(cold.dir, kept);
    cold = { ...cold, dir: kept, archive: path.join(kept, 'release.tar.gz') };
    warm = await build({ ...opts, onEvent: (e) => e.kind === 'info' && infos.push(e.message) });
  }, 900_000);

  afterAll(() => {
    rmSync(cold.dir, { recursive: true, force: true });
    rmSync(warm.dir, { recursive: true, force: true });
  });

  it('takes every chunk from the cache and writes the very bytes of the cold build', () => {
    expect(warm.id).toBe(cold.id);
    const pack = packLine(infos.join('\n'));
    expect(pack).toMatchObject({ compressed: 0, cached: pack.chunks, damaged: 0 });
    expect(warm.sha256).toBe(cold.sha256);
    expect(readFileSync(warm.archive).equals(readFileSync(cold.archive))).toBe(true);
    expect(warm.manifest.files).toEqual(cold.manifest.files);
    expectArchiveMatches(warm.dir, warm.manifest);
  });
});
