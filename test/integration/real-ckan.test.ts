// Real CKAN 2.11.5 with ckanext-scheming 3.1.0 and ckanext-showcase 1.8.3 (the test bed's
// ../shared/real-ckan: git repositories and a wheelhouse), built by examples/real-ckan, shipped to a
// sandbox host with a real PostgreSQL, served by Apache + mod_wsgi. Every assertion looks at the host:
// what CKAN answers over HTTP, which tables PostgreSQL holds, where `current` points.
//
// The test bed's directory is the only input this test may go without: when it is absent the test says
// so (loudly) and skips. CKAN_RELEASE_REAL_CKAN=DIR points it at another directory of the same layout.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { execInContainer } from '../../src/docker/run.js';
import { postgresContainerName, sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, ledgerOf, onHost } from '../support/hosts.js';

const REAL = path.resolve(process.env.CKAN_RELEASE_REAL_CKAN ?? '../shared/real-ckan');
const LAYOUT = ['git/ckan.git', 'git/ckanext-scheming.git', 'git/ckanext-showcase.git', 'wheelhouse'];
const missing = LAYOUT.filter((p) => !existsSync(path.join(REAL, p)));
if (missing.length) {
  const bar = '!'.repeat(100);
  process.stderr.write(
    `\n${bar}\nSKIPPED test/integration/real-ckan.test.ts: no real CKAN test bed at ${REAL} ` +
      `(missing: ${missing.join(', ')}).\nPoint it at a directory of the same layout (git/ckan.git, ` +
      `git/ckanext-scheming.git, git/ckanext-showcase.git, wheelhouse/; see the test bed's README.md) with ` +
      `CKAN_RELEASE_REAL_CKAN=DIR.\n${bar}\n\n`,
  );
}

// Ports and names of this test only (the example itself uses rc-web1, 2300, 8300, 5430).
const HOST = 'rc-t1';
const SSH_PORT = 2301;
const HTTP_PORT = 8301;
const PG_PORT = 5431;
const ROOT = '/usr/lib/ckan';

let docker: Docker;
let dir: string;
let config: string;
let A: string;
let B: string;

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(['--config', config, ...argv], {
    out: (t) => (out += t),
    err: (t) => (err += t),
    env: process.env,
  });
  return { code, out, err };
}

