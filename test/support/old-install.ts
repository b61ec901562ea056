// A sandbox host installed the way the old playbooks left a site: a hand-installed venv at
// <root>/default with the fixture CKAN in it, its config in /etc/ckan/default/production.ini, and an
// apache.wsgi + vhost pointing at the venv. For the tests of setup's adoption and of what follows it.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { expect } from 'vitest';
import type { FixturePaths } from './fixtures.js';
import { onHost, served, type Served } from './hosts.js';

const ROOT = '/usr/lib/ckan';

/** server.files for a sandbox Apache host: the builtin WSGI script and vhost (after `server:`). */
export const APACHE_SERVER_FILES = `
  files:
    - { template: builtin:wsgi.py, dest: /etc/ckan/default/wsgi.py }
    - template: builtin:apache-vhost.conf
      dest: /etc/apache2/sites-available/ckan.conf
      reload: sudo -n apachectl graceful
`;

/** The site's own config, which the old apache.wsgi names (and `legacy_config` should). */
export const OLD_CONFIG = '/etc/ckan/default/production.ini';

const oldVhost = (port: number) => `WSGIRestrictEmbedded On
<VirtualHost 127.0.0.1:${port}>
    ServerName 127.0.0.1
    WSGIDaemonProcess ckan python-home=${ROOT}/default processes=2 threads=4 user=ckan group=www-data display-name=%{GROUP}
    WSGIProcessGroup ckan
    WSGIApplicationGroup %{GLOBAL}
    WSGIScriptAlias / /etc/ckan/default/apache.wsgi
    <Directory /etc/ckan/default>
        Require all granted
    </Directory>
</VirtualHost>
`;

const oldWsgi = `import os
from ckan.cli import CKANConfigLoader
from ckan.config.middleware import make_app
config_filepath = '${OLD_CONFIG}'
application = make_app(CKANConfigLoader(config_filepath).get_config())
`;

/**
 * Installs CKAN 2.9.11 (the fixture) the old way on sandbox host `host` (an Apache one, answering on
 * `port`), from files staged under `dir`, and returns what the site serves once it answers.
 */
export async function installTheOldWay(
  docker: Docker,
  host: string,
  project: { dir: string; fixtures: FixturePaths },
  port: number,
): Promise<Served> {
  const src = path.join(project.dir, 'old-src');
  execFileSync('sh', [
    '-c',
    `mkdir -p ${src}/ckan ${src}/wheels && git -C ${project.fixtures.repos.ckan.path} archive ckan-2.9.11 | tar -x -C ${src}/ckan && cp ${project.fixtures.wheelhouse}/*.whl ${src}/wheels/`,
  ]);
  writeFileSync(path.join(src, 'production.ini'), readFileSync('test/fixtures/python/ckan/test-core.ini'));
  writeFileSync(path.join(src, 'apache.wsgi'), oldWsgi);
  writeFileSync(path.join(src, 'ckan.conf'), oldVhost(port));
  const container = docker.getContainer(`ckan-release-sandbox-${host}`);
  const tar = execFileSync('tar', ['-c', '-C', project.dir, 'old-src']);
  await container.putArchive(tar, { path: '/tmp' });
  const install = await onHost(
    docker,
    host,
    `set -e; cd /tmp/old-src
     python3 -m venv ${ROOT}/default
     ${ROOT}/default/bin/pip install -q --no-index --find-links wheels --no-build-isolation ./ckan -r ckan/requirements.txt
     cp production.ini apache.wsgi /etc/ckan/default/ && rm -f /etc/ckan/default/wsgi.py
     cp ckan.conf /etc/apache2/sites-available/ckan.conf
     apachectl graceful`,
  );
  expect(install.code, install.out).toBe(0);
  let before = await served(port);
  for (let i = 0; i < 50 && before.status !== 200; i++) {
    await new Promise((r) => setTimeout(r, 200));
    before = await served(port);
  }
  expect(before.ckanPath).toMatch(new RegExp(`^${ROOT}/default/lib/python3\\.\\d+/site-packages/ckan$`));
  return before;
}
