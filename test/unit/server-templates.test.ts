// The web server templates shipped with ckan-release (assets/server/*.j2, `builtin:NAME`): each renders
// with the variables a deploy gives, points at <root>/current and never at a release, and the Python ones
// compile. (They are served for real by test/integration/server.test.ts.)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BUILTIN_TEMPLATES_DIR, builtinTemplates } from '../../src/config/load.js';
import { serverFactVars, type ServerFacts } from '../../src/deploy/server-facts.js';
import { renderFile } from '../../src/render/template.js';
import { CENTOS7_FACTS } from '../support/server-facts.js';

const VARS = {
  site_url: 'https://data.example.org',
  project: 'portal',
  release: '/usr/lib/ckan/releases/20261122000000Z-0123abcd',
  release_id: '20261122000000Z-0123abcd',
  root: '/usr/lib/ckan',
  current: '/usr/lib/ckan/current',
  config_file: '/usr/lib/ckan/releases/20261122000000Z-0123abcd/ckan.ini',
  current_config_file: '/usr/lib/ckan/current/ckan.ini',
  deploy_owner: 'ckan',
  deploy_group: 'apache',
  wsgi_process_group: 'ckan',
  uwsgi_pidfile: '/tmp/ckan-uwsgi.pid',
  environment: 'production',
  host: 'web1.example.org',
  extensions: [],
  plugins: [],
};

function render(name: string, extra: Record<string, unknown> = {}): string {
  return renderFile(path.join(BUILTIN_TEMPLATES_DIR, `${name}.j2`), { ...VARS, ...extra }, `builtin:${name}`);
}

