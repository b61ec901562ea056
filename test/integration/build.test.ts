// ckan-release build on the real engine with the debian12 builder and the fixture repositories.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type Docker from 'dockerode';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { listArtifacts } from '../../src/artifact/store.js';
import { BASE_VENV } from '../../src/builder/build.js';
import { makeDeltaArchive } from '../../src/deploy/delta.js';
import { demuxBuffer } from '../../src/docker/run.js';
import { commitFile } from '../support/fixtures.js';
import { builderImage, inFreshContainer, testDocker } from '../support/docker.js';
import { testProject, type TestProject } from '../support/project.js';
import { expectArchiveMatches, packLine, sha256 } from '../support/artifact.js';

let docker: Docker;
let project: TestProject;
let first: { id: string; manifest: Manifest; dir: string };
let firstOutput: string;
// This file's own pack cache, so that its counts do not depend on other builds and it may damage it.
const PACK_VOLUME = `ckan-release-pack-cache-test-${process.pid}`;
// And its own base copies (the volume mounted at <root>/releases in the release container).
const COPIES_VOLUME = `ckan-release-base-copies-test-${process.pid}`;

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  process.env.CKAN_RELEASE_PACK_CACHE_VOLUME = PACK_VOLUME;
  process.env.CKAN_RELEASE_BASE_COPIES_VOLUME = COPIES_VOLUME;
  const r = await project.cli('--config', project.config, 'build');
  firstOutput = r.err;
  expect(r.err).not.toMatch(/^ckan-release: /m);
  expect(r.code).toBe(0);
  const id = r.out.trim().split('\n').pop()!;
  const dir = path.join(project.dir, '.ckan-release/artifacts', id);
  first = {
    id,
    dir,
    manifest: JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest,
  };
}, 900_000);

afterAll(async () => {
  delete process.env.CKAN_RELEASE_PACK_CACHE_VOLUME;
  delete process.env.CKAN_RELEASE_BASE_COPIES_VOLUME;
  await docker.getVolume(PACK_VOLUME).remove();
  await docker.getVolume(COPIES_VOLUME).remove();
});

/** How many gzip members the file holds (Python's zlib: one decompressobj per member). */
function gzipMembers(file: string): number {
  return Number(
    execFileSync('python3', [
      '-c',
      'import sys, zlib\n' +
        'data, n = open(sys.argv[1], "rb").read(), 0\n' +
        'while data:\n' +
        '    d = zlib.decompressobj(31); d.decompress(data); assert d.eof; data, n = d.unused_data, n + 1\n' +
        'print(n)',
      file,
    ]).toString(),
  );
}

/** Every member of a .tar.gz as Node reads it (zlib gunzip + tar-stream, as src/deploy/delta.ts). */
async function tarEntries(data: Buffer): Promise<{ name: string; type: string; body: Buffer }[]> {
  const extract = tarStream.extract();
  const out: { name: string; type: string; body: Buffer }[] = [];
  const done = (async () => {
    for await (const e of extract) {
      const body: Buffer[] = [];
      for await (const c of e) body.push(c as Buffer);
      out.push({ name: e.header.name, type: e.header.type, body: Buffer.concat(body) });
    }
  })();
  Readable.from([data]).pipe(createGunzip()).pipe(extract);
  await done;
  return out;
}

