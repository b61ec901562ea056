// The web server facts on a real sandbox host (Debian 12's Apache 2.4 + mod_wsgi 4.9): what the agent
// reads is what the host's own tools say; the vhost rendered for CentOS 7's facts (httpd 2.4.6,
// mod_wsgi 3.4) passes a real `apachectl -t`; a host whose Apache loads no mod_wsgi (a real state:
// `a2dismod wsgi`) is refused by apache-graceful, in the dry run and with exit 2 before anything changes;
// and a distribution's default site on CKAN's port can neither fail nor pass the health check for CKAN.
// On a host of the uwsgi flavour: nginx (builtin:nginx-ckan.conf) retries a GET whose uWSGI worker
// died without answering, on the same socket, and does not retry a POST.
// Not run here: a real CentOS 7 host (no CentOS image can be made on this machine).
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILTIN_TEMPLATES_DIR } from '../../src/config/load.js';
import { serverFactVars, type ServerFacts } from '../../src/deploy/server-facts.js';
import { renderFile } from '../../src/render/template.js';
import { sandboxDown, sandboxUp, type SandboxHostSpec } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';
import { CENTOS7_FACTS } from '../support/server-facts.js';

const ROOT = '/usr/lib/ckan';
// This file's own ports and host name (README "Development": sv- hosts, 2330-2339 / 8330-8339).
const HOST: SandboxHostSpec = { name: 'sv-web', sshPort: 2330, httpPort: 8330, server: 'apache' };
const UWSGI: SandboxHostSpec = { name: 'sv-uwsgi', sshPort: 2331, httpPort: 8331, server: 'uwsgi' };
const VHOST = '/etc/apache2/sites-available/ckan.conf';

let docker: Docker;
let project: TestProject;
let config: string;
let A: string;

function configText(text: string, wsgiTemplate = 'builtin:wsgi.py'): string {
  const head = text.slice(0, text.indexOf('environments:'));
  return (
    head.replace('restart: sudo -n /usr/sbin/apachectl graceful', 'restart: apache-graceful') +
    `
server:
  files:
    - { template: ${wsgiTemplate}, dest: /etc/ckan/default/wsgi.py }
    - { template: builtin:apache-vhost.conf, dest: ${VHOST}, reload: sudo -n apachectl graceful }
environments:
  site:
    hosts: [${HOST.name}]
    user: deploy
    ssh_config: .ckan-release/sandbox/ssh_config
    host_vars:
      ${HOST.name}: { ssh_port: ${HOST.sshPort}, http_port: ${HOST.httpPort}, http_listen: '127.0.0.1:${HOST.httpPort}' }
    vars: { site_url: 'http://site.test', site_title: 'Site' }
    secrets: secrets/staging.yml
`
  );
}

async function cli(cfg: string, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return project.cli('--config', cfg, ...argv);
}

