// What a host's web server supports, decided from the facts the agent reads (src/deploy/server-facts.ts),
// and the agent's reading of them (assets/host/ckan_release_host.py `server-facts`) on Apache config
// trees laid out as CentOS 7's and Debian's, under Python 2.7, 3.6 and the machine's python3. The facts
// read from a real Apache are test/integration/server-facts.test.ts's.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  compareVersions,
  healthcheckHost,
  pathsToCheck,
  serverProblems,
  type ServerCheck,
  type ServerFacts,
} from '../../src/deploy/server-facts.js';

const CURRENT = '/usr/lib/ckan/current';

function facts(
  apache: Partial<NonNullable<ServerFacts['apache']>> | null,
  wsgi?: Record<string, unknown> | null,
): ServerFacts {
  return {
    apache:
      apache === null
        ? null
        : {
            command: 'apachectl',
            version: '2.4.6',
            config: '/etc/httpd/conf/httpd.conf',
            log_dir: 'logs',
            mod_wsgi:
              wsgi === null
                ? null
                : {
                    module: '/etc/httpd/modules/mod_wsgi.so',
                    version: '3.4',
                    source: 'package mod_wsgi 3.4',
                    python: '2.7',
                    ...wsgi,
                  },
            ...apache,
          },
    apache_tried: ['apachectl', 'httpd', 'apache2'],
    paths: {},
  };
}

function check(c: Partial<ServerCheck>): string[] {
  return serverProblems({
    restart: 'apache-graceful',
    templates: ['builtin:wsgi.py', 'builtin:apache-vhost.conf'],
    facts: facts({}),
    vars: {},
    current: CURRENT,
    ...c,
  });
}

