// setup, ship, promote, rollback, status and the lock, against real sandbox hosts (sshd + Apache +
// mod_wsgi in containers); every step asserts the hosts' real state: readlink -f current, the ledger,
// and what Apache serves.
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, ledgerOf, onHost, served } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const HOSTS = ['t-staging', 't-web1', 't-web2'] as const;
type Host = (typeof HOSTS)[number];
const PROD: Host[] = ['t-web1', 't-web2'];

let docker: Docker;
let project: TestProject;
const http: Record<Host, number> = { 't-staging': 0, 't-web1': 0, 't-web2': 0 };
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0

async function ok(...argv: string[]): Promise<string> {
  const r = await project.cli('--config', project.config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

async function expectServing(hosts: Host[], id: string, showcase: string): Promise<void> {
  for (const h of hosts) {
    expect(await currentOf(docker, h), h).toBe(`${ROOT}/releases/${id}`);
    const s = await served(http[h]);
    expect(s.status, h).toBe(200);
    expect(s.ckanPath, h).toBe(`${ROOT}/releases/${id}/src/ckan/ckan`);
    expect(s.showcase, h).toBe(showcase);
    expect(s.extensions, h).toEqual(['showcase', 'spatial_metadata', 'spatial_query', 'scheming_datasets']);
  }
}

async function lastEvents(host: Host, n: number): Promise<string[]> {
  return (await ledgerOf(docker, host)).slice(-n).map((e) => `${e.event} ${e.release ?? ''}`.trim());
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  const ports = await freePorts(6);
  let text = readFileSync(project.config, 'utf8');
  const names: Record<string, Host> = {
    'sandbox-staging': 't-staging',
    'sandbox-web1': 't-web1',
    'sandbox-web2': 't-web2',
  };
  HOSTS.forEach((h, i) => (http[h] = ports[2 * i + 1]!));
  const demoPorts = [
    [2201, 8001],
    [2202, 8002],
    [2203, 8003],
  ];
  demoPorts.forEach(([ssh, web], i) => {
    text = text.replace(
      `ssh_port: ${ssh}, http_port: ${web}`,
      `ssh_port: ${ports[2 * i]}, http_port: ${ports[2 * i + 1]}`,
    );
  });
  for (const [from, to] of Object.entries(names)) text = text.replaceAll(from, to);
  writeFileSync(project.config, text);

  A = (await ok('build')).trim();
  B = (
    await ok(
      '--config',
      project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')),
      'build',
    )
  ).trim();
  const up = await ok('sandbox', 'up');
  expect(up).toMatch(/^t-staging: ssh 127\.0\.0\.1:\d+/m);
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('setup', () => {
  it('prepares the layout on every host, idempotently', async () => {
    const first = await ok('setup', 'staging');
    expect(first).toMatch(/^t-staging: made /m);
    await ok('setup', 'production');
    expect(await ok('setup', 'staging')).toBe('t-staging: already set up\n');
    const r = await onHost(
      docker,
      't-web1',
      `cd ${ROOT} && ls -A && ls shared && stat -c '%U:%G' shared/storage .ckan-release`,
    );
    expect(r.out).toBe('.ckan-release\nreleases\nshared\nstorage\nckan:www-data\nroot:root\n');
  });

  it('--dry-run connects but changes nothing', async () => {
    const before = await onHost(docker, 't-staging', `find ${ROOT} | sort`);
    const out = await ok('setup', 'staging', '--dry-run');
    expect(out).toMatch(/^plan: setup staging \(dry run: nothing is changed\)$/m);
    expect((await onHost(docker, 't-staging', `find ${ROOT} | sort`)).out).toBe(before.out);
  });
});

describe('a corrupted artifact', () => {
  it('is refused before any switch, and leaves nothing behind', async () => {
    // A copy of A's artifact with one byte changed in the middle of its archive.
    const store = path.join(project.dir, 'corrupt-store');
    cpSync(path.join(project.dir, '.ckan-release/artifacts', A), path.join(store, A), { recursive: true });
    const archive = path.join(store, A, 'release.tar.gz');
    const bytes = readFileSync(archive);
    const middle = Math.floor(bytes.length / 2);
    bytes[middle] = bytes[middle]! ^ 0xff;
    writeFileSync(archive, bytes);
    const config = project.variant('corrupt', (t) =>
      t.replace('project: demo-portal', `project: demo-portal\nstore: corrupt-store`),
    );
    const r = await project.cli('--config', config, 'ship', 'staging', A);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /ship staging \S+ failed before any host switched; nothing changed on any host:\n {2}t-staging: (the archive is damaged or truncated|\S+: sha256 [0-9a-f]+ differs from the manifest's [0-9a-f]+)/,
    );
    expect(await currentOf(docker, 't-staging')).toBe('none');
    expect(
      (await onHost(docker, 't-staging', `ls -A ${ROOT}/releases; ls -A ${ROOT}/.ckan-release`)).out,
    ).toBe('agent\ntmp\n');
  });
});

describe('build -> ship staging -> promote production -> rollback -> rollback --to', () => {
  it('ship staging: staging serves A', async () => {
    const out = await ok('ship', 'staging', A.slice(0, 18));
    expect(out).toBe(`t-staging: none -> ${A}\n`);
    await expectServing(['t-staging'], A, '1.1.0');
    expect(await lastEvents('t-staging', 3)).toEqual([`staged ${A}`, `activated ${A}`, `healthy ${A}`]);
    const mode = await onHost(
      docker,
      't-staging',
      `stat -c '%a %U:%G' ${ROOT}/releases/${A}/ckan.ini; readlink ${ROOT}/releases/${A}/storage`,
    );
    expect(mode.out).toBe(`640 ckan:www-data\n${ROOT}/shared/storage\n`);
  });

  it('production refuses an artifact never healthy on staging', async () => {
    const r = await project.cli('--config', project.config, 'ship', 'production', B);
    expect(r.code).toBe(2);
    expect(r.err).toContain(
      `ckan-release: production requires releases healthy on staging first: ${B} was never healthy on t-staging\n  hint: ship it to staging first (or pass --force)\n`,
    );
    for (const h of PROD) expect(await currentOf(docker, h)).toBe('none');
  });

  it('promote: production serves exactly what staging serves', async () => {
    const out = await ok('promote', 'staging', 'production');
    expect(out).toBe(`t-web1: none -> ${A}\nt-web2: none -> ${A}\n`);
    await expectServing(PROD, A, '1.1.0');
  });

  it('then B through staging to production', async () => {
    await ok('ship', 'staging', B);
    await ok('promote', 'staging', 'production');
    await expectServing(['t-staging', ...PROD], B, '1.0.0');
  });

  it('status --json shows current, rollback target and release states', async () => {
    const s = JSON.parse(await ok('--json', 'status', 'production')) as {
      environment: string;
      hosts: {
        host: string;
        current: string;
        rollback_target: string;
        releases: { id: string; state: string }[];
        lock: unknown;
      }[];
    };
    expect(s.environment).toBe('production');
    expect(s.hosts.map((h) => [h.host, h.current, h.rollback_target, h.lock])).toEqual([
      ['t-web1', B, A, null],
      ['t-web2', B, A, null],
    ]);
    expect(s.hosts[0]!.releases.map((r) => [r.id, r.state])).toEqual([
      [A, 'healthy'],
      [B, 'healthy'],
    ]);
  });

  it('rollback production: back to A, B marked bad', async () => {
    const out = await ok('rollback', 'production');
    expect(out).toBe(`t-web1: ${B} -> ${A}\nt-web2: ${B} -> ${A}\n`);
    await expectServing(PROD, A, '1.1.0');
    for (const h of PROD)
      expect(await lastEvents(h, 3)).toEqual([`activated ${A}`, `healthy ${A}`, `bad ${B}`]);
    // B is bad: it is not a rollback target any more.
    const s = JSON.parse(await ok('--json', 'status', 'production')) as {
      hosts: { rollback_target: string | null }[];
    };
    expect(s.hosts.map((h) => h.rollback_target)).toEqual([null, null]);
  });

  it('rollback --to names a release explicitly, even a bad one', async () => {
    await ok('rollback', 'production', '--to', B);
    await expectServing(PROD, B, '1.0.0');
    await ok('rollback', 'production', '--to', A);
    await expectServing(PROD, A, '1.1.0');
  });

  it('rollback --to re-ships a release a host pruned', async () => {
    await onHost(docker, 't-web2', `rm -rf ${ROOT}/releases/${B}`);
    const out = await ok('rollback', 'production', '--to', B);
    expect(out).toBe(`t-web1: ${A} -> ${B}\nt-web2: ${A} -> ${B}\n`);
    await expectServing(PROD, B, '1.0.0');
  });
});

describe('rollback to a release that is not in the local store', () => {
  it('switches to the copies on the hosts, from their RELEASE.json', async () => {
    const store = path.join(project.dir, '.ckan-release/artifacts');
    renameSync(path.join(store, A), path.join(project.dir, 'A-aside'));
    try {
      const r = await project.cli('--config', project.config, 'rollback', 'production', '--to', A);
      expect(r.err).toContain(`${A} is not in the local store: switching to the copies on the hosts`);
      expect(r.code).toBe(0);
      await expectServing(PROD, A, '1.1.0');
      // A short prefix cannot be resolved without the store: bad input, nothing touched.
      const prefix = await project.cli(
        '--config',
        project.config,
        'rollback',
        'production',
        '--to',
        A.slice(0, 16),
      );
      expect(prefix.code).toBe(2);
    } finally {
      renameSync(path.join(project.dir, 'A-aside'), path.join(store, A));
    }
    await ok('rollback', 'production', '--to', B);
    await expectServing(PROD, B, '1.0.0');
  });
});

describe('a release whose health check fails', () => {
  it('is switched back on every host; exit 1; the previous release serves', async () => {
    const before = await Promise.all(PROD.map((h) => currentOf(docker, h)));
    const config = project.variant('unhealthy', (t) =>
      t
        .replace('/api/3/action/status_show', '/api/3/action/status_show_missing')
        .replace('timeout: 30', 'timeout: 3'),
    );
    const r = await project.cli('--config', config, 'ship', 'production', A);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /ship production .* failed after switching; every switched host \(t-web\d, t-web\d\) was switched back and restarted\./,
    );
    expect(r.err).toMatch(/t-web1: .*did not become healthy within 3s: HTTP 404/);
    expect(await Promise.all(PROD.map((h) => currentOf(docker, h)))).toEqual(before);
    await expectServing(PROD, B, '1.0.0');
    for (const h of PROD) expect(await lastEvents(h, 2)).toEqual([`failed ${A}`, `rolled_back ${B}`]);
  });
});

describe('two concurrent ships to one environment', () => {
  it('one wins; the other exits non-zero naming the lock holder', async () => {
    const slow = project.variant('slow', (t) =>
      t.replace('before_switch:\n', 'before_switch:\n      - { run: "sleep 4", once: true }\n'),
    );
    const run = () =>
      new Promise<{ code: number; err: string }>((resolve) => {
        const child = spawn(process.execPath, ['bin/ckan-release', '--config', slow, 'ship', 'staging', A], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let err = '';
        child.stderr.on('data', (c: Buffer) => (err += c.toString()));
        child.on('close', (code) => resolve({ code: code ?? -1, err }));
      });
    const results = await Promise.all([run(), run()]);
    const codes = results.map((r) => r.code).sort();
    expect(codes).toEqual([0, 1]);
    const loser = results.find((r) => r.code === 1)!;
    expect(loser.err).toMatch(/t-staging: locked by \S+@\S+ \(pid \d+, ship staging \S+, since \S+\)/);
    expect(loser.err).toMatch(
      /hint: if that lock is stale \(its process is gone\), run `ckan-release unlock staging`/,
    );
    await expectServing(['t-staging'], A, '1.1.0');
    // Nothing left: no lock, no partial directory.
    expect(
      (await onHost(docker, 't-staging', `ls -A ${ROOT}/.ckan-release ${ROOT}/releases`)).out,
    ).not.toMatch(/lock|\.partial/);
  });
});

describe('prune', () => {
  it('keeps keep_releases, the current release and the rollback target; says what it removed and why', async () => {
    const files = readdirSync(path.join(project.dir, '.ckan-release/artifacts')).filter((n) =>
      /^\d{14}Z/.test(n),
    );
    expect(files).toEqual(expect.arrayContaining([A, B]));
    const config = project.variant('keep1', (t) => t.replace('keep_releases: 3', 'keep_releases: 1'));
    await project.cli('--config', config, 'ship', 'staging', B);
    const r = await onHost(docker, 't-staging', `ls ${ROOT}/releases`);
    // keep 1 but never the current one (B) nor the rollback target (A).
    expect(r.out).toBe(`${A}\n${B}\n`);
  });
});

describe('locks and plans', () => {
  const writeLock = (expires: number) =>
    onHost(
      docker,
      't-staging',
      `mkdir ${ROOT}/.ckan-release/lock && printf '%s' '{"user": "alice", "machine": "laptop", "pid": 4242, "operation": "ship staging X", "token": "t0", "since": 1700000000, "expires": ${expires}}' > ${ROOT}/.ckan-release/lock/owner.json`,
    );

  it('a live lock refuses; unlock removes it and says whose it was', async () => {
    await writeLock(Date.now() / 1000 + 600);
    const refused = await project.cli('--config', project.config, 'ship', 'staging', B);
    expect(refused.code).toBe(1);
    expect(refused.err).toContain(
      't-staging: locked by alice@laptop (pid 4242, ship staging X, since 2023-11-14T22:13:20Z)',
    );
    expect(await ok('unlock', 'staging')).toBe(
      't-staging: removed the lock of alice@laptop (pid 4242, ship staging X, since 2023-11-14T22:13:20Z)\n',
    );
    expect(await ok('unlock', 'staging')).toBe('t-staging: was not locked\n');
  });

  it('an expired lock is taken over, and the output says so', async () => {
    await writeLock(Date.now() / 1000 - 1);
    const r = await project.cli('--config', project.config, 'ship', 'staging', A);
    expect(r.code).toBe(0);
    expect(r.err).toContain(
      't-staging: took over an expired lock: alice@laptop (pid 4242, ship staging X, since 2023-11-14T22:13:20Z)',
    );
    await expectServing(['t-staging'], A, '1.1.0');
  });

  it('a ckan-release killed mid-ship leaves a lock the next run explains, takes over and recovers from', async () => {
    const slow = project.variant('slow-kill', (t) =>
      t.replace('before_switch:\n', 'before_switch:\n      - { run: "sleep 30", once: true }\n'),
    );
    await onHost(docker, 't-staging', `rm -rf ${ROOT}/releases/${B}`); // so the killed run must send it
    const child = spawn(process.execPath, ['bin/ckan-release', '--config', slow, 'ship', 'staging', B], {
      stdio: 'ignore',
    });
    // Wait until it holds the lock and has staged the release (the hook is sleeping), then kill it.
    for (let i = 0; i < 100; i++) {
      const r = await onHost(
        docker,
        't-staging',
        `test -d ${ROOT}/.ckan-release/lock && test -d ${ROOT}/releases/${B} && echo held`,
      );
      if (r.out.trim() === 'held') break;
      await new Promise((res) => setTimeout(res, 200));
    }
    child.kill('SIGKILL');
    await new Promise((res) => child.on('close', res));
    await expectServing(['t-staging'], A, '1.1.0');
    const r = await project.cli('--config', project.config, 'ship', 'staging', B);
    expect(r.code).toBe(0);
    expect(r.err).toMatch(
      new RegExp(
        `t-staging: took over the lock of a process that is gone: \\S+ \\(pid ${child.pid}, ship staging \\S+, since \\S+\\)`,
      ),
    );
    await expectServing(['t-staging'], B, '1.0.0');
    expect(
      (await onHost(docker, 't-staging', `ls -A ${ROOT}/releases ${ROOT}/.ckan-release`)).out,
    ).not.toMatch(/\.partial|lock/);
    await ok('ship', 'staging', A);
  });

  it('ship --dry-run prints the plan and changes nothing on any host', async () => {
    const snapshot = () =>
      onHost(
        docker,
        't-web1',
        `find ${ROOT} -not -path '*/releases/*/*' | sort; cat ${ROOT}/.ckan-release/ledger.jsonl; readlink ${ROOT}/current`,
      );
    const before = (await snapshot()).out;
    const out = await ok('ship', 'production', A, '--dry-run');
    expect(out).toMatch(/^plan: ship \S+ to production \(dry run: nothing is changed\)$/m);
    expect(out).toMatch(new RegExp(`^ {2}t-web1: current ${B} -> ${A}$`, 'm'));
    expect(out).toMatch(/^ {4}transfer: none \(already on the host\)$/m);
    expect(out).toMatch(/^ {4}before_switch: .*db upgrade$/m);
    expect((await snapshot()).out).toBe(before);
  });
});

describe('host keys', () => {
  it('a changed host key aborts before any command runs (exit 2, with the fingerprint and the fix)', async () => {
    const sandbox = path.join(project.dir, '.ckan-release/sandbox');
    const other = path.join(project.dir, 'other_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const fake = readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    const knownHosts = readFileSync(path.join(sandbox, 'known_hosts'), 'utf8')
      .split('\n')
      .map((l) => (l.startsWith('t-staging ') ? `t-staging ${fake}` : l))
      .join('\n');
    writeFileSync(path.join(project.dir, 'changed_known_hosts'), knownHosts);
    writeFileSync(
      path.join(project.dir, 'changed_ssh_config'),
      readFileSync(path.join(sandbox, 'ssh_config'), 'utf8').replaceAll(
        path.join(sandbox, 'known_hosts'),
        path.join(project.dir, 'changed_known_hosts'),
      ),
    );
    const ledgerBefore = await ledgerOf(docker, 't-staging');
    const config = project.variant('changed-key', (t) =>
      t.replaceAll('ssh_config: .ckan-release/sandbox/ssh_config', 'ssh_config: changed_ssh_config'),
    );
    const r = await project.cli('--config', config, 'ship', 'staging', A);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /^ckan-release: t-staging \((?:deploy@)?127\.0\.0\.1:\d+\): HOST KEY CHANGED: offered ssh-ed25519 SHA256:\S+, known_hosts has SHA256:\S+$/m,
    );
    expect(r.err).toMatch(/hint: if the host was reinstalled, remove the old key: ssh-keygen -R 't-staging'/);
    expect(await ledgerOf(docker, 't-staging')).toEqual(ledgerBefore);
  });
});

describe('adopting an old-style install', () => {
  it('setup adopts <root>/default as the first release when there is no current one; it becomes the rollback target', async () => {
    await onHost(
      docker,
      't-staging',
      `rm ${ROOT}/current && mkdir -p ${ROOT}/default/bin && ln -s /usr/bin/python3 ${ROOT}/default/bin/python`,
    );
    const out = await ok('setup', 'staging');
    const adopted = /adopted \/usr\/lib\/ckan\/default as release (\d{14}Z-00000000)/.exec(out)?.[1];
    expect(adopted).toBeDefined();
    expect(await currentOf(docker, 't-staging')).toBe(`${ROOT}/default`);
    await ok('ship', 'staging', A);
    const s = JSON.parse(await ok('--json', 'status', 'staging')) as {
      hosts: { current: string; rollback_target: string }[];
    };
    expect(s.hosts[0]).toMatchObject({ current: A, rollback_target: adopted });
  });
});
