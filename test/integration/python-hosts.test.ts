// CentOS 7's Pythons for real: the fixture CKAN built by the builder script running on Python 2.7
// (Debian 11's python2.7, a py2 venv) and on Python 3.6 (pyenv's 3.6.15), each shipped to a sandbox
// host whose only Python is that one (test/fixtures/python-hosts/), then a second release as a delta,
// then a rollback. Every step asserts the host's real state: readlink current, the ledger, and what
// the release's own interpreter serves (wsgiref: no mod_wsgi exists here for these Pythons).
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { sandboxDown, sandboxUp } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, ledgerOf, onHost } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';
import {
  ensurePy2Wheelhouse,
  flavourImage,
  flavourPython,
  writeFlavour,
  type PythonFlavour,
} from '../support/python-hosts.js';

const ROOT = '/usr/lib/ckan';

interface Bed {
  flavour: PythonFlavour;
  env: string;
  host: string;
  ssh: number;
  http: number;
  /** The interpreter path the builder records and the host must have. */
  pythonPath: string;
  version: RegExp;
  /** A compiled module of the release, where this Python keeps its bytecode. */
  bytecode: string;
}

// Ports and host names of this test only (py- prefix, 2320-2329 / 8320-8329).
const BEDS: Bed[] = [
  {
    flavour: 'py2-debian11',
    env: 'py2',
    host: 'py-two',
    ssh: 2320,
    http: 8320,
    pythonPath: '/usr/bin/python2.7',
    version: /^2\.7\.\d+$/,
    bytecode: 'src/ckan/ckan/__init__.pyc',
  },
  {
    flavour: 'py36-debian12',
    env: 'py36',
    host: 'py-three6',
    ssh: 2321,
    http: 8321,
    pythonPath: '/opt/python3.6/bin/python3.6',
    version: /^3\.6\.\d+$/,
    bytecode: 'src/ckan/ckan/__pycache__/__init__.cpython-36.pyc',
  },
];

let docker: Docker;
let project: TestProject;
const configs: Record<string, string> = {};

function configText(bed: Bed, showcase: string): string {
  return `project: py-portal
root: ${ROOT}
ckan: { source: ./.fixtures/git/ckan, ref: ckan-2.9.11 }
builder:
  os: ${bed.flavour}
  python: ${flavourPython(bed.flavour)}
  network: none
  pip: { find_links: [${bed.flavour === 'py2-debian11' ? './.fixtures/wheelhouse-py2' : './.fixtures/wheelhouse'}] }
extensions:
  - { name: ckanext-showcase, source: ./.fixtures/git/ckanext-showcase, ref: ${showcase}, plugins: [showcase] }
  - { name: ckanext-scheming, source: ./.fixtures/git/ckanext-scheming, ref: release-3.0.0, plugins: [scheming_datasets] }
config: { template: templates/ckan.ini.j2, file: ckan.ini }
shared: [ { path: storage, link: storage } ]
deploy:
  keep_releases: 3
  owner: ckan
  group: www-data
  restart: sudo -n /usr/local/sbin/py-host-restart
  healthcheck: { url: 'http://127.0.0.1:{{ http_port }}/api/3/action/status_show', timeout: 30 }
environments:
  ${bed.env}:
    hosts: [${bed.host}]
    user: deploy
    ssh_config: .ckan-release/sandbox/ssh_config
    host_vars: { ${bed.host}: { http_port: ${bed.http} } }
    vars: { site_url: 'http://${bed.host}.test', site_title: 'Python test bed' }
    secrets: secrets/staging.yml
`;
}

/** stdout of a command that must succeed (what it says about its progress: `said`). */
async function ok(config: string, ...argv: string[]): Promise<string> {
  return (await run(config, ...argv)).out;
}

async function run(config: string, ...argv: string[]): Promise<{ out: string; said: string }> {
  const r = await project.cli('--config', config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}\n${r.out}`);
  return { out: r.out, said: r.err };
}

function manifestOf(id: string): Manifest {
  return JSON.parse(
    readFileSync(path.join(project.dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
  ) as Manifest;
}

interface Status {
  status: number;
  ckanVersion?: string;
  extensions?: string[];
  ckanPath?: string;
  python?: string;
  showcase?: string;
}

async function serves(port: number): Promise<Status> {
  const res = await fetch(`http://127.0.0.1:${port}/api/3/action/status_show`);
  if (res.status !== 200) return { status: res.status };
  const r = (
    (await res.json()) as {
      result: {
        ckan_version: string;
        extensions: string[];
        fixture: { ckan_path: string; python: string; plugins: Record<string, { version: string }> };
      };
    }
  ).result;
  return {
    status: 200,
    ckanVersion: r.ckan_version,
    extensions: r.extensions,
    ckanPath: r.fixture.ckan_path,
    python: r.fixture.python,
    showcase: r.fixture.plugins.showcase?.version,
  };
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  await ensurePy2Wheelhouse(project.fixtures.dir);
  const hosts = [];
  for (const bed of BEDS) {
    const context = writeFlavour(project.dir, bed.flavour);
    configs[`${bed.env}-A`] = project.variant(`${bed.env}-A`, () => configText(bed, 'v1.1.0'));
    configs[`${bed.env}-B`] = project.variant(`${bed.env}-B`, () => configText(bed, 'v1.0.0'));
    hosts.push({
      name: bed.host,
      sshPort: bed.ssh,
      httpPort: bed.http,
      image: await flavourImage(docker, context, bed.flavour, 'host'),
    });
  }
  await sandboxUp(docker, { dir: path.join(project.dir, '.ckan-release/sandbox'), hosts }, (l) =>
    process.stderr.write(`[sandbox] ${l}\n`),
  );
}, 1_800_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
  // The image contexts (the 3.6 one holds a copy of the interpreter, about 130 MB).
  if (project) rmSync(path.join(project.dir, 'docker'), { recursive: true, force: true });
});

