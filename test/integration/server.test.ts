// The web server's side (issue "web server integration"), against real sandbox hosts of both flavours:
// Apache + mod_wsgi daemon mode, and nginx + uwsgi under supervisor. `setup` installs the server files
// from the shipped templates; the restart recipes (apache-graceful, uwsgi-reload) keep a continuous load
// of 4 clients free of failed requests across 20 ship/rollback switches; and an old-style install
// (<root>/default venv, apache.wsgi pointing at it) is adopted and served throughout.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, sandboxDown, sandboxUp, type SandboxHostSpec } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost, served } from '../support/hosts.js';
import { APACHE_SERVER_FILES, installTheOldWay } from '../support/old-install.js';
import { expectAnswersThroughout, startLoad, type LoadResult } from '../support/load.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const SWITCHES = 20;
const HOST = { apache: 'w8-apache', uwsgi: 'w8-uwsgi', old: 'w8-old' } as const;
type Kind = keyof typeof HOST;

let docker: Docker;
let project: TestProject;
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0
const spec: Record<Kind, SandboxHostSpec> = {} as Record<Kind, SandboxHostSpec>;
const configs: Record<Kind, string> = {} as Record<Kind, string>;

const SERVER_FILES: Record<'apache' | 'uwsgi', string> = {
  apache: `
server:${APACHE_SERVER_FILES}`,
  uwsgi: `
server:
  uwsgi:
    start: sudo -n supervisorctl start 'ckan-uwsgi:*'
  files:
    - { template: builtin:wsgi.py, dest: /etc/ckan/default/wsgi.py }
    - { template: builtin:uwsgi.ini, dest: /etc/ckan/default/ckan-uwsgi.ini }
    - template: builtin:supervisor-ckan-uwsgi.conf
      dest: /etc/supervisor/conf.d/ckan-uwsgi.conf
      reload: sudo -n supervisorctl update
    - template: builtin:nginx-ckan.conf
      dest: /etc/nginx/sites-enabled/ckan.conf
      reload: sudo -n nginx -s reload
`,
};

/** A config for one host of one flavour: the example project's, with its own environment and server. */
function configFor(kind: Kind): string {
  const h = spec[kind];
  const flavour = kind === 'uwsgi' ? 'uwsgi' : 'apache';
  const extraVars =
    flavour === 'uwsgi'
      ? `uwsgi_plugin: python3, uwsgi_binary: /usr/bin/uwsgi, uwsgi_log_dir: /var/log/supervisor`
      : kind === 'old'
        ? `legacy_config: /etc/ckan/default/production.ini`
        : '';
  return project.variant(kind, (text) => {
    const head = text.slice(0, text.indexOf('environments:'));
    return (
      head.replace(
        'restart: sudo -n /usr/sbin/apachectl graceful',
        `restart: ${flavour === 'apache' ? 'apache-graceful' : 'uwsgi-reload'}`,
      ) +
      SERVER_FILES[flavour] +
      `
environments:
  site:
    hosts: [${h.name}]
    user: deploy
    ssh_config: .ckan-release/sandbox/ssh_config
    host_vars:
      ${h.name}: { ssh_port: ${h.sshPort}, http_port: ${h.httpPort}, http_listen: '127.0.0.1:${h.httpPort}' }
    vars: { site_url: 'http://site.test', site_title: 'Site', ${extraVars} }
    secrets: secrets/staging.yml
`
    );
  });
}