describe('a build of the example project', () => {
  it('reports every step with timings and prints the ID last', () => {
    for (const step of [
      'resolve',
      'image',
      'base venv',
      'clone',
      'extensions',
      'patches',
      'install',
      'verify',
      'pack',
    ]) {
      expect(firstOutput).toMatch(new RegExp(`^\\[ *\\d+\\.\\ds\\] ${step}$`, 'm'));
    }
    expect(first.id).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
  });

  it('records every input in the manifest', () => {
    const m = first.manifest;
    const tags = project.fixtures.repos;
    expect(m.id).toBe(first.id);
    expect(m.release_path).toBe(`/usr/lib/ckan/releases/${first.id}`);
    expect(m.ckan).toMatchObject({
      ref: 'ckan-2.9.11',
      commit: tags.ckan.tags['ckan-2.9.11'],
      version: '2.9.11',
    });
    expect(m.extensions.map((x) => [x.name, x.commit])).toEqual([
      ['ckanext-showcase', tags['ckanext-showcase'].tags['v1.1.0']],
      ['ckanext-spatial', tags['ckanext-spatial'].tags['v2.1.0']],
      ['ckanext-scheming', tags['ckanext-scheming'].tags['release-3.0.0']],
    ]);
    expect(m.patches).toEqual([
      {
        file: 'patches/ckan/0001-default-site-description.patch',
        target: 'ckan',
        sha256: sha256(path.join(project.dir, 'patches/ckan/0001-default-site-description.patch')),
      },
    ]);
    expect(m.builder).toMatchObject({
      os: 'debian12',
      base_venv: BASE_VENV,
      python: { path: '/usr/bin/python3' },
    });
    expect(m.builder.python.version).toMatch(/^3\.11\.\d+$/);
    expect(m.pip.freeze).toContain('fixturelib-geo==1.0.0');
    expect(Object.keys(m.plugins)).toEqual(
      expect.arrayContaining(['showcase', 'spatial_metadata', 'spatial_query', 'scheming_datasets']),
    );
    expect(m.archive.sha256).toBe(sha256(path.join(first.dir, 'release.tar.gz')));
    expect(m.archive.bytes).toBe(lstatSync(path.join(first.dir, 'release.tar.gz')).size);
    expect(readFileSync(path.join(first.dir, 'build.log'), 'utf8')).toMatch(/Successfully installed/);
  });

  it('installs every extension in one pip run, constrained to the base', () => {
    const log = readFileSync(path.join(first.dir, 'build.log'), 'utf8');
    const R = `/usr/lib/ckan/releases/${first.id}`;
    const installs = log.split('\n').filter((l) => l.startsWith(`$ ${R}/bin/python -m pip install `));
    expect(installs.length).toBe(1);
    expect(installs[0]).toContain(' -c /tmp/ckan-release-constraints.txt ');
    for (const x of ['ckanext-showcase', 'ckanext-spatial', 'ckanext-scheming'])
      expect(installs[0]).toContain(` -e ${R}/src/${x}`);
    expect(installs[0]).toContain(` -r ${R}/src/ckanext-spatial/requirements.txt`);
    // The venv has the setuptools and wheel an isolated build would install: none is made (README,
    // Building step 7), and the trees still get the egg-info an isolated build writes there.
    expect(installs[0]).toContain(' --no-build-isolation ');
    expect(log).toContain(
      'install: editable wheels built in the venv (no build isolation): the venv has the build ' +
        'requirements an isolated build would install (setuptools 66.1.1, wheel 0.38.4)',
    );
    const paths = new Set(first.manifest.files.map((f) => f.path));
    for (const x of ['showcase', 'spatial', 'scheming'])
      for (const f of ['PKG-INFO', 'SOURCES.txt', 'entry_points.txt', 'top_level.txt'])
        expect(paths, `${x} ${f}`).toContain(`src/ckanext-${x}/ckanext_${x}.egg-info/${f}`);
  });

  it('has a manifest whose every entry matches the tarball (sha256, mode, type, link target), and nothing more', () => {
    expectArchiveMatches(first.dir, first.manifest);
  });

  it('packs one gzip member per chunk, all compressed on an empty cache; Node reads every entry in manifest order', async () => {
    const pack = packLine(firstOutput);
    expect(pack.entries).toBe(first.manifest.files.length);
    expect(pack.chunks).toBeGreaterThan(2);
    expect(pack).toMatchObject({ compressed: pack.chunks, cached: 0, damaged: 0 });
    const archive = path.join(first.dir, 'release.tar.gz');
    expect(gzipMembers(archive)).toBe(pack.chunks);
    const entries = await tarEntries(readFileSync(archive));
    expect(entries.map((e) => e.name.replace(/^\.\//, '').replace(/\/$/, ''))).toEqual(
      first.manifest.files.map((f) => f.path),
    );
    expect(entries.map((e) => e.type)).toEqual(
      first.manifest.files.map((f) => ({ file: 'file', dir: 'directory', symlink: 'symlink' })[f.type]),
    );
  });

  it('is, uncompressed, byte for byte the tar stream GNU tar writes for the same entries in the same order', async () => {
    const r = await inFreshContainer(
      first.dir,
      [
        'set -e',
        'mkdir /r && tar -xzf /in/release.tar.gz -C /r',
        "gzip -dc /in/release.tar.gz | tar -tf - | sed 's#/$##' > /tmp/list",
        'cd /r && tar --no-recursion --numeric-owner --owner=0 --group=0 --mtime=@946684800 -cf /tmp/gnu.tar -T /tmp/list',
        'gzip -dc /in/release.tar.gz | cmp - /tmp/gnu.tar && wc -l < /tmp/list',
      ].join('\n'),
    );
    expect(r.out.trim()).toBe(String(first.manifest.files.length));
    expect(r.code).toBe(0);
  });

  it('holds exactly the bytecode a forced compile of the release makes: none stale, none missing', async () => {
    // Most .pyc files come from the base image, compiled there; the release compiles only what it
    // changed or added (rewritten files, the patched core file, the extensions).
    const R = `/usr/lib/ckan/releases/${first.id}`;
    const r = await inFreshContainer(
      first.dir,
      [
        'set -e',
        `mkdir -p ${R} && tar -xzf /in/release.tar.gz -C ${R}`,
        `cp -a ${R} /tmp/again`,
        `${R}/bin/python -m compileall -q -f -d /usr/lib/ckan/current /tmp/again > /dev/null || true`,
        `diff -r ${R} /tmp/again && echo same`,
        `find ${R} -name '*.pyc' | wc -l`,
      ].join('\n'),
    );
    const [same, count] = r.out.trim().split('\n');
    expect(same).toBe('same');
    expect(Number(count)).toBeGreaterThan(500);
    expect(r.code).toBe(0);
  });

  it('cuts a delta out of the multi-member archive: files from the first, a middle and the last member', async () => {
    const files = first.manifest.files.filter((f) => f.type === 'file' && f.size > 0);
    const need = [files[0]!, files[Math.floor(files.length / 2)]!, files[files.length - 1]!];
    const delta = await makeDeltaArchive(
      path.join(first.dir, 'release.tar.gz'),
      need.map((f) => f.path),
    );
    expect(delta.files).toBe(3);
    const got = await tarEntries(delta.data);
    expect(got.map((e) => [e.name, createHash('sha256').update(e.body).digest('hex')])).toEqual(
      need.map((f) => [f.path, f.sha256]),
    );
  });

  it('unpacked at <root>/releases/<ID> in a fresh container, runs its console scripts and imports every extension, with no trace of the base path', async () => {
    const R = `/usr/lib/ckan/releases/${first.id}`;
    const r = await inFreshContainer(
      first.dir,
      [
        'set -e',
        `mkdir -p ${R} && tar -xzf /in/release.tar.gz -C ${R}`,
        `${R}/bin/ckan --version`,
        `${R}/bin/python -c "import ckan, ckanext.showcase, ckanext.spatial, ckanext.scheming, fixturelib_geo; print('imports ok')"`,
        `printf '[app:main]\\nckan.site_url = http://ckan.test\\nckan.plugins = showcase spatial_metadata spatial_query scheming_datasets\\n' > /tmp/t.ini`,
        `${R}/bin/ckan -c /tmp/t.ini plugins | cut -d' ' -f1 | tr '\\n' ' '; echo`,
        `${R}/bin/python -c "from ckan.cli import CKANConfigLoader; from ckan.config.middleware import make_app; import json; app = make_app(CKANConfigLoader('/tmp/t.ini').get_config()); print(json.dumps(app.status_show()['result']['site_description']))"`,
        `if grep -rlF ${BASE_VENV} ${R}; then echo BASE PATH FOUND; exit 1; fi`,
        `head -1 ${R}/bin/ckan`,
        'echo done',
      ].join('\n'),
    );
    expect(r.out).toBe(
      [
        'CKAN 2.9.11',
        'imports ok',
        'showcase spatial_metadata spatial_query scheming_datasets ',
        '"A CKAN portal (core patched by ckan-release)"',
        `#!${R}/bin/python`,
        'done',
        '',
      ].join('\n'),
    );
    expect(r.code).toBe(0);
  });
});

describe('a rebuild with one extension changed', () => {
  let second: Manifest;
  let secondDir: string;
  let output: string;

  beforeAll(async () => {
    const file = project.variant('showcase-v1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0'));
    const r = await project.cli('--config', file, 'build');
    output = r.err;
    expect(r.code).toBe(0);
    const id = r.out.trim();
    secondDir = path.join(project.dir, '.ckan-release/artifacts', id);
    second = JSON.parse(readFileSync(path.join(secondDir, 'manifest.json'), 'utf8')) as Manifest;
  }, 600_000);

  it('compresses only the chunks that changed, takes the rest from the pack cache, and its archive is whole', () => {
    const pack = packLine(output);
    const firstPack = packLine(firstOutput);
    expect(pack.entries).toBe(second.files.length);
    expect(pack.cached).toBeGreaterThan(0);
    expect(pack.damaged).toBe(0);
    expect(pack.compressed + pack.cached).toBe(pack.chunks);
    // What changed: showcase's chunk(s), the files naming the release path, RELEASE.json, the end.
    expect(pack.compressed).toBeLessThan(firstPack.chunks / 2);
    expect(gzipMembers(path.join(secondDir, 'release.tar.gz'))).toBe(pack.chunks);
    expectArchiveMatches(secondDir, second);
  });

  it('reuses the cached base venv and says so', () => {
    expect(output).toMatch(/base venv: reused ckan-release-base:debian12-/);
    expect(output).toMatch(
      /ckan ckan-2\.9\.11 -> [0-9a-f]{12} \(cached mirror, no fetch\)|ckan ckan-2\.9\.11 -> [0-9a-f]{12}/,
    );
  });

  it('records the new commit', () => {
    const showcase = second.extensions.find((x) => x.name === 'ckanext-showcase')!;
    expect(showcase).toMatchObject({
      ref: 'v1.0.0',
      commit: project.fixtures.repos['ckanext-showcase'].tags['v1.0.0'],
    });
    expect(second.id).not.toBe(first.id);
    expect(second.id.split('-')[1]).not.toBe(first.id.split('-')[1]);
  });

  it('differs from the first build in few bytes: .pyc files do not embed the release path', () => {
    const before = new Map(first.manifest.files.map((f) => [f.path, f]));
    let changed = 0;
    let total = 0;
    const changedPaths: string[] = [];
    for (const f of second.files) {
      if (f.type !== 'file') continue;
      total += f.size;
      if (before.get(f.path)?.sha256 !== f.sha256) {
        changed += f.size;
        changedPaths.push(f.path);
      }
    }
    // What may differ: showcase's own files, and the small files that name the release path (shebangs,
    // .egg-link, .pth, PEP 660 finders and their bytecode, RECORD, direct_url.json, pyvenv.cfg).
    expect(
      changedPaths.filter(
        (p) => p.endsWith('.pyc') && !p.includes('showcase') && !p.includes('__editable__'),
      ),
    ).toEqual([]);
    expect(changed / total).toBeLessThan(0.05);
  });

  it('keeps the bytecode of the base, CKAN core and its requirements, byte for byte', () => {
    const pyc = (m: Manifest, re: RegExp) =>
      m.files.filter((f) => re.test(f.path)).map((f) => [f.path, f.sha256]);
    for (const re of [
      /^lib\/python3\.\d+\/site-packages\/fixturelib_markup\/__pycache__\/.*\.pyc$/,
      /^src\/ckan\/ckan\/__pycache__\/.*\.pyc$/,
    ]) {
      expect(pyc(first.manifest, re).length, String(re)).toBeGreaterThan(0);
      expect(pyc(second, re)).toEqual(pyc(first.manifest, re));
    }
  });
});

describe('builds that must fail', () => {
  const artifactsNow = () =>
    listArtifacts(path.join(project.dir, '.ckan-release/artifacts')).map((a) => a.id);
  const leftovers = () =>
    readdirSync(path.join(project.dir, '.ckan-release/artifacts')).filter((n) => n.startsWith('.staging'));

  async function failingBuild(name: string, edit: (t: string) => string) {
    const before = artifactsNow();
    const r = await project.cli('--config', project.variant(name, edit), 'build');
    expect(r.out).toBe('');
    expect(artifactsNow()).toEqual(before);
    expect(leftovers()).toEqual([]);
    return r;
  }

  it('a patch that does not apply names the patch and the hunk', async () => {
    const dir = path.join(project.dir, 'patches-bad', 'ckanext-showcase');
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      path.join(dir, '0001-broken.patch'),
      [
        '--- a/ckanext/showcase/plugin.py',
        '+++ b/ckanext/showcase/plugin.py',
        '@@ -1,3 +1,3 @@',
        '-this line is not in the file',
        '+neither is this one',
        ' nor this',
        ' or this',
        '',
      ].join('\n'),
    );
    const r = await failingBuild('bad-patch', (t) => t.replace('patches: patches/', 'patches: patches-bad/'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^ckan-release: build failed \(patch\): patch patches-bad\/ckanext-showcase\/0001-broken\.patch does not apply to ckanext-showcase: hunk #1 at line 1 of ckanext\/showcase\/plugin\.py$/m,
    );
    expect(r.err).toMatch(/hint: the whole build log: .*\.logs\/build-.*\.log/);
  });

  it('an unknown ref names the extension and the ref, exit 2', async () => {
    const r = await failingBuild('bad-ref', (t) => t.replace('ref: release-3.0.0', 'ref: release-9.9.9'));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /^ckan-release: extension ckanext-scheming: ref "release-9\.9\.9" is not a tag, branch or commit of .*ckanext-scheming$/m,
    );
  });

  it('a missing requirement names the extension and the requirement', async () => {
    await commitFile(
      project.fixtures.repos['ckanext-spatial'].path,
      'requirements.txt',
      'fixturelib-geo>=1.0\nfixturelib-nosuch>=1.0\n',
      'Require a package that no index has',
      'v2.1.1-missing',
    );
    const r = await failingBuild('missing-req', (t) => t.replace('ref: v2.1.0', 'ref: v2.1.1-missing'));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^ckan-release: build failed \(install\): ckanext-spatial requirements\.txt: requirement fixturelib-nosuch>=1\.0 is not available \(not in any index or find-links\)$/m,
    );
  });

  it('a requirement conflict names the extension and both requirements', async () => {
    await commitFile(
      project.fixtures.repos['ckanext-scheming'].path,
      'requirements.txt',
      'fixturelib-markup>=2.0\n',
      'Want the new markup',
      'release-3.0.1-conflict',
    );
    const r = await failingBuild('conflict', (t) =>
      t.replace('ref: release-3.0.0', 'ref: release-3.0.1-conflict'),
    );
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^ckan-release: build failed \(install\): ckanext-scheming requirements\.txt: conflicting requirements: needs fixturelib-markup>=2\.0, but fixturelib-markup==1\.0\.0 is already installed/m,
    );
  });

  it('a declared plugin that no package provides is named', async () => {
    const r = await failingBuild('no-plugin', (t) =>
      t.replace('plugins: [showcase]', 'plugins: [showcase, showcase_admin]'),
    );
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^ckan-release: build failed \(verify\): ckanext-showcase: plugin showcase_admin is not a ckan\.plugins entry point of any installed package$/m,
    );
  });

  it('keeps no half artifact', () => {
    expect(existsSync(path.join(project.dir, '.ckan-release/artifacts/.logs'))).toBe(true);
    expect(leftovers()).toEqual([]);
  });
});

