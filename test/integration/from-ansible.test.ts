// init --from-ansible, end to end: the old-style project of test/fixtures/ansible-project is converted,
// the converted config validates, builds, sets up and ships to a sandbox host (sshd + Apache/mod_wsgi
// in a container), and the host serves the release with the config rendered from the old template.
//
// Substitution step (what differs between the invented site of the fixture and this machine; see the
// fixture's README.md), applied to the converted ckan-release.yml and nothing else:
//   - git sources https://github.com/ckan/<name>.git -> the local fixture repositories (ensureFixtures);
//   - builder -> debian12 with the fixture wheelhouse (no PyPI here), as the sandbox host is Debian 12;
//   - staging's host ckan-staging.example.org -> the sandbox host a5-staging (its ssh_config and ports);
//   - deploy.group apache -> www-data, deploy.restart `service httpd graceful` -> `apachectl graceful`
//     (Debian's Apache), the health check on the sandbox host's own port.
// Everything else (extensions, plugins, template, vars, secrets still ansible-vault encrypted, hooks,
// shared, keep_releases) is used as converted.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { freePorts, sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { ensureFixtures, type FixturePaths } from '../support/fixtures.js';
import { currentOf, onHost, served } from '../support/hosts.js';
import { runCli } from '../support/project.js';

const FIXTURE = path.resolve('test/fixtures/ansible-project');
const VAULT_PASSWORD = 'ckan-release-fixture'; // documented in the fixture's README.md
const HOST = 'a5-staging';
const ROOT = '/usr/lib/ckan';

let docker: Docker;
let dir: string;
let file: string;
let fixtures: FixturePaths;
let httpPort = 0;
let initOut = '';

const cli = runCli;

async function ok(...argv: string[]): Promise<string> {
  const r = await cli('--config', file, '--vault-password-file', path.join(dir, 'vault-password'), ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** The documented substitution step, on the converted YAML. */
function substitute(text: string, sshPort: number): string {
  const doc = parseDocument(text);
  const repo = (source: string) => {
    const name = /github\.com\/ckan\/([\w.-]+?)(\.git)?$/.exec(source)?.[1] as keyof FixturePaths['repos'];
    const local = fixtures.repos[name];
    if (!local) throw new Error(`no fixture repository for ${source}`);
    return local.path;
  };
  doc.setIn(['ckan', 'source'], repo(String(doc.getIn(['ckan', 'source']))));
  const n = (doc.get('extensions') as { items: unknown[] }).items.length;
  for (let i = 0; i < n; i++)
    doc.setIn(['extensions', i, 'source'], repo(String(doc.getIn(['extensions', i, 'source']))));
  doc.set(
    'builder',
    doc.createNode({
      os: 'debian12',
      python: 'python3',
      network: 'none',
      pip: { find_links: [fixtures.wheelhouse] },
    }),
  );
  doc.setIn(['environments', 'staging', 'hosts'], doc.createNode([HOST]));
  doc.setIn(['environments', 'staging', 'ssh_config'], '.ckan-release/sandbox/ssh_config');
  doc.setIn(
    ['environments', 'staging', 'host_vars'],
    doc.createNode({ [HOST]: { ssh_port: sshPort, http_port: httpPort } }),
  );
  doc.setIn(['deploy', 'group'], 'www-data');
  doc.setIn(['deploy', 'restart'], 'sudo -n /usr/sbin/apachectl graceful');
  doc.setIn(
    ['deploy', 'healthcheck'],
    doc.createNode({ url: 'http://127.0.0.1:{{ http_port }}/api/3/action/status_show', timeout: 60 }),
  );
  return doc.toString();
}

beforeAll(async () => {
  docker = await testDocker();
  dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-a5-'));
  file = path.join(dir, 'ckan-release.yml');
  fixtures = await ensureFixtures(path.join(dir, '.fixtures'));
  mkdirSync(path.join(dir, 'cache'));
  process.env.CKAN_RELEASE_CACHE = path.join(dir, 'cache');
  writeFileSync(path.join(dir, 'vault-password'), `${VAULT_PASSWORD}\n`);
  const [sshPort, http] = await freePorts(2);
  httpPort = http!;

  const init = await cli('--config', file, 'init', '--from-ansible', FIXTURE);
  if (init.code !== 0) throw new Error(`init --from-ansible exited ${init.code}:\n${init.err}`);
  initOut = init.out;
  loadConfig(file); // the converted config validates as it is
  writeFileSync(file, substitute(readFileSync(file, 'utf8'), sshPort!));
}, 300_000);

afterAll(async () => {
  if (docker && dir)
    await sandboxDown(docker, { dir: path.join(dir, '.ckan-release/sandbox') }, () => undefined);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('an old Ansible project, converted, ships', () => {
  let id = '';

  it('init --from-ansible said what it mapped and what not', () => {
    expect(initOut).toMatch(/^mapped:$/m);
    expect(initOut).toMatch(/^not converted:$/m);
  });

  it('builds the extensions and CKAN the playbooks named', async () => {
    id = (await ok('build')).trim().split('\n').pop()!;
    expect(id).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
    const manifest = JSON.parse(await ok('--json', 'artifacts', 'show', id)) as {
      ckan: { ref: string };
      extensions: { name: string; ref: string; plugins: string[] }[];
    };
    expect(manifest.ckan.ref).toBe('ckan-2.9.11');
    expect(manifest.extensions.map((x) => `${x.name}@${x.ref}`)).toEqual([
      'ckanext-showcase@v1.1.0',
      'ckanext-spatial@v2.1.0',
      'ckanext-scheming@release-3.0.0',
    ]);
  }, 1_200_000);

  it('sets up and ships to the sandbox host, which serves the release', async () => {
    expect(await ok('sandbox', 'up')).toMatch(new RegExp(`^${HOST}: ssh 127\\.0\\.0\\.1:\\d+`, 'm'));
    await ok('setup', 'staging');
    expect(await ok('ship', 'staging', id)).toBe(`${HOST}: none -> ${id}\n`);

    expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${id}`);
    const s = await served(httpPort);
    expect(s.status).toBe(200);
    expect(s.ckanPath).toBe(`${ROOT}/releases/${id}/src/ckan/ckan`);
    expect(s.showcase).toBe('1.1.0');
    expect(s.extensions).toEqual([
      'stats',
      'text_view',
      'showcase',
      'spatial_metadata',
      'spatial_query',
      'scheming_datasets',
    ]);
  }, 900_000);

  it('the config on the host is the old template rendered with the vault secrets', async () => {
    const ini = await onHost(
      docker,
      HOST,
      `cat ${ROOT}/current/ckan.ini; stat -c '%a %U:%G' ${ROOT}/current/ckan.ini; readlink ${ROOT}/current/storage`,
    );
    expect(ini.out).toContain('# CKAN configuration (staging)\n#\n# Ansible managed\n');
    expect(ini.out).toContain('debug = true\n');
    expect(ini.out).toContain(
      'sqlalchemy.url = postgresql://ckan_default:staging-db-pass@localhost/ckan_default\n',
    );
    expect(ini.out).toContain(`ckan.storage_path = ${ROOT}/shared/storage\n`);
    expect(ini.out).toContain(`# release ${ROOT}/releases/${id}\n`);
    expect(ini.out).toContain(`640 ckan:www-data\n${ROOT}/shared/storage\n`);
  });
});