async function ok(kind: Kind, ...argv: string[]): Promise<string> {
  const r = await project.cli('--config', configs[kind], ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}\n${r.out}`);
  return r.out + r.err;
}

function releaseDir(id: string): string {
  return `${ROOT}/releases/${id}`;
}

function expectNoFailures(what: string, r: LoadResult, allowed: string[], atMost = 0): void {
  // The figure the issue asks for, in the test output.
  console.log(
    `${what}: ${r.requests} requests, ${r.failures} failed, slowest ${r.slowestMs} ms, by release ${JSON.stringify(r.byRelease)}`,
  );
  expect(r.failures, r.failureSamples.join('\n')).toBeLessThanOrEqual(atMost);
  expect(r.requests).toBeGreaterThan(SWITCHES * 10);
  expect(Object.keys(r.byRelease).filter((k) => !allowed.includes(k))).toEqual([]);
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  const ports = await freePorts(6);
  (Object.keys(HOST) as Kind[]).forEach((k, i) => {
    spec[k] = {
      name: HOST[k],
      sshPort: ports[2 * i]!,
      httpPort: ports[2 * i + 1]!,
      server: k === 'uwsgi' ? 'uwsgi' : 'apache',
    };
  });
  for (const k of Object.keys(HOST) as Kind[]) configs[k] = configFor(k);
  const a = await project.cli('--config', configs.apache, 'build');
  if (a.code !== 0) throw new Error(`build A exited ${a.code}:\n${a.err}`);
  A = a.out.trim().split('\n').pop()!;
  const bConfig = project.variant('b', () =>
    readFileSync(configs.apache, 'utf8').replace('ref: v1.1.0', 'ref: v1.0.0'),
  );
  const b = await project.cli('--config', bConfig, 'build');
  if (b.code !== 0) throw new Error(`build B exited ${b.code}:\n${b.err}`);
  B = b.out.trim().split('\n').pop()!;
  await sandboxUp(
    docker,
    { dir: path.join(project.dir, '.ckan-release/sandbox'), hosts: Object.values(spec) },
    () => undefined,
  );
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

/**
 * uWSGI's graceful reload dropped one request (nginx answered 502: the connection reset or closed
 * before the answer) in 2 of 6 runs of this test on 2026-11-22, about 1 in 100,000 requests over 20
 * reloads. Since nginx retries such an idempotent request on the same socket (builtin:nginx-ckan.conf's
 * upstream), none may fail (README "Web servers").
 */
const ALLOWED_FAILURES = { apache: 0, uwsgi: 0 } as const;

async function switchesUnderLoad(kind: 'apache' | 'uwsgi'): Promise<void> {
  const h = spec[kind];
  const load = startLoad(h.httpPort, 4);
  try {
    for (let i = 0; i < SWITCHES / 2; i++) {
      await ok(kind, 'ship', 'site', B);
      await ok(kind, 'rollback', 'site');
    }
  } finally {
    const r = await load.stop();
    expectNoFailures(
      `${kind}: ${SWITCHES} switches`,
      r,
      [releaseDir(A), releaseDir(B)],
      ALLOWED_FAILURES[kind],
    );
    expect(Object.keys(r.byRelease).sort()).toEqual([releaseDir(A), releaseDir(B)].sort());
  }
  expect(await currentOf(docker, h.name)).toBe(releaseDir(A));
  expect((await served(h.httpPort)).ckanPath).toBe(`${releaseDir(A)}/src/ckan/ckan`);
}

describe('Apache + mod_wsgi (restart: apache-graceful)', () => {
  it('setup installs the server files from the shipped templates, idempotently', async () => {
    const image = 'cat /etc/ckan/default/wsgi.py /etc/apache2/sites-available/ckan.conf | sha256sum';
    const before = (await onHost(docker, HOST.apache, image)).out;
    const plan = await ok('apache', 'setup', 'site', '--dry-run');
    expect(plan).toMatch(
      / {4}server file \/etc\/apache2\/sites-available\/ckan\.conf: would be installed( if different)?, then: sudo -n apachectl graceful/,
    );
    expect((await onHost(docker, HOST.apache, image)).out).toBe(before);
    const out = await ok('apache', 'setup', 'site');
    expect(out).toMatch(
      /w8-apache: server files: installed \/etc\/ckan\/default\/wsgi\.py, \/etc\/apache2\/sites-available\/ckan\.conf/,
    );
    const files = await onHost(
      docker,
      HOST.apache,
      'stat -c "%a %U:%G %n" /etc/ckan/default/wsgi.py /etc/apache2/sites-available/ckan.conf && grep -h "current" /etc/ckan/default/wsgi.py /etc/apache2/sites-available/ckan.conf',
    );
    expect(files.out).toContain('644 root:root /etc/ckan/default/wsgi.py');
    expect(files.out).toContain(`u'${ROOT}/current/ckan.ini'`);
    expect(files.out).toContain(`python-home=${ROOT}/current processes=2`);
    expect(files.out).toContain(`display-name=%{GROUP}`);
    expect(await ok('apache', 'setup', 'site')).toMatch(/w8-apache: server files: unchanged/);
    // Apache took the new vhost: it answers on the port the template named (no release yet: 500).
    expect((await served(spec.apache.httpPort)).status).toBe(500);
  });

  it('the first ship re-reads the config (nothing to keep serving), then serves the release', async () => {
    expect(await ok('apache', 'ship', 'site', A, '--dry-run')).toMatch(
      / {4}server file \/etc\/ckan\/default\/wsgi\.py: unchanged/,
    );
    const out = await ok('apache', 'ship', 'site', A);
    expect(out).toMatch(/restarted \(apache-graceful: apachectl graceful;/);
    expect((await served(spec.apache.httpPort)).ckanPath).toBe(`${releaseDir(A)}/src/ckan/ckan`);
  });

  it(`${SWITCHES} ship/rollback switches under a load of 4 clients: zero failed requests`, async () => {
    await switchesUnderLoad('apache');
  }, 900_000);
});

describe('a failed ship', () => {
  it('puts back the server files it changed, and the site keeps serving the old release', async () => {
    const vhost = 'sha256sum /etc/apache2/sites-available/ckan.conf';
    const before = (await onHost(docker, HOST.apache, vhost)).out;
    const broken = project.variant('apache-broken', () =>
      readFileSync(configs.apache, 'utf8')
        .replace("site_title: 'Site',", "site_title: 'Site', wsgi_threads: 5,")
        .replace(
          'url: http://127.0.0.1:{{ http_port }}/api/3/action/status_show',
          'url: http://127.0.0.1:{{ http_port }}/no-such-page',
        ),
    );
    const r = await project.cli('--config', broken, 'ship', 'site', B);
    expect(r.code, r.err).toBe(1);
    expect(r.err).toMatch(/installed \/etc\/apache2\/sites-available\/ckan\.conf/);
    expect(r.err).toMatch(/was switched back and restarted/);
    expect((await onHost(docker, HOST.apache, vhost)).out).toBe(before);
    expect(await currentOf(docker, HOST.apache)).toBe(releaseDir(A));
    expect((await served(spec.apache.httpPort)).ckanPath).toBe(`${releaseDir(A)}/src/ckan/ckan`);
  }, 300_000);
});

describe('nginx + uwsgi under supervisor (restart: uwsgi-reload)', () => {
  async function waitForSupervisor(state: string): Promise<void> {
    const deadline = Date.now() + 60_000;
    let last = '';
    while (Date.now() < deadline) {
      last = (await onHost(docker, HOST.uwsgi, "supervisorctl status 'ckan-uwsgi:*' || true")).out.trim();
      if (new RegExp(`\\s${state}\\s`).test(`${last} `)) return;
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`supervisor's ckan-uwsgi did not reach ${state} within 60 s; last status: ${last}`);
  }

  it('setup installs the uwsgi ini, the supervisor program and the nginx site', async () => {
    const out = await ok('uwsgi', 'setup', 'site');
    expect(out).toMatch(/w8-uwsgi: server files: installed .*\/etc\/supervisor\/conf\.d\/ckan-uwsgi\.conf/);
    const r = await onHost(docker, HOST.uwsgi, 'supervisorctl avail; cat /etc/ckan/default/ckan-uwsgi.ini');
    expect(r.out).toMatch(/ckan-uwsgi:ckan-uwsgi-00/);
    expect(r.out).toMatch(new RegExp(`virtualenv\\s+=\\s+${ROOT}/current`));
    expect(r.out).toMatch(/^lazy-apps\s+=\s+true$/m);
  });

  it('a release without bin/uwsgi, with the default uwsgi_binary (<current>/bin/uwsgi): refused, exit 2', async () => {
    const noBinary = project.variant('uwsgi-default-binary', () =>
      readFileSync(configs.uwsgi, 'utf8').replace(' uwsgi_binary: /usr/bin/uwsgi,', ''),
    );
    const why = `the uwsgi templates run ${ROOT}/current/bin/uwsgi (uwsgi_binary), but the release has no bin/uwsgi`;
    const plan = await project.cli('--config', noBinary, 'ship', 'site', A, '--dry-run');
    expect(plan.out).toContain(`WOULD FAIL: ${why}`);
    const r = await project.cli('--config', noBinary, 'ship', 'site', A);
    expect(r.code, r.err).toBe(2);
    expect(r.err).toContain(`w8-uwsgi: ${why}: add uwsgi to builder.extra_requirements`);
    expect(await currentOf(docker, HOST.uwsgi)).toBe('none');
  });

  it('the first ship starts uwsgi through supervisor, then serves the release', async () => {
    // setup's `supervisorctl update` made supervisor try the program (autostart), which fails while
    // no `current` exists, and it retries for some seconds (BACKOFF). A switch inside that window lets
    // supervisor's own retry start uWSGI, and the restart then finds a master and reloads it: correct,
    // but not the path this case is about. So wait until supervisor has given up (FATAL).
    await waitForSupervisor('FATAL');
    const out = await ok('uwsgi', 'ship', 'site', A);
    expect(out).toMatch(/restarted \(uwsgi-reload: start;/);
    expect((await served(spec.uwsgi.httpPort)).ckanPath).toBe(`${releaseDir(A)}/src/ckan/ckan`);
    // Two workers (lazy-apps: each loaded CKAN itself after the fork).
    const workers = await onHost(docker, HOST.uwsgi, 'pgrep -P "$(cat /tmp/ckan-uwsgi.pid)" | wc -l');
    expect(workers.out.trim()).toBe('2');
  });

  it(`${SWITCHES} ship/rollback switches under a load of 4 clients: zero failed requests`, async () => {
    await switchesUnderLoad('uwsgi');
    const out = await ok('uwsgi', 'ship', 'site', B);
    expect(out).toMatch(/restarted \(uwsgi-reload: SIGHUP to the uwsgi master;/);
  }, 900_000);
});

