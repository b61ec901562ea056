// Malformed configs: each error must name the file, the line, the key path and what was expected.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { environment, loadConfig, parseConfig } from '../../src/config/load.js';
import { ConfigError, UsageError } from '../../src/errors.js';

let dir: string;
let file: string;

const VALID = `project: portal
root: /usr/lib/ckan
ckan:
  source: https://github.com/ckan/ckan.git
  ref: ckan-2.9.11
builder:
  os: debian12
extensions:
  - name: ckanext-scheming
    source: git@github.com:ckan/ckanext-scheming.git
    ref: release-3.0.0
    plugins: [scheming_datasets]
config:
  template: templates/ckan.ini.j2
deploy:
  restart: sudo systemctl reload httpd
environments:
  staging:
    hosts: [ckan-staging.example.org]
  production:
    hosts: [web1.example.org, web2.example.org]
    requires: staging
`;

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-config-'));
  mkdirSync(path.join(dir, 'templates'));
  writeFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'x = {{ y }}\n');
  mkdirSync(path.join(dir, 'secrets'));
  writeFileSync(path.join(dir, 'secrets/staging.yml'), 'a: b\n');
  file = path.join(dir, 'ckan-release.yml');
});

function errorOf(text: string, env: NodeJS.ProcessEnv = {}): string {
  try {
    parseConfig(text, file, { env });
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).exitCode).toBe(2);
    return (e as Error).message.replace(`${file}`, 'FILE');
  }
  throw new Error('expected a ConfigError');
}

/** Replaces one line (by its exact text) of the valid config. */
function edit(from: string, to: string): string {
  expect(VALID).toContain(from);
  return VALID.replace(from, to);
}

describe('a valid config', () => {
  it('loads with defaults applied and paths resolved', () => {
    const c = parseConfig(VALID, file, { env: {} });
    expect(c.project).toBe('portal');
    expect(c.builder).toMatchObject({ os: 'debian12', python: 'python3', network: 'none' });
    expect(c.builder.dockerfile).toMatch(/docker\/debian12\/Dockerfile$/);
    expect(c.deploy).toMatchObject({ keepReleases: 5, healthcheck: { timeout: 60 } });
    expect(c.config).toEqual({ template: path.join(dir, 'templates/ckan.ini.j2'), file: 'ckan.ini' });
    expect(c.store).toBe(path.join(dir, '.ckan-release/artifacts'));
    expect(c.extensions[0]).toMatchObject({
      url: 'git@github.com:ckan/ckanext-scheming.git',
      plugins: ['scheming_datasets'],
    });
    expect(c.environments.production).toMatchObject({ requires: 'staging', parallel: 10, vars: {} });
  });

  it('resolves local git sources against the config directory', () => {
    const c = parseConfig(edit('source: https://github.com/ckan/ckan.git', 'source: ./repos/ckan'), file, {
      env: {},
    });
    expect(c.ckan.url).toBe(path.join(dir, 'repos/ckan'));
  });

  it('reads ${env:NAME} from the environment', () => {
    const c = parseConfig(edit('ref: ckan-2.9.11', 'ref: ${env:CKAN_REF}'), file, {
      env: { CKAN_REF: 'ckan-2.10.4' },
    });
    expect(c.ckan.ref).toBe('ckan-2.10.4');
  });

  it('loads the example project', () => {
    const c = loadConfig(path.resolve('examples/demo/ckan-release.yml'));
    expect(Object.keys(c.environments)).toEqual(['staging', 'production']);
    expect(c.extensions.map((e) => e.name)).toEqual([
      'ckanext-showcase',
      'ckanext-spatial',
      'ckanext-scheming',
    ]);
  });
});

