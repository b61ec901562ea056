// What reaches the base install and the release's pip runs: core patches (a patched requirements pin),
// builder.pip.overrides and .constraints, builder.extra_requirements, requirements files as extensions
// name them (extensions[].requirements, or found), and CKAN 2.9's who.ini beside the config.
// Real engine, debian12 builder, the fixture repositories.
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { commitFile } from '../support/fixtures.js';
import { inFreshContainer, testDocker } from '../support/docker.js';
import { testProject, type TestProject } from '../support/project.js';

let docker: Docker;
let project: TestProject;

interface Built {
  id: string;
  dir: string;
  manifest: Manifest;
  log: string;
}

// A root of this run's own: its base images are new (their build logs are asserted on), and removed after.
const ROOT = `/usr/lib/ckan-bc-${process.pid}`;

async function build(name: string, edit: (t: string) => string): Promise<Built> {
  const r = await project.cli(
    '--config',
    project.variant(name, (t) => edit(t).replace('root: /usr/lib/ckan\n', `root: ${ROOT}\n`)),
    'build',
  );
  expect(r.err).not.toMatch(/^ckan-release: /m);
  expect(r.code).toBe(0);
  const id = r.out.trim().split('\n').pop()!;
  const dir = path.join(project.dir, '.ckan-release/artifacts', id);
  return {
    id,
    dir,
    manifest: JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Manifest,
    log: readFileSync(path.join(dir, 'build.log'), 'utf8'),
  };
}

/** The demo config with extra builder keys (indented under builder:) and extension edits. */
const withBuilder = (t: string, lines: string[]) =>
  t.replace('  network: none\n', `  network: none\n${lines.map((l) => `  ${l}\n`).join('')}`);

let patched: Built;
let overridden: Built;

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  // A core patch that changes CKAN's requirements pin (as a fix of markdown==3.4.1 in CKAN 2.9.6-2.9.11).
  const pinDir = path.join(project.dir, 'patches-pin', 'ckan');
  mkdirSync(pinDir, { recursive: true });
  cpSync(path.join(project.dir, 'patches/ckan'), pinDir, { recursive: true });
  const req = readFileSync(path.join(project.fixtures.repos.ckan.path, 'requirements.txt'), 'utf8').split(
    '\n',
  );
  expect(req).toContain('fixturelib-markup==1.0.0');
  writeFileSync(
    path.join(pinDir, '0002-markup-2.patch'),
    [
      '--- a/requirements.txt',
      '+++ b/requirements.txt',
      `@@ -1,${req.length - 1} +1,${req.length - 1} @@`,
      ...req.slice(0, -1).map((l) => (l === 'fixturelib-markup==1.0.0' ? '-' + l : ' ' + l)),
      '+fixturelib-markup==2.0.0',
      '',
    ].join('\n'),
  );
  // ckanext-harvest < 1.4.1 and ckanext-spatial 0.x name theirs pip-requirements.txt.
  await commitFile(
    project.fixtures.repos['ckanext-showcase'].path,
    'pip-requirements.txt',
    'fixturelib-markup>=2.0\n',
    'Requirements as older extensions name them',
    'v1.2.0-pipreq',
  );

  patched = await build('patched-pin', (t) =>
    withBuilder(t, ['extra_requirements: [fixturelib-geo==1.0.0]'])
      .replace('patches: patches/', 'patches: patches-pin/')
      .replace('ref: v1.1.0', 'ref: v1.2.0-pipreq')
      // No ckanext-spatial: fixturelib-geo can then only come from builder.extra_requirements.
      .replace(/ {2}- name: ckanext-spatial\n(?: {4}.*\n)+/, '')
      .replace('plugins: [scheming_datasets]', 'plugins: [scheming_datasets]\n    requirements: none'),
  );
  overridden = await build('override', (t) =>
    withBuilder(t, [
      'pip:',
      '    find_links: [./.fixtures/wheelhouse]',
      '    overrides: [fixturelib-markup==2.0.0]',
      '    constraints: [fixturelib-geo==1.0.0]',
    ])
      .replace('  pip:\n    find_links: [./.fixtures/wheelhouse]\n\nextensions', '\nextensions')
      .replace(
        'plugins: [spatial_metadata, spatial_query]',
        'plugins: [spatial_metadata, spatial_query]\n    requirements: [requirements.txt]',
      ),
  );
}, 900_000);

