// The web server templates shipped with ckan-release (assets/server/*.j2, `builtin:NAME`): each renders
// with the variables a deploy gives, points at <root>/current and never at a release, and the Python ones
// compile. (They are served for real by test/integration/server.test.ts.)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BUILTIN_TEMPLATES_DIR, builtinTemplates } from '../../src/config/load.js';
import { renderFile } from '../../src/render/template.js';

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
      /WSGIDaemonProcess ckan python-home=\/usr\/lib\/ckan\/current processes=2 threads=15 user=ckan group=apache display-name=%\{GROUP\} graceful-timeout=15/,
    );
    expect(text).toContain('<IfFile /usr/lib/ckan/current/bin/python>');
    // httpd 2.4.6 (CentOS 7) has no <IfFile>.
    const c7 = render('apache-vhost.conf', { apache_has_iffile: false });
    expect(c7).not.toContain('IfFile');
    expect(c7.match(/WSGIDaemonProcess/g)).toHaveLength(1);
  });

  it('uwsgi.ini: virtualenv is current, the pidfile is the recipe pidfile, no lazy-apps', () => {
    const text = render('uwsgi.ini', { uwsgi_plugin: 'python3' });
    expect(text).toMatch(/^virtualenv\s+=\s+\/usr\/lib\/ckan\/current$/m);
    expect(text).toMatch(/^pidfile\s+=\s+\/tmp\/ckan-uwsgi\.pid$/m);
    expect(text).toMatch(/^plugins\s+=\s+python3$/m);
    expect(text).not.toMatch(/^lazy-apps/m);
  });
});