describe('which recipe can work on a host', () => {
  it('apache-graceful on CentOS 7 mod_wsgi 3.4: refused, naming the module and where the version came from', () => {
    expect(check({})).toEqual([
      "restart apache-graceful needs mod_wsgi >= 4.1, this host has 3.4 (/etc/httpd/modules/mod_wsgi.so, package mod_wsgi 3.4): install a mod_wsgi 4.x built for the releases' Python (e.g. python3-mod_wsgi, or mod_wsgi-express install-module), or set deploy.restart to a command",
    ]);
    // The same vhost with a plain restart command: fine (the template leaves out what 3.4 lacks).
    expect(check({ restart: 'sudo -n apachectl graceful' })).toEqual([]);
  });

  it('apache-graceful with mod_wsgi 4.1 and later: fine; 4.0.x: refused', () => {
    expect(check({ facts: facts({}, { version: '4.1' }) })).toEqual([]);
    expect(check({ facts: facts({ version: '2.4.62' }, { version: '4.9.4' }) })).toEqual([]);
    expect(check({ facts: facts({}, { version: '4.0.9' }) })[0]).toMatch(/this host has 4\.0\.9/);
  });

  it('no Apache, no mod_wsgi, an unknown version: each said so', () => {
    expect(check({ facts: facts(null) })).toEqual([
      'restart apache-graceful needs mod_wsgi >= 4.1 (graceful daemon restart by SIGUSR1): no Apache found on this host (tried apachectl, httpd, apache2 -V)',
    ]);
    expect(check({ facts: facts({}, null) })).toEqual([
      'restart apache-graceful needs mod_wsgi >= 4.1 (graceful daemon restart by SIGUSR1): Apache on this host loads no mod_wsgi (no LoadModule wsgi_module in /etc/httpd/conf/httpd.conf or the files it includes)',
    ]);
    expect(check({ facts: facts({}, { version: null, source: null }) })[0]).toMatch(
      /cannot tell the version of \/etc\/httpd\/modules\/mod_wsgi\.so .*set the variable mod_wsgi_version/,
    );
    // The host's variable says which: it wins over the fact.
    expect(
      check({ facts: facts({}, { version: null, source: null }), vars: { mod_wsgi_version: '4.7.1' } }),
    ).toEqual([]);
    // Only the vhost, with a restart command: it needs Apache with mod_wsgi all the same.
    expect(check({ restart: 'true', facts: facts({}, null) })).toEqual([
      'server.files builtin:apache-vhost.conf needs mod_wsgi: Apache on this host loads no mod_wsgi (no LoadModule wsgi_module in /etc/httpd/conf/httpd.conf or the files it includes)',
    ]);
    // Neither a recipe nor a shipped Apache template: Apache is not asked about.
    expect(check({ restart: 'true', templates: ['templates/my-vhost.conf'], facts: facts(null) })).toEqual(
      [],
    );
  });

  it('mod_wsgi built for another Python than the release', () => {
    const f = facts({ version: '2.4.62' }, { version: '4.9.4', python: '3.11' });
    expect(check({ facts: f, release: { python: '3.11.2', files: null } })).toEqual([]);
    expect(check({ facts: f, release: { python: '3.9.2', files: null } })).toEqual([
      '/etc/httpd/modules/mod_wsgi.so is built for Python 3.11, the release runs Python 3.9: mod_wsgi can serve only releases of its own Python',
    ]);
  });

  it('uwsgi: <current>/bin/uwsgi must be in the release; another uwsgi_binary must exist on the host', () => {
    const uwsgi = {
      restart: 'uwsgi-reload',
      templates: ['builtin:uwsgi.ini', 'builtin:supervisor-ckan-uwsgi.conf'],
      facts: facts(null),
    };
    expect(
      check({ ...uwsgi, release: { python: '3.11.2', files: ['bin', 'bin/python', 'bin/uwsgi'] } }),
    ).toEqual([]);
    expect(check({ ...uwsgi, release: { python: '3.11.2', files: ['bin', 'bin/python'] } })).toEqual([
      "the uwsgi templates run /usr/lib/ckan/current/bin/uwsgi (uwsgi_binary), but the release has no bin/uwsgi: add uwsgi to builder.extra_requirements, or set uwsgi_binary to the host's uWSGI (e.g. /usr/bin/uwsgi with uwsgi_plugin: python3)",
    ]);
    // setup (no release yet) and a release known only by its RELEASE.json: not decidable, not refused.
    expect(check({ ...uwsgi })).toEqual([]);
    expect(check({ ...uwsgi, release: { python: '3.11.2', files: null } })).toEqual([]);
    const vars = { uwsgi_binary: '/usr/bin/uwsgi' };
    expect(pathsToCheck({ ...uwsgi, vars, current: CURRENT })).toEqual(['/usr/bin/uwsgi']);
    expect(pathsToCheck({ ...uwsgi, vars: {}, current: CURRENT })).toEqual([]);
    expect(check({ ...uwsgi, vars, facts: { ...facts(null), paths: { '/usr/bin/uwsgi': true } } })).toEqual(
      [],
    );
    expect(check({ ...uwsgi, vars, facts: { ...facts(null), paths: { '/usr/bin/uwsgi': false } } })).toEqual([
      'uwsgi_binary /usr/bin/uwsgi is not an executable file on this host',
    ]);
  });

  it('versions compare numerically', () => {
    expect(compareVersions('2.4.6', '2.4.34')).toBe(-1);
    expect(compareVersions('2.4.34', '2.4.34')).toBe(0);
    expect(compareVersions('4.1', '4.1.0')).toBe(0);
    expect(compareVersions('4.10.0', '4.9.4')).toBe(1);
    expect(compareVersions('3.4', '4.1')).toBe(-1);
  });
});

describe("the health check's Host header", () => {
  it("site_url's host (with its port), unless deploy.healthcheck.host says otherwise", () => {
    expect(healthcheckHost(undefined, { site_url: 'https://data.example.org' })).toBe('data.example.org');
    expect(healthcheckHost(undefined, { site_url: 'http://site.test:8080/' })).toBe('site.test:8080');
    expect(healthcheckHost('ckan.internal', { site_url: 'https://data.example.org' })).toBe('ckan.internal');
    expect(healthcheckHost('', { site_url: 'https://data.example.org' })).toBeUndefined();
    expect(healthcheckHost(undefined, {})).toBeUndefined();
    expect(healthcheckHost(undefined, { site_url: 'not a url' })).toBeUndefined();
  });
});

/** Python interpreters the agent must run on (CentOS 7's 2.7 and 3.6 from pyenv, and python3). */
const PYTHONS = [
  '/root/.pyenv/versions/2.7.18/bin/python',
  '/root/.pyenv/versions/3.6.15/bin/python',
  'python3',
];