afterAll(async () => {
  for (const b of [patched, overridden])
    if (b)
      await docker
        .getImage(b.manifest.builder.base_image)
        .remove()
        .catch(() => undefined);
});

describe('core patches and pins reach the base install', () => {
  it('a core patch to requirements.txt is what the base installs, and the patch is recorded', () => {
    expect(patched.manifest.pip.freeze).toContain('fixturelib-markup==2.0.0');
    expect(patched.manifest.pip.freeze).not.toContain('fixturelib-markup==1.0.0');
    expect(patched.manifest.patches.map((p) => p.file)).toEqual([
      'patches-pin/ckan/0001-default-site-description.patch',
      'patches-pin/ckan/0002-markup-2.patch',
    ]);
    // Applied in the base step, before CKAN's requirements are installed.
    const applied = patched.log.indexOf('applied patches-pin/ckan/0002-markup-2.patch');
    const installed = patched.log.indexOf('/opt/ckan-release/base-venv/bin/python -m pip install');
    expect(applied).toBeGreaterThan(0);
    expect(installed).toBeGreaterThan(applied);
  });

  it("builder.pip.overrides replace CKAN's pin in the base install; constraints reach every pip run", () => {
    expect(overridden.manifest.pip.freeze).toContain('fixturelib-markup==2.0.0');
    expect(overridden.log).toContain('override: fixturelib-markup==1.0.0 -> fixturelib-markup==2.0.0');
    const pipRuns = overridden.log.split('\n').filter((l) => / -m pip install /.test(l));
    expect(pipRuns.length).toBeGreaterThanOrEqual(2);
    for (const l of pipRuns) expect(l).toContain(' -c /tmp/ckan-release-user-constraints.txt');
    expect(overridden.manifest.pip).toMatchObject({
      overrides: ['fixturelib-markup==2.0.0'],
      constraints: ['fixturelib-geo==1.0.0'],
    });
  });

  it('each of these inputs makes its own base image (they are in the base digest)', () => {
    expect(patched.manifest.builder.base_image).not.toBe(overridden.manifest.builder.base_image);
  });

  it("builder.extra_requirements are installed into the release with CKAN's requirements", () => {
    expect(patched.manifest.extensions.map((x) => x.name)).not.toContain('ckanext-spatial');
    expect(patched.manifest.pip.freeze).toContain('fixturelib-geo==1.0.0');
    expect(patched.manifest.pip.extra_requirements).toEqual(['fixturelib-geo==1.0.0']);
    expect(patched.log).toMatch(
      /base-venv\/bin\/python -m pip install .* -r \S+requirements.txt fixturelib-geo==1\.0\.0/,
    );
  });
});