describe('build inputs', () => {
  it('extensions[].requirements: a name, a list, none or false; absent: found by the builder', () => {
    const reqs = (value: string | undefined) =>
      parseConfig(
        edit(
          '    plugins: [scheming_datasets]',
          `    plugins: [scheming_datasets]${value === undefined ? '' : `\n    requirements: ${value}`}`,
        ),
        file,
        { env: {} },
      ).extensions[0]!.requirements;
    expect(reqs(undefined)).toBe('auto');
    expect(reqs('pip-requirements.txt')).toEqual(['pip-requirements.txt']);
    expect(reqs('[requirements.txt, requirements/extra.txt]')).toEqual([
      'requirements.txt',
      'requirements/extra.txt',
    ]);
    expect(reqs('none')).toEqual([]);
    expect(reqs('false')).toEqual([]);
  });

  it('deploy.link: hardlink unless copy is asked for', () => {
    expect(parseConfig(VALID, file, { env: {} }).deploy.link).toBe('hardlink');
    const c = parseConfig(
      edit('  restart: sudo systemctl reload httpd', '  restart: sudo systemctl reload httpd\n  link: copy'),
      file,
      { env: {} },
    );
    expect(c.deploy.link).toBe('copy');
  });

  it('builder.pip.constraints, .overrides and builder.extra_requirements default to none', () => {
    const c = parseConfig(VALID, file, { env: {} });
    expect(c.builder.pip).toMatchObject({ constraints: [], overrides: [] });
    expect(c.builder.extraRequirements).toEqual([]);
    const d = parseConfig(
      edit(
        '  os: debian12',
        '  os: debian12\n  extra_requirements: [uwsgi, "pyuwsgi[x]>=2.0,<3"]\n  pip:\n    constraints: [markdown==3.3.7]\n    overrides: [markdown==3.3.7]',
      ),
      file,
      { env: {} },
    );
    expect(d.builder.extraRequirements).toEqual(['uwsgi', 'pyuwsgi[x]>=2.0,<3']);
    expect(d.builder.pip).toMatchObject({ constraints: ['markdown==3.3.7'], overrides: ['markdown==3.3.7'] });
  });
});