function agentReads(python: string, code: string): unknown {
  if (python.startsWith('/') && !existsSync(python))
    throw new Error(`${python} is missing: install it with \`pyenv install ${python.split('/')[4]}\``);
  const out = execFileSync(python, [
    '-c',
    `import json, sys; sys.path.insert(0, ${JSON.stringify(path.resolve('assets/host'))}); import ckan_release_host as a; print(json.dumps(${code}))`,
  ]);
  return JSON.parse(out.toString());
}

describe("the agent's reading of Apache's config", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-httpd-'));
  // CentOS 7's layout: ServerRoot /etc/httpd, modules loaded from conf.modules.d, module path relative.
  const c7 = path.join(dir, 'c7/etc/httpd');
  for (const d of ['conf', 'conf.d', 'conf.modules.d', 'modules'])
    mkdirSync(path.join(c7, d), { recursive: true });
  writeFileSync(
    path.join(c7, 'conf/httpd.conf'),
    `ServerRoot "${c7}"\nListen 80\nInclude conf.modules.d/*.conf\n# LoadModule wsgi_module modules/commented-out.so\nIncludeOptional conf.d/*.conf\n`,
  );
  writeFileSync(
    path.join(c7, 'conf.modules.d/00-base.conf'),
    'LoadModule alias_module modules/mod_alias.so\n',
  );
  writeFileSync(
    path.join(c7, 'conf.modules.d/10-wsgi.conf'),
    '<IfModule !wsgi_module>\n    LoadModule wsgi_module modules/mod_wsgi.so\n</IfModule>\n',
  );
  // mod_wsgi 3.4's module holds its banner "mod_wsgi/3.4" and links libpython2.7 (no package owns this copy).
  writeFileSync(
    path.join(c7, 'modules/mod_wsgi.so'),
    Buffer.from('\x7fELF\0libpython2.7.so.1.0\0xx\0mod_wsgi/3.4\0', 'latin1'),
  );
  // Debian's: apache2.conf includes mods-enabled/*.load with an absolute module path.
  const deb = path.join(dir, 'deb/etc/apache2');
  mkdirSync(path.join(deb, 'mods-enabled'), { recursive: true });
  writeFileSync(
    path.join(deb, 'apache2.conf'),
    'IncludeOptional mods-enabled/*.load\nInclude ports.conf\nIncludeOptional ${APACHE_CONFDIR}/x/*.conf\n',
  );
  writeFileSync(path.join(deb, 'ports.conf'), 'Listen 80\n');
  writeFileSync(path.join(deb, 'mods-enabled/wsgi.load'), `LoadModule wsgi_module ${deb}/mod_wsgi.so-3.11\n`);
  // mod_wsgi 4.x's module holds no "mod_wsgi/X.Y" literal: without a package the version is unknown.
  writeFileSync(
    path.join(deb, 'mod_wsgi.so-3.11'),
    Buffer.from('\x7fELF\0libpython3.11.so.1.0\0mod_wsgi/\x004.9.4\0', 'latin1'),
  );

  it.each(PYTHONS)(
    '%s: LoadModule through Include/IncludeOptional, the version, the linked Python',
    (python) => {
      expect(
        agentReads(
          python,
          `[a.apache_load_modules(${JSON.stringify(c7)}, ${JSON.stringify(`${c7}/conf/httpd.conf`)}), a.mod_wsgi_facts(${JSON.stringify(`${c7}/modules/mod_wsgi.so`)})]`,
        ),
      ).toEqual([
        { alias_module: `${c7}/modules/mod_alias.so`, wsgi_module: `${c7}/modules/mod_wsgi.so` },
        {
          module: `${c7}/modules/mod_wsgi.so`,
          version: '3.4',
          source: "the module's banner string",
          python: '2.7',
        },
      ]);
      expect(
        agentReads(
          python,
          `[a.apache_load_modules(${JSON.stringify(deb)}, ${JSON.stringify(`${deb}/apache2.conf`)}), a.mod_wsgi_facts(${JSON.stringify(`${deb}/mod_wsgi.so-3.11`)})]`,
        ),
      ).toEqual([
        { wsgi_module: `${deb}/mod_wsgi.so-3.11` },
        { module: `${deb}/mod_wsgi.so-3.11`, version: null, source: null, python: '3.11' },
      ]);
    },
  );
});