describe.each(BEDS)('Python $flavour: build, ship, delta, rollback', (bed) => {
  let A: string;
  let B: string;

  it('the host has that Python and no other', async () => {
    const r = await onHost(
      docker,
      bed.host,
      `ls /usr/bin/python* /usr/local/bin/python* 2>/dev/null; ${bed.pythonPath} -c 'import sys; print("%d.%d" % sys.version_info[:2])'`,
    );
    const lines = r.out.trim().split('\n');
    expect(lines.at(-1)).toBe(bed.flavour === 'py2-debian11' ? '2.7' : '3.6');
    if (bed.flavour === 'py2-debian11')
      expect(lines.slice(0, -1).sort()).toEqual(['/usr/bin/python2', '/usr/bin/python2.7']);
    else expect(lines.slice(0, -1)).toEqual(['/usr/local/bin/python3']);
  });

  it('builds the fixture CKAN with the builder script running on that Python', async () => {
    A = (await ok(configs[`${bed.env}-A`]!, 'build')).trim().split('\n').pop()!;
    B = (await ok(configs[`${bed.env}-B`]!, 'build')).trim().split('\n').pop()!;
    const m = manifestOf(A);
    expect(m.builder.python.path).toBe(bed.pythonPath);
    expect(m.builder.python.version).toMatch(bed.version);
    expect(m.ckan.version).toBe('2.9.11');
    expect(Object.keys(m.plugins).sort()).toEqual(['scheming_datasets', 'showcase', 'stats', 'text_view']);
    const paths = new Set(m.files.map((f) => f.path));
    expect(paths.has(bed.bytecode), bed.bytecode).toBe(true);
    // pip's own notices (pip 20's Python 2 deprecation) are not in the freeze.
    expect(m.pip.freeze.filter((l) => /DEPRECATION|WARNING/.test(l))).toEqual([]);
    // No file names the base venv (the builder checks; the manifest would not exist otherwise).
    expect(m.files.find((f) => f.path === 'bin/python')).toBeDefined();
    expect(m.pip.freeze.some((l) => l.startsWith('ckanext-showcase') || l.includes('ckanext-showcase'))).toBe(
      true,
    );
  });

  it('setup runs the agent with the host python found on PATH (no artifact yet)', async () => {
    expect(await ok(configs[`${bed.env}-A`]!, 'setup', bed.env)).toMatch(
      new RegExp(`^${bed.host}: made `, 'm'),
    );
    const r = await onHost(docker, bed.host, `cd ${ROOT} && ls -A`);
    expect(r.out).toBe('.ckan-release\nreleases\nshared\n');
  });

  it('ships A: current, ledger and what the release serves', async () => {
    await ok(configs[`${bed.env}-A`]!, 'ship', bed.env, A);
    expect(await currentOf(docker, bed.host)).toBe(`${ROOT}/releases/${A}`);
    expect((await ledgerOf(docker, bed.host)).map((e) => e.event)).toEqual([
      'staged',
      'activated',
      'healthy',
    ]);
    const s = await serves(bed.http);
    expect(s).toMatchObject({
      status: 200,
      ckanVersion: '2.9.11',
      ckanPath: `${ROOT}/releases/${A}/src/ckan/ckan`,
      python: `${ROOT}/current/bin/python`,
      showcase: '1.1.0',
      extensions: ['showcase', 'scheming_datasets'],
    });
    // The release's bytecode is the build's: Python did not rewrite it at import (same mtimes).
    const pyc = await onHost(docker, bed.host, `sha256sum ${ROOT}/current/${bed.bytecode}`);
    const entry = manifestOf(A).files.find((f) => f.path === bed.bytecode)!;
    expect(pyc.out.split(' ')[0]).toBe(entry.sha256);
  });

  it('ships B as a delta, then rolls back to A', async () => {
    const { said } = await run(configs[`${bed.env}-B`]!, 'ship', bed.env, B);
    expect(said).toMatch(/delta: sent \d+ files/);
    expect(await currentOf(docker, bed.host)).toBe(`${ROOT}/releases/${B}`);
    expect((await serves(bed.http)).showcase).toBe('1.0.0');

    await ok(configs[`${bed.env}-B`]!, 'rollback', bed.env);
    expect(await currentOf(docker, bed.host)).toBe(`${ROOT}/releases/${A}`);
    const s = await serves(bed.http);
    expect([s.status, s.showcase, s.ckanPath]).toEqual([200, '1.1.0', `${ROOT}/releases/${A}/src/ckan/ckan`]);
    const events = (await ledgerOf(docker, bed.host)).map((e) => `${e.event} ${e.release ?? ''}`.trim());
    expect(events.slice(3)).toEqual([
      `staged ${B}`,
      `activated ${B}`,
      `healthy ${B}`,
      `activated ${A}`,
      `healthy ${A}`,
      `bad ${B}`,
    ]);
    const status = JSON.parse(await ok(configs[`${bed.env}-B`]!, '--json', 'status', bed.env)) as {
      hosts: { current: string }[];
    };
    expect(status.hosts[0]!.current).toBe(A);
  });
});