describe('artifacts', () => {
  it('--json lists {id, created, bytes, sha256} newest first', async () => {
    const r = await project.cli('--config', project.config, '--json', 'artifacts');
    expect(r.code).toBe(0);
    const list = JSON.parse(r.out) as { id: string; created: string; bytes: number; sha256: string }[];
    expect(list.length).toBe(2);
    expect(list[1]).toEqual({
      id: first.id,
      created: first.manifest.created,
      bytes: first.manifest.archive.bytes,
      sha256: first.manifest.archive.sha256,
    });
    expect(list[0]!.id > list[1]!.id).toBe(true);
  });

  it('show takes a unique prefix and prints the manifest', async () => {
    const r = await project.cli('--config', project.config, 'artifacts', 'show', first.id.slice(0, 20));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(new RegExp(`^id: +${first.id}$`, 'm'));
    expect(r.out).toMatch(
      /^ {2}patches\/ckan\/0001-default-site-description\.patch {2}sha256 [0-9a-f]{64}$/m,
    );
    const json = await project.cli('--config', project.config, '--json', 'artifacts', 'show', first.id);
    expect((JSON.parse(json.out) as Manifest).files.length).toBe(first.manifest.files.length);
  });
});

describe('a damaged pack cache', () => {
  let output: string;
  let dir: string;
  let manifest: Manifest;
  let damaged: number;

  beforeAll(async () => {
    // Half the cached members lose their second half, the others get one byte flipped in the middle
    // (their gzip trailer, CRC and size, still intact).
    const container = await docker.createContainer({
      Image: (await builderImage('debian12')).tag,
      Cmd: [
        'python3',
        '-c',
        'import glob\n' +
          'names = sorted(glob.glob("/cache/gzip-members/*.gz"))\n' +
          'for i, name in enumerate(names):\n' +
          '    data = bytearray(open(name, "rb").read())\n' +
          '    if i % 2:\n' +
          '        data[len(data) // 2] ^= 0xFF\n' +
          '    else:\n' +
          '        data = data[: len(data) // 2]\n' +
          '    open(name, "wb").write(data)\n' +
          'print(len(names))',
      ],
      HostConfig: {
        NetworkMode: 'none',
        Mounts: [{ Type: 'volume', Source: PACK_VOLUME, Target: '/cache' }],
      },
      Labels: { 'ckan-release': '1' },
    });
    try {
      await container.start();
      expect(((await container.wait()) as { StatusCode: number }).StatusCode).toBe(0);
      damaged = Number(demuxBuffer((await container.logs({ stdout: true })) as Buffer));
    } finally {
      await container.remove({ force: true });
    }
    const r = await project.cli('--config', project.config, 'build');
    output = r.err;
    expect(r.code).toBe(0);
    dir = path.join(project.dir, '.ckan-release/artifacts', r.out.trim());
    manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
  }, 600_000);

  it('is detected: every damaged member is compressed again and replaced, none is shipped', () => {
    expect(damaged).toBeGreaterThan(2);
    const pack = packLine(output);
    expect(pack.cached).toBe(0);
    expect(pack.damaged).toBeGreaterThan(0);
    expect(pack.compressed).toBe(pack.chunks);
    expect(gzipMembers(path.join(dir, 'release.tar.gz'))).toBe(pack.chunks);
    expectArchiveMatches(dir, manifest);
  });
});
