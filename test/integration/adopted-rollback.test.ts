// The rollback of an old-style site's first real deploy: on a sandbox host installed the way the old
// playbooks left it (test/support/old-install.ts: a hand-installed <root>/default venv with the fixture
// CKAN, the old apache.wsgi naming /etc/ckan/default/production.ini), `setup` adopts the venv
// (releases/<time>Z-00000000 -> ../default), `ship` switches to a built release, and `rollback`
// switches back to the adopted venv: current -> releases/<...>-00000000 -> ../default, the site answers
// from the default venv with its own config, the ledger marks the release left bad. Then `ship` of the
// same release works again. Under a load of 4 clients throughout the rollback and the second ship.
import path from 'node:path';
import type Docker from 'dockerode';
import { beforeAll, describe, expect, it } from 'vitest';
import { currentOf, ledgerOf, onHost, served } from '../support/hosts.js';
import { expectAnswersThroughout, startLoad } from '../support/load.js';
import { APACHE_SERVER_FILES, installTheOldWay, OLD_CONFIG } from '../support/old-install.js';
import type { TestProject } from '../support/project.js';
import { useSandboxFleet } from '../support/sandbox-fleet.js';

const ROOT = '/usr/lib/ckan';
const HOST = 'ad-old';
const SSH_PORT = 2390;
const HTTP_PORT = 8390;
// A second host installed the old way a little later (its venv's mtime differs): the hosts adopted by
// one `setup` share one ID, so the environment agrees on the rollback target.
const HOST2 = 'ad-old2';
const SSH_PORT2 = 2391;
const HTTP_PORT2 = 8391;

// The example project with the apache-graceful recipe, the builtin WSGI script and vhost, and the
// site's own config as legacy_config (README "Migrating from the old Ansible playbooks").
const fleet = useSandboxFleet(
  {
    env: 'site',
    hosts: [
      {
        name: HOST,
        sshPort: SSH_PORT,
        httpPort: HTTP_PORT,
        server: 'apache',
        vars: { http_listen: `127.0.0.1:${HTTP_PORT}` },
      },
      {
        name: HOST2,
        sshPort: SSH_PORT2,
        httpPort: HTTP_PORT2,
        server: 'apache',
        vars: { http_listen: `127.0.0.1:${HTTP_PORT2}` },
      },
    ],
    vars: { site_url: 'http://site.test', site_title: 'Site', legacy_config: OLD_CONFIG },
    head: (text) =>
      `${text.replace('restart: sudo -n /usr/sbin/apachectl graceful', 'restart: apache-graceful')}\nserver:${APACHE_SERVER_FILES}`,
  },
  1_200_000,
);

let docker: Docker;
let project: TestProject;
let A: string;

const ok = (...argv: string[]) => fleet().ok(...argv);

beforeAll(async () => {
  ({ docker, project } = fleet());
  A = await fleet().build();
  expect(A).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
}, 900_000);

