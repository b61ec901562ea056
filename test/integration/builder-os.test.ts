// The fixture project built on the debian11 (Python 3.9) and debian13 (Python 3.13) builders and each
// shipped to a sandbox host of the same Debian release (environments' sandbox_os): the hosts' real state
// (readlink current, what Apache + mod_wsgi serve, /etc/os-release, the release's interpreter) and the
// manifests' builder OS and Python. Ports 2310-2311 / 8310-8311, hosts bd-d11 and bd-d13.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readArtifact } from '../../src/artifact/store.js';
import { sandboxDown } from '../../src/sandbox/sandbox.js';
import { builderImage, testDocker } from '../support/docker.js';
import { currentOf, onHost, served } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const OSES = {
  debian11: { host: 'bd-d11', ssh: 2310, http: 8310, versionId: '11', python: /^3\.9\.\d+$/ },
  debian13: { host: 'bd-d13', ssh: 2311, http: 8311, versionId: '13', python: /^3\.13\.\d+$/ },
} as const;
type Os = keyof typeof OSES;

let docker: Docker;
let project: TestProject;
const config: Partial<Record<Os, string>> = {};
const built: Partial<Record<Os, string>> = {};

async function cli(cfg: string, ...argv: string[]) {
  return project.cli('--config', cfg, ...argv);
}

async function ok(cfg: string, ...argv: string[]): Promise<string> {
  const r = await cli(cfg, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** The demo project with one environment per OS, each on its own sandbox host of that OS. */
function variant(os: Os): string {
  const envs = Object.entries(OSES)
    .map(
      ([name, o]) => `  ${name}:
    hosts: [${o.host}]
    user: deploy
    ssh_config: .ckan-release/sandbox/ssh_config
    sandbox_os: ${name}
    host_vars:
      ${o.host}: { ssh_port: ${o.ssh}, http_port: ${o.http} }
    vars:
      site_url: http://${name}.demo.test
      site_title: Demo portal (${name})
    secrets: secrets/staging.yml
`,
    )
    .join('');
  return project.variant(`on-${os}`, (t) => {
    const out = t
      .replace('  os: debian12\n', `  os: ${os}\n`)
      .replace(/\nenvironments:\n[\s\S]*$/, `\nenvironments:\n${envs}`);
    expect(out).toContain(`  os: ${os}\n`);
    return out;
  });
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  // Base images (debootstrapped where no registry answers) and both builders, before any build.
  for (const os of Object.keys(OSES) as Os[]) {
    await builderImage(os);
    config[os] = variant(os);
  }
  // One `sandbox up` makes both hosts, each of its environment's sandbox_os.
  const up = await ok(config.debian11!, 'sandbox', 'up');
  for (const o of Object.values(OSES)) expect(up).toContain(`${o.host}: ssh 127.0.0.1:${o.ssh}`);
}, 1_200_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe.each(Object.keys(OSES) as Os[])('the fixture project on %s', (os) => {
  const o = OSES[os];

  it('builds, and the manifest names the builder OS and its Python', async () => {
    const id = (await ok(config[os]!, 'build')).trim();
    built[os] = id;
    const m = readArtifact(path.join(project.dir, '.ckan-release/artifacts'), id).manifest;
    expect(m.builder.os).toBe(os);
    expect(m.builder.python.path).toBe('/usr/bin/python3');
    expect(m.builder.python.version).toMatch(o.python);
  }, 900_000);

  it('ships to a sandbox host of the same OS, which serves it', async () => {
    const id = built[os]!;
    expect(id).toBeDefined();
    const release = (
      await onHost(
        docker,
        o.host,
        '. /etc/os-release; echo "$ID $VERSION_ID"; python3 -c "import platform; print(platform.python_version())"',
      )
    ).out
      .trim()
      .split('\n');
    expect(release[0]).toBe(`debian ${o.versionId}`);
    const m = readArtifact(path.join(project.dir, '.ckan-release/artifacts'), id).manifest;
    expect(release[1]).toBe(m.builder.python.version);

    await ok(config[os]!, 'setup', os);
    const out = await ok(config[os]!, 'ship', os, id);
    expect(out).toContain(id);
    expect(await currentOf(docker, o.host)).toBe(`${ROOT}/releases/${id}`);
    const s = await served(o.http);
    expect(s.status).toBe(200);
    expect(s.ckanPath).toBe(`${ROOT}/releases/${id}/src/ckan/ckan`);
    expect(s.extensions).toEqual(['showcase', 'spatial_metadata', 'spatial_query', 'scheming_datasets']);
    // The release's interpreter is the host's own python3 of that Debian release.
    const py = await onHost(
      docker,
      o.host,
      `${ROOT}/current/bin/python -c "import sys, platform; print(sys.base_prefix); print(platform.python_version())"`,
    );
    expect(py.out.trim().split('\n')).toEqual(['/usr', m.builder.python.version]);
    const status = (await (await fetch(`http://127.0.0.1:${o.http}/api/3/action/status_show`)).json()) as {
      result: { ckan_version: string; site_url: string; fixture: { prefix: string } };
    };
    expect(status.result.ckan_version).toBe('2.9.11');
    expect(status.result.site_url).toBe(`http://${os}.demo.test`);
    // mod_wsgi's python-home is <root>/current: the prefix is the link, resolved above by readlink.
    expect(status.result.fixture.prefix).toBe(`${ROOT}/current`);
  }, 900_000);
});

describe('sandbox_os', () => {
  it('is refused, naming the key, when it is not a sandbox OS', async () => {
    const bad = project.variant('bad-os', () =>
      readFileSync(config.debian13!, 'utf8').replace('sandbox_os: debian13', 'sandbox_os: centos7'),
    );
    const r = await cli(bad, 'sandbox', 'up');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/environments\.debian13\.sandbox_os/);
    expect(r.err).toMatch(/debian11, debian12, debian13/);
  });
});