describe('requirements files as extensions name them', () => {
  it('are found (requirements.txt, pip-requirements.txt, none), or taken as named, and recorded', () => {
    const req = (b: Built) => Object.fromEntries(b.manifest.extensions.map((x) => [x.name, x.requirements]));
    expect(req(patched)).toEqual({
      'ckanext-showcase': ['pip-requirements.txt'],
      'ckanext-scheming': [],
    });
    expect(req(overridden)).toEqual({
      'ckanext-showcase': [],
      'ckanext-spatial': ['requirements.txt'],
      'ckanext-scheming': ['requirements.txt'],
    });
    const R = patched.manifest.release_path;
    const run = patched.log.split('\n').find((l) => l.startsWith(`$ ${R}/bin/python -m pip install `))!;
    expect(run).toContain(` -r ${R}/src/ckanext-showcase/pip-requirements.txt`);
    expect(run).not.toContain('ckanext-scheming/requirements.txt');
  });

  it('a named file the extension lacks is refused before any build, exit 2', async () => {
    const r = await project.cli(
      '--config',
      project.variant('no-such-req', (t) =>
        t.replace(
          'plugins: [scheming_datasets]',
          'plugins: [scheming_datasets]\n    requirements: pip-requirements.txt',
        ),
      ),
      'build',
    );
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /^ckan-release: extension ckanext-scheming: requirements file pip-requirements\.txt \(extensions\[\]\.requirements\) is not in release-3\.0\.0 \([0-9a-f]{12}\)$/m,
    );
  });

  it('a core pin that a constraint forbids names both, in the base step', async () => {
    const r = await project.cli(
      '--config',
      project.variant('pin-vs-constraint', (t) =>
        withBuilder(t, [
          'pip:',
          '    find_links: [./.fixtures/wheelhouse]',
          '    constraints: ["fixturelib-markup<2"]',
        ])
          .replace('  pip:\n    find_links: [./.fixtures/wheelhouse]\n\nextensions', '\nextensions')
          .replace('patches: patches/', 'patches: patches-pin/'),
      ),
      'build',
    );
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^ckan-release: build failed \(base\): ckan requirements\.txt: conflicting requirements: needs fixturelib-markup==2\.0\.0, but builder\.pip\.constraints ask for fixturelib-markup<2$/m,
    );
  });
});

describe('a core pin no index has', () => {
  it('names the pin and says how to replace it', async () => {
    const r = await project.cli(
      '--config',
      project.variant('pin-missing', (t) =>
        withBuilder(t, [
          'pip:',
          '    find_links: [./.fixtures/wheelhouse]',
          '    overrides: [fixturelib-markup==9.9]',
        ]).replace('  pip:\n    find_links: [./.fixtures/wheelhouse]\n\nextensions', '\nextensions'),
      ),
      'build',
    );
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /^ckan-release: build failed \(base\): ckan requirements\.txt: requirement fixturelib-markup==9\.9 is not available \(not in any index or find-links\); if no version of it fits this Python, override the pin \(builder\.pip\.overrides\) or patch CKAN's requirements \(patches\/ckan\/\)$/m,
    );
  });
});

describe("CKAN 2.9's who.ini", () => {
  it('is linked beside the config in the release, so an app whose config says %(here)s/who.ini starts', async () => {
    const link = patched.manifest.files.find((f) => f.path === 'who.ini');
    expect(link).toMatchObject({ type: 'symlink', target: 'src/ckan/ckan/config/who.ini' });
    const R = patched.manifest.release_path;
    const ini = [
      '[app:main]',
      'ckan.site_url = http://ckan.test',
      'who.config_file = %(here)s/who.ini',
      'ckan.plugins = showcase',
    ];
    const r = await inFreshContainer(
      patched.dir,
      [
        `mkdir -p ${R} && tar -xzf /in/release.tar.gz -C ${R}`,
        `printf '%s\\n' ${ini.map((l) => `'${l}'`).join(' ')} > ${R}/ckan.ini`,
        `${R}/bin/ckan -c ${R}/ckan.ini plugins >/tmp/out; echo "with the link: $?"; cut -d' ' -f1 /tmp/out`,
        // The same release without the link: what every CKAN 2.9 release did before.
        `rm ${R}/who.ini`,
        `${R}/bin/ckan -c ${R}/ckan.ini plugins >/dev/null 2>/tmp/err; echo "without: $?"; grep -o "No such file or directory: '[^']*'" /tmp/err`,
      ].join('\n'),
    );
    expect(r.out).toBe(
      ['with the link: 0', 'showcase', 'without: 1', `No such file or directory: '${R}/who.ini'`, ''].join(
        '\n',
      ),
    );
  });
});