describe('malformed configs', () => {
  const cases: [string, string, string][] = [
    [
      'a typo in a top-level key',
      edit('project: portal', 'projet: portal'),
      'FILE:1: projet: unknown key; did you mean "project"?',
    ],
    [
      'a typo in a nested key',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  keep_releses: 3',
      ),
      'FILE:17: deploy.keep_releses: unknown key; did you mean "keep_releases"?',
    ],
    [
      'an unknown key unlike any',
      edit('project: portal', 'project: portal\nfrobnicate: 1'),
      'FILE:2: frobnicate: unknown key; expected one of project, root, store, s3, notify, ckan, builder, extensions, patches, config, shared, deploy, server, environments',
    ],
    ['a missing required key', edit('project: portal\n', ''), 'FILE:1: missing required key "project"'],
    ['a missing nested key', edit('  ref: ckan-2.9.11\n', ''), 'FILE:4: ckan: missing required key "ref"'],
    [
      'a YAML syntax error',
      edit('  ref: ckan-2.9.11', '  ref: ckan-2.9.11: x'),
      'FILE:5: invalid YAML: Nested mappings are not allowed in compact mappings',
    ],
    [
      'a relative root',
      edit('root: /usr/lib/ckan', 'root: usr/lib/ckan'),
      'FILE:2: root: expected an absolute path, got "usr/lib/ckan"',
    ],
    [
      'a root with ..',
      edit('root: /usr/lib/ckan', 'root: /usr/lib/../ckan'),
      'FILE:2: root: expected an absolute path without "." or ".." parts (and not "/"), got "/usr/lib/../ckan"',
    ],
    [
      'an unknown builder os',
      edit('  os: debian12', '  os: debian21'),
      'FILE:7: builder.os: no builder image "debian21": expected one of centos7, debian11, debian12, debian13, el8, el9, ubuntu2204, ubuntu2404; did you mean "debian11"?',
    ],
    [
      'a bad deploy.link',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  link: symlink',
      ),
      'FILE:17: deploy.link: expected one of hardlink, copy, got "symlink"',
    ],
    [
      'a bad builder network',
      edit('  os: debian12', '  os: debian12\n  network: bridge'),
      'FILE:8: builder.network: expected one of none, default, host, got "bridge"',
    ],
    [
      'an index URL without a network',
      edit('  os: debian12', '  os: debian12\n  pip: { index_url: "https://pypi.example.org/simple" }'),
      'FILE:8: builder.pip.index_url: a package index needs a network, but builder.network is "none"',
    ],
    [
      'a number where a ref is expected',
      edit('  ref: ckan-2.9.11', '  ref: 2.9'),
      'FILE:5: ckan.ref: expected a git tag, branch or commit, got a number (2.9)',
    ],
    [
      'extensions as a mapping',
      edit('  - name: ckanext-scheming', '  name: ckanext-scheming').replace(/\n {4}/g, '\n  '),
      'FILE:9: extensions: expected a list of extensions, got a mapping',
    ],
    [
      'an extension without a ref',
      edit('    ref: release-3.0.0\n', ''),
      'FILE:9: extensions[0]: missing required key "ref"',
    ],
    [
      'a plugin name with a space',
      edit('plugins: [scheming_datasets]', 'plugins: [scheming datasets]'),
      'FILE:12: extensions[0].plugins[0]: expected a CKAN plugin name, got "scheming datasets"',
    ],
    [
      'an extension listed twice',
      edit(
        '    plugins: [scheming_datasets]',
        '    plugins: [scheming_datasets]\n  - name: ckanext-scheming\n    source: x\n    ref: y',
      ),
      'FILE:13: extensions[1].name: "ckanext-scheming" is listed twice (or is "ckan")',
    ],
    [
      'a missing template',
      edit('  template: templates/ckan.ini.j2', '  template: templates/production.ini.j2'),
      'FILE:14: config.template: no such file: templates/production.ini.j2',
    ],
    [
      'keep_releases zero',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  keep_releases: 0',
      ),
      'FILE:17: deploy.keep_releases: expected a whole number from 1 to 1000, got a number (0)',
    ],
    [
      'keep_releases as a string',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  keep_releases: five',
      ),
      'FILE:17: deploy.keep_releases: expected a whole number from 1 to 1000, got "five"',
    ],
    [
      'deploy without restart',
      edit('  restart: sudo systemctl reload httpd', '  keep_releases: 3'),
      'FILE:16: deploy: missing required key "restart"',
    ],
    [
      'a healthcheck URL that is not http',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  healthcheck: { url: ftp://x/ }',
      ),
      'FILE:17: deploy.healthcheck.url: expected an http(s) URL (may use template variables), got "ftp://x/"',
    ],
    [
      'a hook without run',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  hooks:\n    before_switch:\n      - { once: true }',
      ),
      'FILE:19: deploy.hooks.before_switch[0]: missing required key "run"',
    ],
    [
      'a hook with once: "yes please"',
      edit(
        '  restart: sudo systemctl reload httpd',
        '  restart: sudo systemctl reload httpd\n  hooks:\n    after_switch:\n      - { run: x, once: "yes please" }',
      ),
      'FILE:19: deploy.hooks.after_switch[0].once: expected true or false, got "yes please"',
    ],
    [
      'no environments',
      edit(
        '  staging:\n    hosts: [ckan-staging.example.org]\n  production:\n    hosts: [web1.example.org, web2.example.org]\n    requires: staging\n',
        '  {}\n',
      ),
      'FILE:18: environments: expected at least 1 entry, got none',
    ],
    [
      'an environment with no hosts',
      edit('    hosts: [ckan-staging.example.org]', '    hosts: []'),
      'FILE:19: environments.staging.hosts: expected at least 1 item, got none',
    ],
    [
      'a host with shell characters',
      edit('    hosts: [ckan-staging.example.org]', '    hosts: ["web1;rm -rf /"]'),
      'FILE:19: environments.staging.hosts[0]: expected a host name, alias or address ([user@]host[:port]), got "web1;rm -rf /"',
    ],
    [
      'an environment name with a space',
      edit('  staging:', '  "stag ing":').replace('requires: staging', 'requires: "stag ing"'),
      'FILE:18: environments.stag ing: invalid name: expected lower case letters, digits, "_" and "-", starting with a letter',
    ],
    [
      'requires names an unknown environment',
      edit('    requires: staging', '    requires: stagign'),
      'FILE:22: environments.production.requires: no environment "stagign": expected one of staging, production; did you mean "staging"?',
    ],
    [
      'an environment requiring itself',
      edit('    requires: staging', '    requires: production'),
      'FILE:22: environments.production.requires: an environment cannot require itself',
    ],
    [
      'a missing secrets file',
      edit(
        '    hosts: [ckan-staging.example.org]',
        '    hosts: [ckan-staging.example.org]\n    secrets: secrets/stagin.yml',
      ),
      'FILE:20: environments.staging.secrets: no such file: secrets/stagin.yml',
    ],
    [
      'a typo in an environment key',
      edit(
        '    hosts: [ckan-staging.example.org]',
        '    hosts: [ckan-staging.example.org]\n    varz: { a: 1 }',
      ),
      'FILE:20: environments.staging.varz: unknown key; did you mean "vars"?',
    ],
    [
      'a shared path escaping with ..',
      edit('config:', 'shared:\n  - { path: ../etc, link: storage }\nconfig:'),
      'FILE:14: shared[0].path: expected a relative path without "..", ".", empty parts, spaces or shell characters, got "../etc"',
    ],
    [
      'an unset ${env:} variable',
      edit('  ref: ckan-2.9.11', '  ref: ${env:CKAN_REF}'),
      'FILE:5: ckan.ref: environment variable CKAN_REF is not set (used as ${env:CKAN_REF})',
    ],
    [
      'a duplicate key',
      edit('project: portal', 'project: portal\nproject: other'),
      'FILE:2: project: duplicate key',
    ],
    [
      'a list as the whole file',
      '- a\n- b\n',
      'FILE:1: expected a mapping with keys project, root, store, s3, notify, ckan, builder, extensions, patches, config, shared, deploy, server, environments, got a list',
    ],
    [
      'a bad project name',
      edit('project: portal', 'project: "My Portal"'),
      'FILE:1: project: expected a project name (lower case letters, digits, ".", "_", "-"), got "My Portal"',
    ],
    [
      'a vars key that is not a variable name',
      edit(
        '    hosts: [ckan-staging.example.org]',
        '    hosts: [ckan-staging.example.org]\n    vars: { site-url: x }',
      ),
      'FILE:20: environments.staging.vars.site-url: invalid name: expected a template variable name (letters, digits, _)',
    ],
    [
      'an unknown built-in server template',
      edit(
        'environments:\n',
        'server:\n  files:\n    - { template: builtin:wsgi.pyy, dest: /etc/ckan/default/wsgi.py }\nenvironments:\n',
      ),
      'FILE:19: server.files[0].template: no built-in template "wsgi.pyy": expected one of builtin:apache-vhost.conf, builtin:apache.wsgi, builtin:nginx-ckan.conf, builtin:supervisor-ckan-uwsgi.conf, builtin:uwsgi.ini, builtin:wsgi.py; did you mean "builtin:wsgi.py"?',
    ],
    [
      'a server file inside root',
      edit(
        'environments:\n',
        'server:\n  files:\n    - { template: builtin:wsgi.py, dest: /usr/lib/ckan/wsgi.py }\nenvironments:\n',
      ),
      'FILE:19: server.files[0].dest: "/usr/lib/ckan/wsgi.py" is inside root (/usr/lib/ckan), which ckan-release manages: install server files elsewhere, e.g. /etc/ckan/default/',
    ],
    [
      'a server file installed twice',
      edit(
        'environments:\n',
        'server:\n  files:\n    - { template: builtin:wsgi.py, dest: /etc/a.py }\n    - { template: builtin:apache.wsgi, dest: /etc/a.py }\nenvironments:\n',
      ),
      'FILE:20: server.files[1].dest: "/etc/a.py" is installed twice',
    ],
    [
      'a server file mode that is not octal',
      edit(
        'environments:\n',
        'server:\n  files:\n    - { template: builtin:wsgi.py, dest: /etc/a.py, mode: 644x }\nenvironments:\n',
      ),
      'FILE:19: server.files[0].mode: expected an octal file mode such as "0644", got "644x"',
    ],
    [
      'a restart that is neither a recipe nor a command',
      edit('  restart: sudo systemctl reload httpd', '  restart: [apache-graceful]'),
      'FILE:16: deploy.restart: expected a restart recipe (apache-graceful, uwsgi-reload) or a shell command that restarts the web server, got a list',
    ],
    [
      'a requirements entry that is not a file name',
      edit('    plugins: [scheming_datasets]', '    plugins: [scheming_datasets]\n    requirements: 3'),
      'FILE:13: extensions[0].requirements: expected a requirements file name (such as pip-requirements.txt), a list of them, or none',
    ],
    [
      'a requirements file outside the extension',
      edit(
        '    plugins: [scheming_datasets]',
        '    plugins: [scheming_datasets]\n    requirements: [../reqs.txt]',
      ),
      'FILE:13: extensions[0].requirements[0]: expected a relative path without "..", ".", empty parts, spaces or shell characters, got "../reqs.txt"',
    ],
    [
      'an extra requirement that is a pip option',
      edit('  os: debian12', '  os: debian12\n  extra_requirements: [--pre]'),
      'FILE:8: builder.extra_requirements[0]: expected a pip requirement such as "markdown==3.3.7", got "--pre"',
    ],
    [
      'a pip override that is no requirement',
      edit('  os: debian12', '  os: debian12\n  pip:\n    overrides: ["markdown 3.3.7"]'),
      'FILE:9: builder.pip.overrides[0]: expected a pip requirement such as "markdown==3.3.7", got "markdown 3.3.7"',
    ],
  ];

  it.each(cases)('%s', (_name, text, message) => {
    expect(errorOf(text)).toBe(message);
  });

  it('has at least 25 cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(25);
  });
});