async function ok(...argv: string[]): Promise<string> {
  const r = await cli(config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}\n${r.out}`);
  return r.out + r.err;
}

async function sh(script: string, host = HOST.name): Promise<string> {
  const r = await onHost(docker, host, script);
  if (r.code !== 0) throw new Error(`on ${host}: ${script}\nexited ${r.code}: ${r.out}`);
  return r.out;
}

/** status_show as Apache answers it for a Host header (curl on the host: fetch cannot set Host). */
async function statusShow(host: string): Promise<string> {
  return sh(`curl -s -H 'Host: ${host}' http://127.0.0.1:${HOST.httpPort}/api/3/action/status_show`);
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  config = project.variant('site', (t) => configText(t));
  const a = await cli(config, 'build');
  if (a.code !== 0) throw new Error(`build exited ${a.code}:\n${a.err}`);
  A = a.out.trim().split('\n').pop()!;
  await sandboxUp(
    docker,
    { dir: path.join(project.dir, '.ckan-release/sandbox'), hosts: [HOST, UWSGI] },
    () => undefined,
  );
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('a host whose Apache loads no mod_wsgi', () => {
  it('apache-graceful is refused: in the dry run, and with exit 2 before anything changes', async () => {
    await sh('a2dismod -f -q wsgi');
    try {
      const why =
        'restart apache-graceful needs mod_wsgi >= 4.1 (graceful daemon restart by SIGUSR1): Apache on this host loads no mod_wsgi (no LoadModule wsgi_module in /etc/apache2/apache2.conf or the files it includes)';
      const before = await sh(`sha256sum ${VHOST} /etc/ckan/default/wsgi.py; ls -A ${ROOT}`);
      const plan = await cli(config, 'setup', 'site', '--dry-run');
      expect(plan.code, plan.err).toBe(0);
      expect(plan.out).toContain(`    WOULD FAIL: ${why}`);
      const setup = await cli(config, 'setup', 'site');
      expect(setup.code, setup.out).toBe(2);
      expect(setup.err).toContain(
        `setup refused before any host changed: the web server setup cannot work there:\n  ${HOST.name}: ${why}`,
      );
      const ship = await cli(config, 'ship', 'site', A, '--dry-run');
      expect(ship.out).toContain(`    WOULD FAIL: ${why}`);
      const real = await cli(config, 'ship', 'site', A);
      expect(real.code, real.out).toBe(2);
      expect(real.err).toContain(`ship refused before any host changed`);
      expect(real.err).not.toMatch(/unexpected error/);
      // Nothing changed: no layout, no agent, the server files as they were.
      expect(await sh(`sha256sum ${VHOST} /etc/ckan/default/wsgi.py; ls -A ${ROOT}`)).toBe(before);
    } finally {
      await sh('a2enmod -q wsgi');
    }
  }, 300_000);
});

describe('the facts, read from the real Apache', () => {
  it('setup installs the vhost rendered from them; the agent reads what apache2 -v and dpkg say', async () => {
    await ok('setup', 'site');
    const agent = `${ROOT}/.ckan-release/agent`;
    const facts = JSON.parse(
      (await sh(`python3 $(ls ${agent}/*.py | head -n 1) server-facts '{"command": "apachectl"}'`)).trim(),
    ) as ServerFacts;
    const version = (await sh('apache2 -v')).match(/Apache\/(\d+\.\d+\.\d+)/)![1];
    const pkg = (await sh("dpkg-query -W -f '${Version}' libapache2-mod-wsgi-py3")).replace(/-[^-]*$/, '');
    expect(facts.apache).toMatchObject({
      version,
      config: '/etc/apache2/apache2.conf',
      log_dir: '${APACHE_LOG_DIR}',
      mod_wsgi: { module: '/usr/lib/apache2/modules/mod_wsgi.so', version: pkg, python: '3.11' },
    });
    const vhost = await sh(`cat ${VHOST}`);
    expect(vhost).toContain('<IfFile /usr/lib/ckan/current/bin/python>');
    expect(vhost).toContain('graceful-timeout=15');
    expect(vhost).toContain('ServerName site.test');
    expect(vhost).toContain('ErrorLog ${APACHE_LOG_DIR}/ckan_error.log');
  }, 300_000);

  it("the vhost rendered for CentOS 7's facts (httpd 2.4.6, mod_wsgi 3.4) passes this Apache's apachectl -t", async () => {
    // What the agent reports on CentOS 7 (httpd -V, rpm -qf of /etc/httpd/modules/mod_wsgi.so), with a
    // log directory and users that exist here. It proves the syntax on httpd 2.4.68 + mod_wsgi 4.9 only:
    // no CentOS 7 host exists on this machine.
    const c7: ServerFacts = {
      ...CENTOS7_FACTS,
      apache: { ...CENTOS7_FACTS.apache!, log_dir: '/var/log/apache2' },
    };
    const text = renderFile(
      path.join(BUILTIN_TEMPLATES_DIR, 'apache-vhost.conf.j2'),
      serverFactVars(c7, {
        current: `${ROOT}/current`,
        host: HOST.name,
        http_listen: '127.0.0.1:8339',
        wsgi_process_group: 'centos7',
        deploy_owner: 'ckan',
        deploy_group: 'www-data',
        site_url: 'http://c7.test',
      }),
      'builtin:apache-vhost.conf',
    );
    const directives = text
      .split('\n')
      .filter((l) => !l.trim().startsWith('#'))
      .join('\n');
    expect(directives).not.toMatch(/<IfFile|graceful-timeout|\$\{APACHE_LOG_DIR\}/);
    expect(directives).toMatch(
      /^ *WSGIDaemonProcess centos7 python-home=\/usr\/lib\/ckan\/current .*display-name=%\{GROUP\}$/m,
    );
    const file = '/etc/apache2/sites-enabled/zz-centos7.conf';
    await sh(`cat > ${file} <<'EOF'\n${text}\nEOF`);
    try {
      expect(await sh('apache2ctl -t 2>&1')).toMatch(/Syntax OK/);
    } finally {
      await sh(`rm -f ${file}`);
    }
  });
});

describe("a distribution's default site on CKAN's port", () => {
  // First among the vhosts of 127.0.0.1:PORT, so it answers every request whose Host names no other
  // (as Debian's 000-default and CentOS's welcome page do).
  const defaultSite = (body: string) =>
    `mkdir -p /var/www/default-site && cat > /var/www/default-site/status_show <<'EOF'\n${body}\nEOF
cat > /etc/apache2/sites-enabled/000-default.conf <<'EOF'
<VirtualHost 127.0.0.1:${HOST.httpPort}>
    ServerName default.invalid
    DocumentRoot /var/www/default-site
    Alias /api/3/action/status_show /var/www/default-site/status_show
    <Directory /var/www/default-site>
        Require all granted
    </Directory>
</VirtualHost>
EOF
apache2ctl graceful`;

  it('answering 200 with its own page: the health check still reaches CKAN (the ship is healthy)', async () => {
    await sh(defaultSite('<html><body>It works!</body></html>'));
    expect(await statusShow('127.0.0.1')).toContain('It works!');
    const out = await ok('ship', 'site', A);
    expect(out).toMatch(/healthy: CKAN/);
    expect(await ok('ship', 'site', A, '--dry-run')).toContain(
      `health check: http://127.0.0.1:{{ http_port }}/api/3/action/status_show (Host: site.test)`,
    );
    expect(JSON.parse(await statusShow('site.test')).result.fixture.ckan_path).toBe(
      `${ROOT}/releases/${A}/src/ckan/ckan`,
    );
    expect(await statusShow('127.0.0.1')).toContain('It works!');
  }, 300_000);

  it('answering 200 with a status_show of its own while CKAN fails: not taken as healthy', async () => {
    // A CKAN look-alike (an old site left as the default, say): success, and every plugin the release has.
    const plugins = (
      JSON.parse(
        readFileSync(path.join(project.dir, '.ckan-release/artifacts', A, 'manifest.json'), 'utf8'),
      ) as {
        extensions: { plugins: string[] }[];
      }
    ).extensions.flatMap((x) => x.plugins);
    await sh(
      defaultSite(
        JSON.stringify({
          success: true,
          result: { ckan_version: '2.9.0', site_url: 'http://old.test', extensions: plugins },
        }),
      ),
    );
    // The CKAN vhost answers 500: its WSGI script raises.
    const broken = path.join(project.dir, 'broken-wsgi.py.j2');
    writeFileSync(broken, "raise RuntimeError('this CKAN is broken')\n");
    const cfg = project.variant('broken', (t) =>
      configText(t, 'broken-wsgi.py.j2').replace('timeout: 30', 'timeout: 5'),
    );
    const r = await cli(cfg, 'ship', 'site', A);
    expect(r.code, r.err).toBe(1);
    expect(r.err).toMatch(/\(Host: site\.test\) did not become healthy within 5s: HTTP 500/);
    expect(r.err).toMatch(/was switched back and restarted/);
    // Put back: the working wsgi.py, CKAN serving A again.
    expect(await currentOf(docker, HOST.name)).toBe(`${ROOT}/releases/${A}`);
    expect(JSON.parse(await statusShow('site.test')).result.fixture.ckan_path).toBe(
      `${ROOT}/releases/${A}/src/ckan/ckan`,
    );
  }, 300_000);
});

describe('nginx in front of uWSGI (builtin:nginx-ckan.conf, builtin:uwsgi.ini)', () => {
  it('a GET whose worker dies without answering is retried on the same socket; a POST is not', async () => {
    const app = '/srv/sv';
    const render = (name: string) =>
      renderFile(
        path.join(BUILTIN_TEMPLATES_DIR, `${name}.j2`),
        {
          current: app,
          project: 'sv',
          host: UWSGI.name,
          deploy_owner: 'ckan',
          deploy_group: 'www-data',
          uwsgi_pidfile: '/tmp/sv-uwsgi.pid',
          uwsgi_plugin: 'python3',
          uwsgi_binary: '/usr/bin/uwsgi',
          uwsgi_socket: '/tmp/sv-uwsgi.sock',
          wsgi_script: `${app}/wsgi.py`,
          http_listen: `127.0.0.1:${UWSGI.httpPort}`,
        },
        `builtin:${name}`,
      );
    // The worker that takes a request while /tmp/sv-die exists dies without answering (once): as a
    // worker leaving at a reload's edge with a connection accepted (nginx: "upstream prematurely closed").
    const wsgi = `import os
def application(environ, start_response):
    try:
        os.unlink('/tmp/sv-die')
        os._exit(1)
    except OSError:
        pass
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'pid %d' % os.getpid()]
`;
    await sh(
      `set -e; python3 -m venv ${app}
cat > ${app}/wsgi.py <<'EOF'\n${wsgi}EOF
cat > ${app}/uwsgi.ini <<'EOF'\n${render('uwsgi.ini')}\nEOF
cat > /etc/nginx/sites-enabled/sv.conf <<'EOF'\n${render('nginx-ckan.conf')}\nEOF
chown -R ckan ${app}
su -s /bin/sh ckan -c 'uwsgi --ini ${app}/uwsgi.ini --daemonize /tmp/sv-uwsgi.log'
nginx -t 2>&1 && nginx -s reload`,
      UWSGI.name,
    );
    const request = (method: string) =>
      sh(
        `for i in $(seq 1 50); do test -S /tmp/sv-uwsgi.sock && break; sleep 0.2; done
su -s /bin/sh ckan -c 'touch /tmp/sv-die'
curl -s -o /dev/null -w '%{http_code}' -X ${method} http://127.0.0.1:${UWSGI.httpPort}/
test ! -e /tmp/sv-die`,
        UWSGI.name,
      );
    // Until nginx has the new site and uWSGI its workers, a plain GET may not answer yet.
    for (let i = 0; i < 50; i++) {
      if ((await onHost(docker, UWSGI.name, `curl -sf http://127.0.0.1:${UWSGI.httpPort}/`)).code === 0)
        break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(await request('GET')).toBe('200');
    expect(await request('POST')).toBe('502');
    // Both times a worker really died before answering.
    const log = await sh(
      'grep -c "upstream prematurely closed connection" /var/log/nginx/error.log',
      UWSGI.name,
    );
    expect(log.trim()).toBe('2');
  }, 120_000);
});