async function ok(...argv: string[]): Promise<{ out: string; err: string; seconds: number }> {
  const t0 = Date.now();
  const r = await cli(...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  const seconds = (Date.now() - t0) / 1000;
  // Figures for README "Real CKAN" (measured, never asserted).
  const figures = r.err
    .split('\n')
    .filter((l) => /(Z built |Z steps: |: upload 100% |: received |: delta: sent )/.test(l));
  process.stderr.write(
    `[real-ckan] ${argv.join(' ')}: ${seconds.toFixed(1)} s\n${figures.map((l) => `[real-ckan]   ${l}\n`).join('')}`,
  );
  return { out: r.out, err: r.err, seconds };
}

async function action(
  name: string,
): Promise<{ status: number; body: { success?: boolean; result?: unknown } }> {
  const res = await fetch(`http://127.0.0.1:${HTTP_PORT}/api/3/action/${name}`);
  const text = await res.text();
  let body = {};
  try {
    body = JSON.parse(text) as object;
  } catch {
    // not JSON: the status says enough
  }
  return { status: res.status, body };
}

async function sql(query: string): Promise<string> {
  const r = await execInContainer(docker, postgresContainerName(PG_PORT), [
    'runuser',
    '-u',
    'postgres',
    '--',
    'psql',
    '-X',
    '-At',
    '-p',
    String(PG_PORT),
    '-d',
    'ckan_staging',
    '-c',
    query,
  ]);
  if (r.code !== 0) throw new Error(`psql: ${r.stderr}`);
  return r.stdout.trim();
}

async function expectHealthy(id: string): Promise<void> {
  expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${id}`);
  const status = await action('status_show');
  expect(status.status).toBe(200);
  const result = status.body.result as { ckan_version: string; extensions: string[] };
  expect(result.ckan_version).toBe('2.11.5');
  expect([...result.extensions].sort()).toEqual(['scheming_datasets', 'showcase']);
}

describe.skipIf(missing.length > 0)('real CKAN 2.11.5 + scheming + showcase, offline on debian12', () => {
  beforeAll(async () => {
    docker = await testDocker();
    dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-real-ckan-'));
    for (const part of ['ckan-release.yml', 'templates', 'secrets'])
      cpSync(path.resolve('examples/real-ckan', part), path.join(dir, part), { recursive: true });
    config = path.join(dir, 'ckan-release.yml');
    const text = readFileSync(config, 'utf8')
      .replaceAll('../../../shared/real-ckan', REAL)
      .replaceAll('rc-web1', HOST)
      .replace('ssh_port: 2300, http_port: 8300', `ssh_port: ${SSH_PORT}, http_port: ${HTTP_PORT}`)
      .replace('site_url: http://127.0.0.1:8300', `site_url: http://127.0.0.1:${HTTP_PORT}`)
      .replace('postgres_port: 5430', `postgres_port: ${PG_PORT}`);
    expect(text).toContain(`postgres_port: ${PG_PORT}`);
    writeFileSync(config, text);
    // Mirrors and work directories of this test only.
    process.env.CKAN_RELEASE_CACHE = path.join(dir, 'cache');
  }, 900_000);

  afterAll(async () => {
    if (docker && dir)
      await sandboxDown(docker, { dir: path.join(dir, '.ckan-release/sandbox') }, () => undefined);
  });

  it('builds from the test bed with no network', async () => {
    const { out, err } = await ok('build');
    A = out.trim().split('\n').pop()!;
    expect(A).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
    expect(err).toMatch(/built \S+ in [\d.]+ s: [\d.]+ MB, \d+ files/);
    const manifest = JSON.parse(
      readFileSync(path.join(dir, '.ckan-release/artifacts', A, 'manifest.json'), 'utf8'),
    ) as { ckan: { version: string }; files: { path: string; type: string }[] };
    expect(manifest.ckan.version).toBe('2.11.5');
    // CKAN's own links to links came through as links.
    expect(
      manifest.files.find((f) => f.path === 'src/ckan/ckanext/example_theme_docs/v04_ckan_extends/plugin.py'),
    ).toMatchObject({ type: 'symlink' });
  }, 900_000);

  it('sandbox up starts the host and its PostgreSQL; setup prepares the host', async () => {
    const up = await ok('sandbox', 'up');
    expect(up.out).toContain(`postgresql: 127.0.0.1:${PG_PORT}, database ckan_staging, user ckan_staging`);
    // The role logs in with the password from the secrets file, over TCP, as CKAN will.
    const r = await execInContainer(docker, postgresContainerName(PG_PORT), [
      'sh',
      '-c',
      `PGPASSWORD=real-ckan-staging-db-password psql -X -At -h 127.0.0.1 -p ${PG_PORT} -U ckan_staging -d ckan_staging -c 'select current_user'`,
    ]);
    expect(r.stdout.trim()).toBe('ckan_staging');
    expect(await sql("select count(*) from information_schema.tables where table_schema = 'public'")).toBe(
      '0',
    );
    await ok('setup', 'staging');
  }, 900_000);

  it('ships, runs the real `ckan db upgrade` once, and CKAN serves', async () => {
    const { out } = await ok('ship', 'staging', A);
    expect(out).toBe(`${HOST}: none -> ${A}\n`);
    await expectHealthy(A);
    // The hook migrated core and the plugins (2.11 does both): CKAN's tables and showcase's.
    const tables = (
      await sql("select table_name from information_schema.tables where table_schema = 'public' order by 1")
    ).split('\n');
    expect(tables).toEqual(expect.arrayContaining(['package', 'user', 'resource', 'alembic_version']));
    expect(tables).toContain('showcase_package_association');
    expect(tables.length).toBeGreaterThanOrEqual(35);
    expect(await sql('select count(*) from package')).toBe('0');
    const list = await action('package_list');
    expect(list.status).toBe(200);
    expect(list.body).toMatchObject({ success: true, result: [] });
    const login = await fetch(`http://127.0.0.1:${HTTP_PORT}/user/login`);
    expect(login.status).toBe(200);
    // CKAN's own login form (user/snippets/login_form.html), rendered by its templates.
    const page = await login.text();
    expect(page).toContain('id="field-login"');
    expect(page).toContain('id="field-password"');
    expect((await ledgerOf(docker, HOST)).map((e) => e.event)).toEqual(['staged', 'activated', 'healthy']);
  }, 300_000);

  it('a second release with showcase patched ships as a delta', async () => {
    // patches/<extension>/: applied inside the release's src/ckanext-showcase at build time.
    mkdirSync(path.join(dir, 'patches/ckanext-showcase'), { recursive: true });
    writeFileSync(
      path.join(dir, 'patches/ckanext-showcase/0001-marker.patch'),
      [
        '--- a/ckanext/showcase/__init__.py',
        '+++ b/ckanext/showcase/__init__.py',
        '@@ -0,0 +1 @@',
        "+RELEASE_MARKER = 'patched by ckan-release'",
        '',
      ].join('\n'),
    );
    const build = await ok('build');
    B = build.out.trim().split('\n').pop()!;
    expect(B).not.toBe(A);
    expect(build.err).toMatch(/base venv: reused/);
    const ship = await ok('ship', 'staging', B);
    expect(ship.out).toBe(`${HOST}: ${A} -> ${B}\n`);
    const delta = /: delta: sent (\d+) files \((\d+) bytes compressed/.exec(ship.err);
    expect(delta, ship.err).not.toBeNull();
    // The patched file and its bytecode, and the release's own records: a few files, a few kB.
    expect(Number(delta![1])).toBeLessThan(100);
    expect(Number(delta![2])).toBeLessThan(200_000);
    await expectHealthy(B);
    const marker = await onHost(
      docker,
      HOST,
      `${ROOT}/current/bin/python -c 'import ckanext.showcase as s; print(s.RELEASE_MARKER)'`,
    );
    expect(marker.out.trim()).toBe('patched by ckan-release');
  }, 900_000);

  it('rollback switches back to the first release, which serves again', async () => {
    const { out } = await ok('rollback', 'staging');
    expect(out).toContain(`${B} -> ${A}`);
    await expectHealthy(A);
    expect((await action('package_list')).status).toBe(200);
    const marker = await onHost(
      docker,
      HOST,
      `${ROOT}/current/bin/python -c 'import ckanext.showcase as s; print(getattr(s, "RELEASE_MARKER", "none"))'`,
    );
    expect(marker.out.trim()).toBe('none');
  }, 300_000);
});