describe('files and environments', () => {
  it('a missing config file says how to make one', () => {
    expect(() => loadConfig(path.join(dir, 'nope.yml'))).toThrow(/nope\.yml: no such file/);
    try {
      loadConfig(path.join(dir, 'nope.yml'));
    } catch (e) {
      expect((e as ConfigError).hint).toMatch(/ckan-release init/);
    }
  });

  it('an empty file is an error', () => {
    expect(errorOf('')).toBe('FILE: the file is empty');
  });

  it('an unknown environment lists the known ones', () => {
    const c = parseConfig(VALID, file, { env: {} });
    expect(() => environment(c, 'prodution')).toThrow(UsageError);
    expect(() => environment(c, 'prodution')).toThrow(
      `no environment "prodution" in ${c.displayFile}: expected one of staging, production; did you mean "production"?`,
    );
  });

  it('patches/<target> must name ckan or an extension', () => {
    mkdirSync(path.join(dir, 'patches/ckanext-schemin'), { recursive: true });
    try {
      expect(errorOf(VALID)).toMatch(
        /^FILE: patches: patches\/ckanext-schemin\/ names no package: expected ckan or an extension name; did you mean "ckanext-scheming"\?$/,
      );
    } finally {
      mkdirSync(path.join(dir, 'patches'), { recursive: true });
    }
  });
});