describe('rollback to the release setup adopted from <root>/default', () => {
  it('switches back to the old venv after the first ship, and ship works again', async () => {
    const before = await installTheOldWay(docker, HOST, project, HTTP_PORT);
    await new Promise((r) => setTimeout(r, 1100));
    const before2 = await installTheOldWay(docker, HOST2, project, HTTP_PORT2);
    const oldPath = path.posix.dirname(before.ckanPath!.replace(/\/ckan$/, '/ckan/x'));
    const setupOut = await ok('setup', 'site');
    const adopted = /adopted \/usr\/lib\/ckan\/default as release (\d{14}Z-00000000)/.exec(setupOut)?.[1];
    expect(adopted, setupOut).toBeDefined();
    expect(setupOut).toContain(`${HOST2}: made`);
    expect(setupOut.match(/adopted \/usr\/lib\/ckan\/default as release \S+/g), setupOut).toEqual([
      `adopted /usr/lib/ckan/default as release ${adopted}`,
      `adopted /usr/lib/ckan/default as release ${adopted}`,
    ]);
    expect(await ok('ship', 'site', A)).toMatch(new RegExp(`${HOST}: ${adopted} -> ${A}`));
    expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${A}`);

    // The dry run: the plan the real run follows, nothing changed.
    const plan = await ok('rollback', 'site', '--dry-run');
    expect(plan).toContain(`plan: rollback ${adopted} to site (dry run: nothing is changed)`);
    expect(plan).toContain(`  ${HOST}: current ${A} -> ${adopted}`);
    expect(plan).toMatch(
      / {4}transfer: none \(the release setup adopted \(releases\/\S+ -> \/usr\/lib\/ckan\/default\): not verified, its own config kept\)/,
    );
    expect(plan).toMatch(/ {4}skipped: the OS, Python and library checks/);
    expect(plan).toMatch(/ {4}skipped: the health check's plugin list/);
    expect(plan).not.toMatch(/WOULD FAIL/);
    expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${A}`);

    const load = startLoad(HTTP_PORT, 4);
    let rollbackOut = '';
    let shipAgainOut = '';
    let rolledBack: Awaited<ReturnType<typeof served>> | undefined;
    let links = '';
    let current2 = '';
    let rolledBack2: Awaited<ReturnType<typeof served>> | undefined;
    let failure: unknown;
    try {
      await new Promise((r) => setTimeout(r, 1000));
      rollbackOut = await ok('rollback', 'site');
      await new Promise((r) => setTimeout(r, 1000));
      rolledBack = await served(HTTP_PORT);
      links = (await onHost(docker, HOST, `readlink ${ROOT}/current ${ROOT}/releases/${adopted}`)).out;
      current2 = (await onHost(docker, HOST2, `readlink ${ROOT}/current ${ROOT}/releases/${adopted}`)).out;
      rolledBack2 = await served(HTTP_PORT2);
      shipAgainOut = await ok('ship', 'site', A);
      await new Promise((r) => setTimeout(r, 1000));
    } catch (e) {
      failure = e;
    }
    const r = await load.stop();
    console.log(
      `rollback to the adopted venv and ship again: ${r.requests} requests, ${r.failures} failed, longest time without an answer ${r.longestGapMs} ms, by release ${JSON.stringify(r.byRelease)}`,
    );
    if (failure) throw failure;

    expect(rollbackOut).toMatch(new RegExp(`${HOST}: ${A} -> ${adopted}`));
    expect(rollbackOut).toContain(`skipped: the OS, Python and library checks`);
    expect(links).toBe(`releases/${adopted}\n../default\n`);
    expect(current2).toBe(`releases/${adopted}\n../default\n`);
    expect(rolledBack2!.ckanPath).toBe(before2.ckanPath);
    // Served from the default venv, with the site's own config (the fixture's test-core.ini plugins).
    expect(rolledBack!.ckanPath).toBe(before.ckanPath);
    expect(rolledBack!.extensions).toEqual(['stats', 'text_view']);
    const ledger = await ledgerOf(docker, HOST);
    const i = ledger.findIndex((e) => e.event === 'bad' && e.release === A);
    expect(i, JSON.stringify(ledger)).toBeGreaterThan(0);
    expect(
      ledger
        .slice(0, i)
        .reverse()
        .find((e) => e.event === 'healthy')?.release,
    ).toBe(adopted);
    expect((ledger[i] as { why?: string }).why).toMatch(/^rolled back from by [0-9a-f]{8}$/);

    expect(shipAgainOut).toMatch(new RegExp(`${HOST}: ${adopted} -> ${A}`));
    expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${A}`);
    expect((await served(HTTP_PORT)).ckanPath).toBe(`${ROOT}/releases/${A}/src/ckan/ckan`);
    // The old venv is still where it was.
    expect((await onHost(docker, HOST, `test -x ${ROOT}/default/bin/python && echo there`)).out).toBe(
      'there\n',
    );
    expect(Object.keys(r.byRelease).sort()).toEqual([`${ROOT}/releases/${A}`, oldPath].sort());
    expectAnswersThroughout(r);
  }, 900_000);
});
