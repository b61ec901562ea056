// The rehearsal of a migration from the old playbooks, on a project in their published layout
// (test/fixtures/ansible-ckan-deploys): `init --from-ansible --ckan-ref`, `sandbox up`, then, on a
// sandbox host installed the old way (a hand-installed `default` venv with CKAN and the extensions,
// `current` -> it as the old first deploy left it, the config the first deploy wrote into it, the old
// apache.wsgi naming /etc/ckan/default/staging.ini, and the project's vhost), `setup` (which adopts the
// venv), `build`, `ship`, then the next deploy (`build` with showcase pinned to v1.0.0, `ship`) and
// `rollback` to the first release, with a load of 4 clients on the site throughout. (A rollback from the
// first release to the adopted venv is not part of it: test/integration/adopted-rollback.test.ts has it.)
//
// Substitution step (what differs between the invented site and this machine), applied to the converted
// ckan-release.yml as README "Migrating from the old Ansible playbooks" tells a user to check:
//   - extension sources https://github.com/ckan/<name>.git -> the local fixture repositories (CKAN's
//     comes from --ckan-source, as a user would pass their mirror);
//   - builder -> debian12 with the fixture wheelhouse (no PyPI here; the sandbox host is Debian 12);
//   - staging's host -> the sandbox host mg-staging (user deploy with sudo: the wrappers' -u root is not
//     allowed in over SSH there), so the vhost's reload gets `sudo -n`;
//   - Debian's Apache: the vhost's dest /etc/httpd/conf.d/ckan_default.conf -> the sandbox's enabled
//     /etc/apache2/sites-available/ckan.conf; group apache -> www-data (deploy.group, the WSGI script's
//     group, the server_group var); apache_log_dir and
//     apache_port vars; the health check on the host's port;
//   - the vhost template gets graceful-timeout=15 on its WSGIDaemonProcess, as init's "not converted"
//     list tells (apache-graceful loses no request only with it).
// Everything else (extensions at HEAD, plugins, the config template and its per-environment file name,
// include_vars, secrets still encrypted, the WSGI script, the adoption, keep_releases) is used as converted.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { loadSecrets } from '../../src/config/secrets.js';
import { renderServerFile, serverVars } from '../../src/deploy/server.js';
import { sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { ensureFixtures, type FixturePaths } from '../support/fixtures.js';
import { currentOf, onHost, served } from '../support/hosts.js';
import { expectAnswersThroughout, startLoad } from '../support/load.js';
import { runCli } from '../support/project.js';

const FIXTURE = path.resolve('test/fixtures/ansible-ckan-deploys');
const VAULT_PASSWORD = 'ckan-release-fixture';
const HOST = 'mg-staging';
const SSH_PORT = 2350;
const HTTP_PORT = 8350;
const ROOT = '/usr/lib/ckan';

let docker: Docker;
let dir: string;
let file: string;
let fixtures: FixturePaths;
let initOut = '';

const cli = runCli;

async function ok(...argv: string[]): Promise<string> {
  const r = await cli('--config', file, '--vault-password-file', path.join(dir, 'vault-password'), ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** The documented substitution step, on the converted YAML. */
function substitute(text: string): string {
  const doc = parseDocument(text);
  const n = (doc.get('extensions') as { items: unknown[] }).items.length;
  for (let i = 0; i < n; i++) {
    const source = String(doc.getIn(['extensions', i, 'source']));
    const name = /github\.com\/ckan\/([\w.-]+?)\.git$/.exec(source)?.[1] as keyof FixturePaths['repos'];
    doc.setIn(['extensions', i, 'source'], fixtures.repos[name].path);
  }
  doc.set(
    'builder',
    doc.createNode({
      os: 'debian12',
      python: 'python3',
      network: 'none',
      pip: { find_links: [fixtures.wheelhouse] },
    }),
  );
  doc.setIn(['deploy', 'group'], 'www-data');
  doc.setIn(['server', 'files', 0, 'group'], 'www-data');
  doc.setIn(['server', 'files', 1, 'dest'], '/etc/apache2/sites-available/ckan.conf');
  doc.setIn(['server', 'files', 1, 'reload'], 'sudo -n apachectl graceful');
  doc.setIn(
    ['deploy', 'healthcheck'],
    doc.createNode({ url: 'http://127.0.0.1:{{ http_port }}/api/3/action/status_show', timeout: 60 }),
  );
  const staging = ['environments', 'staging'];
  doc.setIn([...staging, 'hosts'], doc.createNode([HOST]));
  doc.setIn([...staging, 'user'], 'deploy');
  doc.setIn([...staging, 'ssh_config'], '.ckan-release/sandbox/ssh_config');
  doc.setIn([...staging, 'vars', 'server_group'], 'www-data');
  doc.setIn([...staging, 'vars', 'apache_log_dir'], '/var/log/apache2');
  doc.setIn([...staging, 'vars', 'apache_port'], HTTP_PORT);
  doc.setIn(
    [...staging, 'host_vars'],
    doc.createNode({ [HOST]: { ssh_port: SSH_PORT, http_port: HTTP_PORT } }),
  );
  return doc.toString();
}

beforeAll(async () => {
  docker = await testDocker();
  dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-mg-'));
  file = path.join(dir, 'ckan-release.yml');
  fixtures = await ensureFixtures(path.join(dir, '.fixtures'));
  mkdirSync(path.join(dir, 'cache'));
  process.env.CKAN_RELEASE_CACHE = path.join(dir, 'cache');
  writeFileSync(path.join(dir, 'vault-password'), `${VAULT_PASSWORD}\n`);

  const init = await cli(
    '--config',
    file,
    'init',
    '--from-ansible',
    FIXTURE,
    '--ckan-ref',
    'ckan-2.9.11',
    '--ckan-source',
    fixtures.repos.ckan.path,
  );
  if (init.code !== 0) throw new Error(`init --from-ansible exited ${init.code}:\n${init.err}`);
  initOut = init.out;
  loadConfig(file); // the converted config validates as it is
  writeFileSync(file, substitute(readFileSync(file, 'utf8')));
  const vhost = path.join(dir, 'templates/ckan_default.conf.j2');
  writeFileSync(
    vhost,
    readFileSync(vhost, 'utf8').replace(/^(\s*WSGIDaemonProcess .*)$/m, '$1 graceful-timeout=15'),
  );
}, 300_000);

afterAll(async () => {
  if (docker && dir)
    await sandboxDown(docker, { dir: path.join(dir, '.ckan-release/sandbox') }, () => undefined);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** What the old first deploy left on the host, as rendered from the project's own templates. */
async function installTheOldWay(): Promise<void> {
  const config = loadConfig(file);
  const env = config.environments.staging!;
  const staged = path.join(dir, 'old-src');
  mkdirSync(path.join(staged, 'wheels'), { recursive: true });
  const archive = (repo: string, ref: string, to: string) =>
    execFileSync('sh', ['-c', `mkdir -p ${to} && git -C ${repo} archive ${ref} | tar -x -C ${to}`]);
  archive(fixtures.repos.ckan.path, 'ckan-2.9.11', path.join(staged, 'ckan'));
  archive(fixtures.repos['ckanext-showcase'].path, 'v1.0.0', path.join(staged, 'ckanext-showcase'));
  archive(fixtures.repos['ckanext-scheming'].path, 'release-3.0.0', path.join(staged, 'ckanext-scheming'));
  execFileSync('sh', ['-c', `cp ${fixtures.wheelhouse}/*.whl ${staged}/wheels/`]);
  // The config: what `ckan-release config` renders equals what the playbooks rendered (the unit test
  // proves it against ansible-core); the first deploy wrote it into the default venv.
  const ini = await ok('config', 'staging', '--host', HOST, '--show-secrets');
  writeFileSync(path.join(staged, 'staging.ini'), ini);
  // The first deploy's WSGI script: its task vars point it at /etc/ckan/default/staging.ini.
  const secrets = loadSecrets(env.secrets!, { vaultPasswordFile: path.join(dir, 'vault-password') });
  const vars = {
    ...serverVars({ config, env, secrets }, HOST, null),
    current_config_file_symlink_path: '/etc/ckan/default/staging.ini',
  };
  const [wsgi, vhost] = config.server.files;
  writeFileSync(path.join(staged, 'apache.wsgi'), renderServerFile(wsgi!, vars));
  writeFileSync(path.join(staged, 'ckan.conf'), renderServerFile(vhost!, vars));
  const container = docker.getContainer(`ckan-release-sandbox-${HOST}`);
  await container.putArchive(execFileSync('tar', ['-c', '-C', dir, 'old-src']), { path: '/tmp' });
  const install = await onHost(
    docker,
    HOST,
    `set -e; cd /tmp/old-src
     python3 -m venv ${ROOT}/default
     ${ROOT}/default/bin/pip install -q --no-index --find-links wheels --no-build-isolation ./ckan -r ckan/requirements.txt ./ckanext-showcase ./ckanext-scheming
     cp staging.ini ${ROOT}/default/staging.ini && chown ckan:www-data ${ROOT}/default/staging.ini
     ln -sfn ${ROOT}/default ${ROOT}/current
     cp staging.ini apache.wsgi /etc/ckan/default/ && rm -f /etc/ckan/default/wsgi.py
     # CKAN <= 2.9 opens who.config_file (%(here)s/who.ini) beside its config, as CKAN's install guide and
     # the playbooks' who.ini link put it.
     cp ckan/ckan/config/who.ini /etc/ckan/default/who.ini && cp ckan/ckan/config/who.ini ${ROOT}/default/who.ini
     cp ckan.conf /etc/apache2/sites-available/ckan.conf
     apachectl graceful`,
  );
  expect(install.code, install.out).toBe(0);
}

describe('a project of the published layout, converted, takes over a site installed the old way', () => {
  let id = '';

  it('init --from-ansible converted it and said what it could not', () => {
    expect(initOut).toMatch(/-> deploy\.restart apache-graceful/);
    expect(initOut).toMatch(/^not converted:$/m);
    expect(initOut).toMatch(/has no graceful-timeout/);
  });

  it('builds CKAN from --ckan-ref and the extensions at their default branch', async () => {
    id = (await ok('build')).trim().split('\n').pop()!;
    expect(id).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
    const manifest = JSON.parse(await ok('--json', 'artifacts', 'show', id)) as {
      ckan: { ref: string; commit: string };
      extensions: { name: string; ref: string; commit: string }[];
    };
    expect(manifest.ckan.commit).toBe(fixtures.repos.ckan.tags['ckan-2.9.11']);
    const head = (repo: string) =>
      execFileSync('git', ['-C', repo, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
    expect(manifest.extensions.map((x) => [x.name, x.ref, x.commit])).toEqual([
      ['ckanext-showcase', 'HEAD', head(fixtures.repos['ckanext-showcase'].path)],
      ['ckanext-scheming', 'HEAD', head(fixtures.repos['ckanext-scheming'].path)],
    ]);
  }, 1_200_000);

  it('setup adopts the default venv, ship and rollback switch, and the site answers throughout', async () => {
    expect(await ok('sandbox', 'up')).toMatch(new RegExp(`^${HOST}: ssh 127\\.0\\.0\\.1:${SSH_PORT}`, 'm'));
    await installTheOldWay();
    let before = await served(HTTP_PORT);
    for (let i = 0; i < 50 && before.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 200));
      before = await served(HTTP_PORT);
    }
    expect(before.status).toBe(200);
    expect(before.ckanPath).toMatch(new RegExp(`^${ROOT}/default/lib/python3\\.\\d+/site-packages/ckan$`));
    expect(before.showcase).toBe('1.0.0');

    const load = startLoad(HTTP_PORT, 4);
    let setupOut = '';
    let shipOut = '';
    let rollbackOut = '';
    let afterShip: Awaited<ReturnType<typeof served>> | undefined;
    let failure: unknown;
    let idB = '';
    let shipBOut = '';
    try {
      await new Promise((r) => setTimeout(r, 2000));
      setupOut = await ok('setup', 'staging');
      await new Promise((r) => setTimeout(r, 2000));
      shipOut = await ok('ship', 'staging', id);
      await new Promise((r) => setTimeout(r, 2000));
      afterShip = await served(HTTP_PORT);
      // The next deploy: showcase pinned back to v1.0.0 (a new artifact), shipped, then rolled back.
      writeFileSync(file, readFileSync(file, 'utf8').replace(/ref: HEAD( #.*)?\n/, 'ref: v1.0.0\n'));
      idB = (await ok('build')).trim().split('\n').pop()!;
      shipBOut = await ok('ship', 'staging', idB);
      await new Promise((r) => setTimeout(r, 2000));
      rollbackOut = await ok('rollback', 'staging');
      await new Promise((r) => setTimeout(r, 2000));
    } catch (e) {
      failure = e;
    }
    const r = await load.stop();
    console.log(
      `migration rehearsal: ${r.requests} requests, ${r.failures} failed, longest time without an answer ${r.longestGapMs} ms, slowest ${r.slowestMs} ms, by release ${JSON.stringify(r.byRelease)}`,
    );
    if (failure) throw failure;
    expectAnswersThroughout(r);
    expect(Object.keys(r.byRelease).sort()).toEqual(
      [
        `${ROOT}/releases/${id}`,
        `${ROOT}/releases/${idB}`,
        path.posix.dirname(before.ckanPath!.replace(/\/ckan$/, '/ckan/x')),
      ].sort(),
    );
    expect(setupOut).toMatch(/adopted \/usr\/lib\/ckan\/default as release (\d{14}Z-00000000)/);
    const adopted = /adopted \/usr\/lib\/ckan\/default as release (\d{14}Z-00000000)/.exec(setupOut)![1]!;
    expect(setupOut).toMatch(/server files: installed \/etc\/ckan\/default\/apache\.wsgi/);
    expect(shipOut).toMatch(new RegExp(`${HOST}: ${adopted} -> ${id}`));
    expect(afterShip!.ckanPath).toBe(`${ROOT}/releases/${id}/src/ckan/ckan`);
    expect(afterShip!.extensions).toEqual(['stats', 'text_view', 'showcase', 'scheming_datasets']);
    expect(shipBOut).toMatch(new RegExp(`${HOST}: ${id} -> ${idB}`));
    expect(rollbackOut).toMatch(new RegExp(`${HOST}: ${idB} -> ${id}`));
    expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${id}`);
    const after = await served(HTTP_PORT);
    expect(after.ckanPath).toBe(`${ROOT}/releases/${id}/src/ckan/ckan`);
    expect(after.showcase).toBe(afterShip!.showcase);
  }, 1_200_000);

  it('the release had the config as the playbooks wrote it, by its old name, and the WSGI script names it', async () => {
    const r = await onHost(
      docker,
      HOST,
      `cat ${ROOT}/releases/${id}/staging.ini; stat -c '%a %U:%G' ${ROOT}/releases/${id}/staging.ini; grep config_filepath /etc/ckan/default/apache.wsgi | head -1`,
    );
    expect(r.out).toContain('# CKAN configuration of staging.data.example.org (staging)\n');
    expect(r.out).toContain(
      'sqlalchemy.url = postgresql://ckan_default:st4ging-db-pass@localhost/ckan_default\n',
    );
    expect(r.out).toContain('ckan.plugins = stats text_view showcase scheming_datasets\n');
    expect(r.out).toContain(`640 ckan:www-data\nconfig_filepath = '${ROOT}/current/staging.ini'\n`);
  });
});