describe('adopting a site installed the old way', () => {
  const OLD = HOST.old;

  it('setup adopts <root>/default, installs the server files, and the site answers throughout', async () => {
    // The old playbooks' install: a venv at <root>/default with CKAN in it, its config in
    // /etc/ckan/default/production.ini, and an apache.wsgi + vhost pointing at the venv.
    const before = await installTheOldWay(docker, OLD, project, spec.old.httpPort);

    const load = startLoad(spec.old.httpPort, 4);
    let setupOut: string;
    let shipOut: string;
    try {
      await new Promise((r) => setTimeout(r, 2000));
      setupOut = await ok('old', 'setup', 'site');
      await new Promise((r) => setTimeout(r, 2000));
      shipOut = await ok('old', 'ship', 'site', A);
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      const r = await load.stop();
      const oldPath = path.posix.dirname(before.ckanPath!.replace(/\/ckan$/, '/ckan/x'));
      console.log(
        `adoption: ${r.requests} requests, ${r.failures} failed within ${r.failureSpanMs} ms, longest time without an answer ${r.longestGapMs} ms, by release ${JSON.stringify(r.byRelease)}`,
      );
      // The one plain graceful that loads the new vhost may fail a brief window's requests.
      expectAnswersThroughout(r);
      expect(Object.keys(r.byRelease).sort()).toEqual([releaseDir(A), oldPath].sort());
    }
    expect(setupOut).toMatch(/adopted \/usr\/lib\/ckan\/default as release \d{14}Z-00000000/);
    expect(setupOut).toMatch(/server files: installed \/etc\/ckan\/default\/wsgi\.py, \/etc\/apache2/);
    // The adopted release was live, so the ship restarted gracefully (not a config re-read).
    expect(shipOut).toMatch(/restarted \(apache-graceful: SIGUSR1 to mod_wsgi daemons;/);
    expect(await currentOf(docker, OLD)).toBe(releaseDir(A));
  }, 600_000);
});