describe('built-in server templates', () => {
  it('are the six documented ones', () => {
    expect(builtinTemplates()).toEqual([
      'apache-vhost.conf',
      'apache.wsgi',
      'nginx-ckan.conf',
      'supervisor-ckan-uwsgi.conf',
      'uwsgi.ini',
      'wsgi.py',
    ]);
  });

  it.each(builtinTemplates())(
    '%s renders, names current (if any path of ours) and never a release',
    (name) => {
      const text = render(name);
      if (name !== 'nginx-ckan.conf') expect(text).toContain('/usr/lib/ckan/current');
      expect(text).not.toContain('releases/');
      expect(text).not.toMatch(/\{\{|\{%/);
    },
  );

  it.each(['wsgi.py', 'apache.wsgi'])('%s compiles, with and without legacy_config', (name) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-tpl-'));
    for (const [i, extra] of [{}, { legacy_config: '/etc/ckan/default/production.ini' }].entries()) {
      const file = path.join(dir, `t${i}.py`);
      const text = render(name, extra);
      writeFileSync(file, text);
      execFileSync('python3', ['-m', 'py_compile', file]);
      expect(text.includes('/etc/ckan/default/production.ini')).toBe(i === 1);
    }
  });

  it('the vhost: daemon mode with the group, display-name and graceful-timeout the recipe relies on', () => {
    const text = render('apache-vhost.conf', { http_listen: '127.0.0.1:8080' });
    expect(text).toContain('<VirtualHost 127.0.0.1:8080>');
    expect(text).toMatch(
      /WSGIDaemonProcess ckan python-home=\/usr\/lib\/ckan\/current processes=2 threads=15 user=ckan group=apache display-name=%\{GROUP\} graceful-timeout=15\n/,
    );
    expect(text).toContain('<IfFile /usr/lib/ckan/current/bin/python>');
    // httpd 2.4.6 (CentOS 7) has no <IfFile>.
    const c7 = render('apache-vhost.conf', { apache_has_iffile: false });
    expect(c7).not.toContain('IfFile');
    expect(c7.match(/WSGIDaemonProcess/g)).toHaveLength(1);
  });

  // The facts the agent reads (`server-facts`), as a CentOS 7 host (httpd 2.4.6, base mod_wsgi 3.4 for
  // Python 2.7: `rpm -qf` names the package) and a Debian 12 host (read for real from the sandbox host
  // image by test/integration/server-facts.test.ts) report them.
  const CENTOS7 = CENTOS7_FACTS;
  const DEBIAN12: ServerFacts = {
    apache: {
      command: 'apachectl',
      version: '2.4.62',
      config: '/etc/apache2/apache2.conf',
      log_dir: '${APACHE_LOG_DIR}',
      mod_wsgi: {
        module: '/usr/lib/apache2/modules/mod_wsgi.so',
        version: '4.9.4',
        source: 'package libapache2-mod-wsgi-py3 4.9.4',
        python: '3.11',
      },
    },
    apache_tried: ['apachectl'],
    paths: {},
  };
  /** The rendering without its comment lines: the directives Apache reads. */
  const withFacts = (facts: ServerFacts, extra: Record<string, unknown> = {}) =>
    render('apache-vhost.conf', serverFactVars(facts, { ...VARS, ...extra }))
      .split('\n')
      .filter((l) => !l.trim().startsWith('#'))
      .join('\n');

  it('the vhost for CentOS 7 (httpd 2.4.6, mod_wsgi 3.4): none of the directives they lack', () => {
    const text = withFacts(CENTOS7);
    expect(text).not.toContain('IfFile'); // httpd >= 2.4.34
    expect(text).not.toContain('graceful-timeout'); // mod_wsgi >= 4.1
    expect(text).not.toContain('APACHE_LOG_DIR'); // Debian/Ubuntu's envvars only
    expect(text).toContain('ErrorLog logs/ckan_error.log');
    expect(text.match(/^ *WSGIDaemonProcess .*$/gm)).toEqual([
      '    WSGIDaemonProcess ckan python-home=/usr/lib/ckan/current processes=2 threads=15 user=ckan group=apache display-name=%{GROUP}',
    ]);
    // A host variable wins over the fact (an operator who knows better).
    expect(withFacts(CENTOS7, { apache_log_dir: '/var/log/httpd' })).toContain(
      'ErrorLog /var/log/httpd/ckan_error.log',
    );
  });

  it('the vhost for Debian 12 (httpd 2.4.62, mod_wsgi 4.9.4): <IfFile>, graceful-timeout, ${APACHE_LOG_DIR}', () => {
    const text = withFacts(DEBIAN12);
    expect(text).toContain('<IfFile /usr/lib/ckan/current/bin/python>');
    expect(text).toContain('graceful-timeout=15');
    expect(text).toContain('ErrorLog ${APACHE_LOG_DIR}/ckan_error.log');
  });

  it('httpd 2.4.34 is the first with <IfFile>; mod_wsgi 4.1 the first with graceful-timeout', () => {
    const at = (apache: string, wsgi: string) =>
      withFacts({
        ...DEBIAN12,
        apache: {
          ...DEBIAN12.apache!,
          version: apache,
          mod_wsgi: { ...DEBIAN12.apache!.mod_wsgi!, version: wsgi },
        },
      });
    expect(at('2.4.33', '4.0')).not.toMatch(/IfFile|graceful-timeout/);
    expect(at('2.4.34', '4.1')).toMatch(/<IfFile [^]*graceful-timeout=15/);
    expect(at('2.4.41', '4.6.8')).toMatch(/<IfFile [^]*graceful-timeout=15/);
  });

  it("ServerName: server_name, else site_url's host, else the host name (nginx's server_name too)", () => {
    expect(render('apache-vhost.conf')).toContain('ServerName web1.example.org');
    const site = serverFactVars(DEBIAN12, { ...VARS, site_url: 'https://data.example.org:8443/' });
    expect(render('apache-vhost.conf', site)).toContain('ServerName data.example.org\n');
    expect(render('nginx-ckan.conf', site)).toContain('server_name data.example.org;');
    expect(render('apache-vhost.conf', { ...site, server_name: 'ckan.example.org' })).toContain(
      'ServerName ckan.example.org\n',
    );
  });

  it('uwsgi.ini: virtualenv is current, the pidfile is the recipe pidfile, lazy-apps', () => {
    const text = render('uwsgi.ini', { uwsgi_plugin: 'python3' });
    expect(text).toMatch(/^virtualenv\s+=\s+\/usr\/lib\/ckan\/current$/m);
    expect(text).toMatch(/^pidfile\s+=\s+\/tmp\/ckan-uwsgi\.pid$/m);
    expect(text).toMatch(/^plugins\s+=\s+python3$/m);
    // Several workers: each loads CKAN after the fork (no database connection shared across fork).
    expect(text).toMatch(/^processes\s+=\s+2$/m);
    expect(text).toMatch(/^lazy-apps\s+=\s+true$/m);
  });

  it('nginx: the uwsgi socket twice in an upstream, never marked down, and a retry on error', () => {
    const text = render('nginx-ckan.conf', { uwsgi_socket: '/run/ckan.sock' });
    expect(text.match(/^\s*server unix:\/run\/ckan\.sock max_fails=0;$/gm)).toHaveLength(2);
    expect(text).toMatch(/upstream ckan_uwsgi_portal \{/);
    expect(text).toMatch(/uwsgi_pass ckan_uwsgi_portal;/);
    expect(text).toMatch(/uwsgi_next_upstream error;/);
  });
});
