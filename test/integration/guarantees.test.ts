// The guarantees of README "Guarantees", each proven against real sandbox hosts (sshd + Apache +
// mod_wsgi in containers): atomic switch, zero downtime, dropped connections, a killed client, a full
// disk, hostile artifacts, hostile inputs, secrets, host keys, a partially failing fleet.
// Every assertion is about the hosts' real state: readlink of current, the files under the root, the
// ledger, what Apache serves, and (through a ForceCommand wrapper) every command sshd was asked to run.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { AgentRefusal, callAgent, installAgent, type AgentHost } from '../../src/deploy/agent.js';
import { SshRemote } from '../../src/remote/ssh.js';
import { resolveTarget } from '../../src/remote/target.js';
import { freePorts, sandboxDown, sandboxUp } from '../../src/sandbox/sandbox.js';
import { loadConfig, environment } from '../../src/config/load.js';
import { testDocker } from '../support/docker.js';
import {
  clearRecorded,
  CutProxy,
  cutsMade,
  injectFault,
  recordCommands,
  recorded,
  type Fault,
} from '../support/faults.js';
import { currentOf, ledgerOf, onHost, served } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const HOSTS = ['r7-a', 'r7-b', 'r7-c', 'r7-full'] as const;
type Host = (typeof HOSTS)[number];
const PROD: Host[] = ['r7-b', 'r7-c'];
const FLEET: Host[] = ['r7-a', 'r7-b', 'r7-c'];

/**
 * The zero-downtime restart: the apache-graceful recipe, a graceful restart of the mod_wsgi daemon
 * processes only (display-name `ckan`, graceful-timeout=15 in docker/sandbox-host/ckan.conf), which
 * finish their requests in flight before they exit; the recipe waits until they have. A plain
 * `apachectl graceful` drops requests (FACTS.md).
 */
const ZERO_DOWNTIME_RESTART = 'apache-graceful';

let docker: Docker;
let project: TestProject;
const http = {} as Record<Host, number>;
const ssh = {} as Record<Host, number>;
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0
let manifestA: Manifest;

async function ok(...argv: string[]): Promise<string> {
  const r = await project.cli('--config', project.config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** bin/ckan-release as its own process: its pid ends with it, as a user's would. */
function cliProcess(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bin/ckan-release', ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: process.cwd(),
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, out, err }));
  });
}

async function expectServing(hosts: Host[], id: string, showcase: string): Promise<void> {
  for (const h of hosts) {
    expect(await currentOf(docker, h), h).toBe(`${ROOT}/releases/${id}`);
    const s = await served(http[h]);
    expect(s.status, h).toBe(200);
    expect(s.ckanPath, h).toBe(`${ROOT}/releases/${id}/src/ckan/ckan`);
    expect(s.showcase, h).toBe(showcase);
  }
}

/** Names under releases/ and .ckan-release/ that a finished operation must not leave. */
async function leftovers(h: Host): Promise<string> {
  return (
    await onHost(
      docker,
      h,
      `ls -A ${ROOT}/releases | grep '^\\.' ; ls -A ${ROOT}/.ckan-release | grep lock; ls -A ${ROOT}/.ckan-release/tmp; ls -A ${ROOT} | grep '^\\.current'; true`,
    )
  ).out.trim();
}

function agentHost(remote: SshRemote): AgentHost {
  return { remote, root: ROOT, python: '/usr/bin/python3', sudo: true };
}

/** The release staging (r7-a) serves, after shipping A there if it serves none. */
async function stagingCurrent(): Promise<string> {
  if ((await currentOf(docker, 'r7-a')) === 'none') await ok('ship', 'staging', A);
  return (await currentOf(docker, 'r7-a')).split('/').pop()!;
}

async function connect(h: Host, envName = 'fleet'): Promise<SshRemote> {
  const config = loadConfig(project.config);
  return SshRemote.connect(resolveTarget(environment(config, envName), h));
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  const ports = await freePorts(2 * HOSTS.length);
  HOSTS.forEach((h, i) => {
    ssh[h] = ports[2 * i]!;
    http[h] = ports[2 * i + 1]!;
  });
  let text = readFileSync(project.config, 'utf8');
  const names: Record<string, Host> = {
    'sandbox-staging': 'r7-a',
    'sandbox-web1': 'r7-b',
    'sandbox-web2': 'r7-c',
  };
  [2201, 2202, 2203].forEach((p, i) => {
    const h = FLEET[i]!;
    text = text.replace(
      `ssh_port: ${p}, http_port: ${8001 + i}`,
      `ssh_port: ${ssh[h]}, http_port: ${http[h]}`,
    );
  });
  for (const [from, to] of Object.entries(names)) text = text.replaceAll(from, to);
  text += [
    '  fleet:',
    '    hosts: [r7-a, r7-b, r7-c]',
    '    user: deploy',
    '    ssh_config: .ckan-release/sandbox/ssh_config',
    '    host_vars:',
    ...FLEET.map((h) => `      ${h}: { http_port: ${http[h]} }`),
    '    vars: { site_url: "http://fleet.test", site_title: Fleet }',
    '    secrets: secrets/production.yml',
    '  small:',
    '    hosts: [r7-full]',
    '    user: deploy',
    '    ssh_config: .ckan-release/sandbox/ssh_config',
    `    host_vars: { r7-full: { http_port: ${http['r7-full']} } }`,
    '    vars: { site_url: "http://small.test", site_title: Small }',
    '    secrets: secrets/production.yml',
    '',
  ].join('\n');
  writeFileSync(project.config, text);

  A = (await ok('build')).trim();
  B = (
    await ok(
      '--config',
      project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')),
      'build',
    )
  ).trim();
  manifestA = JSON.parse(
    readFileSync(path.join(project.dir, '.ckan-release/artifacts', A, 'manifest.json'), 'utf8'),
  ) as Manifest;
  await sandboxUp(
    docker,
    {
      dir: path.join(project.dir, '.ckan-release/sandbox'),
      hosts: HOSTS.map((h) => ({
        name: h,
        sshPort: ssh[h],
        httpPort: http[h],
        ...(h === 'r7-full' ? { tmpfs: { [ROOT]: fullDiskMountOptions(manifestA) } } : {}),
      })),
    },
    () => undefined,
  );
  for (const h of FLEET) await recordCommands(docker, h);
  await ok('setup', 'fleet');
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

/**
 * A small disk that passes the preflight's free-space check (1.2 x (files + archive) bytes) but cannot
 * hold the release: room for 1,000 inodes, and the release has nearly 2,000 entries. Running out of
 * inodes is ENOSPC, like running out of blocks, and unlike blocks it does not depend on how the
 * filesystem rounds file sizes.
 */
function fullDiskMountOptions(m: Manifest): string {
  const need = m.files.reduce((n, f) => n + f.size, 0) + m.archive.bytes;
  expect(m.files.length).toBeGreaterThan(1500);
  return `size=${Math.ceil((need * 1.25) / 4096) * 4096},nr_inodes=1000,mode=0755`;
}

describe('1. atomic switch', () => {
  it('a reader resolving current in a tight loop never misses it during 100 switches', async () => {
    await ok('ship', 'staging', B);
    await ok('ship', 'staging', A);
    {
      const reader = onHost(
        docker,
        'r7-a',
        `rm -f /tmp/r7-stop; python3 -c '
import os
reads = failures = changes = 0
last = None
while not os.path.exists("/tmp/r7-stop"):
    try:
        os.stat("${ROOT}/current/bin/python")
        target = os.readlink("${ROOT}/current")
        if target != last:
            changes += 1
            last = target
    except OSError:
        failures += 1
    reads += 1
print(reads, failures, changes)
'`,
      );
      await new Promise((r) => setTimeout(r, 300));
      // The switches run the installed agent's switch command on the host itself (as the tool does
      // over SSH, minus the SSH round trip and interpreter start): 100 calls, alternating between the
      // two releases, 20 ms apart so that the reader can see each.
      const agentFile = (await onHost(docker, 'r7-a', `ls ${ROOT}/.ckan-release/agent/*.py`)).out.trim();
      const switches = await onHost(
        docker,
        'r7-a',
        `python3 -c '
import importlib.util, io, sys, time
spec = importlib.util.spec_from_file_location("agent", "${agentFile}")
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
sys.stdout = io.StringIO()
for i in range(100):
    agent.cmd_switch({"root": "${ROOT}", "id": "${B}" if i % 2 == 0 else "${A}", "op": "atomic%d" % i})
    time.sleep(0.02)
'`,
      );
      expect(switches.out).toBe('');
      await onHost(docker, 'r7-a', 'touch /tmp/r7-stop');
      const [reads, failed, changes] = (await reader).out.trim().split(' ').map(Number);
      console.log(`atomic switch: ${reads} reads, ${failed} failures, ${changes} targets seen`);
      expect(failed).toBe(0);
      expect(reads).toBeGreaterThan(10_000);
      // The reader really raced the switches: it saw (nearly) every one.
      expect(changes).toBeGreaterThan(50);
      expect(await currentOf(docker, 'r7-a')).toBe(`${ROOT}/releases/${A}`);
      const activations = (await ledgerOf(docker, 'r7-a')).filter((e) => e.event === 'activated');
      expect(activations.length).toBeGreaterThanOrEqual(100);
    }
  });
});

// Hostile archives, made with Python's tarfile (it writes every kind of entry a hostile tar can hold).
const HOSTILE = String.raw`
import hashlib, io, json, sys, tarfile
case, rid = sys.argv[1], sys.argv[2]
buf = io.BytesIO()
tar = tarfile.open(fileobj=buf, mode="w:gz")
files = []
def add(name, kind="file", data=b"x", target=None, manifest=True, manifest_data=None):
    info = tarfile.TarInfo(name)
    info.mtime = 1700000000
    if kind == "file":
        info.size = len(data); info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    elif kind == "dir":
        info.type = tarfile.DIRTYPE; info.mode = 0o755
        tar.addfile(info)
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE; info.linkname = target
        tar.addfile(info)
    elif kind == "hardlink":
        info.type = tarfile.LNKTYPE; info.linkname = target
        tar.addfile(info)
    elif kind == "chr":
        info.type = tarfile.CHRTYPE; info.devmajor = 1; info.devminor = 3; info.mode = 0o666
        tar.addfile(info)
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE; info.mode = 0o644
        tar.addfile(info)
    if manifest:
        d = manifest_data if manifest_data is not None else data
        files.append({"path": name.lstrip("/"), "type": {"dir": "dir", "symlink": "symlink"}.get(kind, "file"),
                      "mode": "0755" if kind == "dir" else "0644", "size": len(d),
                      "sha256": hashlib.sha256(d).hexdigest() if kind not in ("dir", "symlink") else None,
                      "target": target if kind == "symlink" else None})
add("bin", "dir")
add("bin/ok.txt", data=b"fine")
if case == "dotdot":
    add("bin/../../escape-dotdot")
elif case == "dotdot-deep":
    add("../../../../tmp/r7-escape-dotdot")
elif case == "absolute":
    add("/tmp/r7-escape-absolute")
elif case == "symlink-out":
    add("lib", "symlink", target="/tmp/r7-out")
    add("lib/escape")
elif case == "symlink-up":
    add("up", "symlink", target="../..")
    add("up/escape-up")
elif case == "device":
    add("bin/null", "chr")
elif case == "fifo":
    add("bin/pipe", "fifo")
elif case == "hardlink-out":
    add("bin/passwd", "hardlink", target="/etc/passwd")
elif case == "hardlink-in":
    add("bin/again", "hardlink", target="bin/ok.txt")
elif case == "not-in-manifest":
    add("bin/stowaway", manifest=False)
elif case == "wrong-sha":
    add("bin/app.py", data=b"print('evil')", manifest_data=b"print('good')")
elif case == "wrong-type":
    add("bin/tool", data=b"x")
    files[-1]["type"] = "symlink"; files[-1]["target"] = "/bin/sh"
elif case == "missing":
    files.append({"path": "bin/absent", "type": "file", "mode": "0644", "size": 1,
                  "sha256": hashlib.sha256(b"x").hexdigest(), "target": None})
add("bin/zz-last.txt", data=b"last")
tar.close()
data = buf.getvalue()
archive = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
if case == "truncated":
    data = data[: len(data) * 2 // 3]
sys.stdout.write(json.dumps({"archive": __import__("base64").b64encode(data).decode(),
                             "manifest": {"id": rid, "files": files, "archive": archive}}))
`;

describe('6. hostile artifacts', () => {
  const cases: [string, RegExp][] = [
    ['dotdot', /points outside the release/],
    ['dotdot-deep', /points outside the release/],
    ['absolute', /points outside the release/],
    ['symlink-out', /would be written through a symlink/],
    ['symlink-up', /would be written through a symlink/],
    ['device', /is a device, fifo or hard link: refused/],
    ['fifo', /is a device, fifo or hard link: refused/],
    ['hardlink-out', /is a device, fifo or hard link: refused/],
    ['hardlink-in', /is a device, fifo or hard link: refused/],
    ['not-in-manifest', /is not in the manifest/],
    ['wrong-sha', /sha256 [0-9a-f]+ differs from the manifest's/],
    ['wrong-type', /the archive has a file, the manifest a symlink/],
    ['missing', /manifest entries are missing from the archive, e.g. bin\/absent/],
    ['truncated', /the archive is damaged or truncated: \d+ bytes arrived/],
  ];
  let remote: SshRemote;
  beforeAll(async () => {
    remote = await connect('r7-a');
    await installAgent(agentHost(remote));
    await onHost(docker, 'r7-a', 'install -d -m 0777 /tmp/r7-out');
  });
  afterAll(() => remote?.close());

  it.each(cases)('%s: refused, nothing written outside the partial directory', async (name, why) => {
    const id = '20260101000000Z-0000beef';
    const op = `hostile${name.replace(/[^a-z]/g, '')}`;
    const made = JSON.parse(execFileSync('python3', ['-c', HOSTILE, name, id], { encoding: 'utf8' })) as {
      archive: string;
      manifest: { id: string; files: unknown[] };
    };
    const manifestPath = `${ROOT}/.ckan-release/tmp/${op}-manifest.json`;
    await remote.run(
      'upload',
      `sudo -n -- sh -c 'mkdir -p ${ROOT}/.ckan-release/tmp && cat > ${manifestPath}'`,
      { stdin: Readable.from([JSON.stringify(made.manifest)]) },
    );
    // Everything written from now on, anywhere that matters, is found by -newer.
    await onHost(docker, 'r7-a', 'touch /tmp/r7-marker; sleep 1.1');
    try {
      const call = callAgent(
        agentHost(remote),
        'receive',
        'receive',
        { root: ROOT, id, op, manifest: manifestPath },
        { stdin: Readable.from([Buffer.from(made.archive, 'base64')]) },
      );
      await expect(call).rejects.toThrow(AgentRefusal);
      await expect(call).rejects.toThrow(why);
      expect(((await call.catch((e: unknown) => e)) as AgentRefusal).kind).toBe('bad-artifact');
      const partial = `${ROOT}/releases/.partial-${id}-${op}`;
      const written = await onHost(
        docker,
        'r7-a',
        `find / -xdev -newer /tmp/r7-marker -not -path '${partial}' -not -path '${partial}/*' ` +
          `-not -path '/proc/*' -not -path '/sys/*' -not -path '/dev/*' -not -path '/run/*' ` +
          `-not -path '/var/log/*' -not -path '/var/lib/r7/*' -not -path '/tmp/r7-marker' 2>/dev/null | sort`,
      );
      // Only the releases directory itself changed (the partial directory was made in it).
      expect(written.out.trim()).toBe(`${ROOT}/releases`);
      const inside = await onHost(
        docker,
        'r7-a',
        `find ${partial} \\( -type c -o -type b -o -type p -o -links +1 -type f \\) -print; stat -c %h /etc/passwd; ls -A /tmp/r7-out`,
      );
      expect(inside.out).toBe('1\n');
    } finally {
      // The tool's clean step (what ship runs after a refusal) removes the partial directory.
      await callAgent(agentHost(remote), 'clean', 'clean', { root: ROOT, op });
    }
    expect(await leftovers('r7-a')).toBe('');
  });
});

describe('10. partial fleet', () => {
  it('one of three hosts fails in phase 1: no host switches, nothing is left behind', async () => {
    await ok('ship', 'fleet', A);
    await expectServing(FLEET, A, '1.1.0');
    const config = project.variant('fail-stage', (t) =>
      t.replace('before_switch:\n', 'before_switch:\n      - { run: "test ! -e /tmp/r7-fail-stage" }\n'),
    );
    await onHost(docker, 'r7-c', 'touch /tmp/r7-fail-stage');
    const ledgers = await Promise.all(FLEET.map((h) => ledgerOf(docker, h)));
    try {
      const r = await project.cli('--config', config, 'ship', 'fleet', B);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(
        /ship fleet \S+ failed before any host switched; nothing changed on any host:\n {2}r7-c: before_switch hook/,
      );
    } finally {
      await onHost(docker, 'r7-c', 'rm -f /tmp/r7-fail-stage');
    }
    await expectServing(FLEET, A, '1.1.0');
    for (const [i, h] of FLEET.entries()) {
      const events = (await ledgerOf(docker, h)).slice(ledgers[i]!.length).map((e) => e.event);
      expect(events, h).not.toContain('activated');
      expect(await leftovers(h), h).toBe('');
    }
  });

  it('one of three hosts fails in phase 2: every switched host switches back', async () => {
    const config = project.variant('fail-restart', (t) =>
      t.replace(
        'restart: sudo -n /usr/sbin/apachectl graceful',
        // Fails once: the switch back restarts again, and must succeed.
        'restart: sudo -n /usr/sbin/apachectl graceful && { test ! -e /tmp/r7-fail-restart || { rm /tmp/r7-fail-restart; false; }; }',
      ),
    );
    await onHost(docker, 'r7-b', 'touch /tmp/r7-fail-restart && chown deploy /tmp/r7-fail-restart');
    const ledgers = await Promise.all(FLEET.map((h) => ledgerOf(docker, h)));
    try {
      const r = await project.cli('--config', config, 'ship', 'fleet', B);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(
        /ship fleet \S+ failed after switching; every switched host \(.*r7-b.*\) was switched back and restarted\./,
      );
    } finally {
      await onHost(docker, 'r7-b', 'rm -f /tmp/r7-fail-restart');
    }
    await expectServing(FLEET, A, '1.1.0');
    let switchedBack = 0;
    for (const [i, h] of FLEET.entries()) {
      const events = (await ledgerOf(docker, h))
        .slice(ledgers[i]!.length)
        .map((e) => `${e.event} ${e.release}`);
      if (events.includes(`activated ${B}`)) {
        switchedBack++;
        expect(events.slice(-2), h).toEqual([`failed ${B}`, `rolled_back ${A}`]);
      }
      expect(events, h).not.toContain(`healthy ${B}`);
      expect(await leftovers(h), h).toBe('');
    }
    // The failing host, and whichever others were switched before it failed.
    expect(switchedBack).toBeGreaterThanOrEqual(1);
  });
});

describe('9. host keys', () => {
  it('a changed host key aborts before any command runs on the host', async () => {
    // The recorder does record: a status run leaves its commands.
    for (const h of FLEET) await clearRecorded(docker, h);
    await ok('status', 'fleet');
    for (const h of FLEET) expect((await recorded(docker, h)).length).toBeGreaterThan(0);
    for (const h of FLEET) await clearRecorded(docker, h);

    const sandbox = path.join(project.dir, '.ckan-release/sandbox');
    const other = path.join(project.dir, 'other_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const fake = readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    writeFileSync(
      path.join(project.dir, 'changed_known_hosts'),
      readFileSync(path.join(sandbox, 'known_hosts'), 'utf8')
        .split('\n')
        .map((l) => (l.startsWith('r7-a ') ? `r7-a ${fake}` : l))
        .join('\n'),
    );
    writeFileSync(
      path.join(project.dir, 'changed_ssh_config'),
      readFileSync(path.join(sandbox, 'ssh_config'), 'utf8').replaceAll(
        path.join(sandbox, 'known_hosts'),
        path.join(project.dir, 'changed_known_hosts'),
      ),
    );
    const config = project.variant('changed-key', (t) =>
      t.replaceAll('ssh_config: .ckan-release/sandbox/ssh_config', 'ssh_config: changed_ssh_config'),
    );
    for (const argv of [
      ['ship', 'fleet', B],
      ['status', 'fleet'],
      ['unlock', 'fleet'],
      ['setup', 'fleet'],
    ]) {
      const r = await project.cli('--config', config, ...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(/r7-a \((?:deploy@)?127\.0\.0\.1:\d+\): HOST KEY CHANGED/);
    }
    // Not on r7-a, nor on the others: every connection is made (and checked) before any command.
    for (const h of FLEET) expect(await recorded(docker, h), h).toEqual([]);
  });
});

/** Clients requesting status_show from the given hosts' Apache, in a loop, until stopped. */
function loadGenerator(ports: number[], clients: number, allowed: string[]) {
  let stop = false;
  const stats = { requests: 0, failures: [] as string[], seen: new Map<string, number>() };
  const one = async (port: number) => {
    while (!stop) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/api/3/action/status_show`, {
          signal: AbortSignal.timeout(30_000),
        });
        const text = await res.text();
        stats.requests++;
        if (res.status !== 200) {
          stats.failures.push(`${port}: HTTP ${res.status} ${text.slice(0, 120)}`);
          continue;
        }
        const ckanPath = (JSON.parse(text) as { result: { fixture: { ckan_path: string } } }).result.fixture
          .ckan_path;
        stats.seen.set(ckanPath, (stats.seen.get(ckanPath) ?? 0) + 1);
        if (!allowed.includes(ckanPath)) stats.failures.push(`${port}: served from ${ckanPath}`);
      } catch (e) {
        stats.requests++;
        stats.failures.push(
          `${port}: ${e instanceof Error ? `${e.message} ${String(e.cause ?? '')}` : String(e)}`,
        );
      }
    }
  };
  const running = Promise.all(Array.from({ length: clients }, (_, i) => one(ports[i % ports.length]!)));
  return {
    stats,
    async stop() {
      stop = true;
      await running;
      return stats;
    },
  };
}

/** Waits until every host serves `id` (a daemon process restarted gracefully may finish requests first). */
async function waitServing(hosts: Host[], id: string): Promise<void> {
  for (const h of hosts) {
    for (let i = 0; ; i++) {
      const s = await served(http[h]);
      if (s.ckanPath === `${ROOT}/releases/${id}/src/ckan/ckan`) break;
      if (i > 80) throw new Error(`${h} still serves ${s.ckanPath ?? `HTTP ${s.status}`}, not ${id}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

describe('2. zero downtime', () => {
  it('under continuous load, ship, promote and rollback fail no request; each answer is from the old or the new release', async () => {
    await ok('ship', 'fleet', A);
    for (const h of FLEET) await onHost(docker, h, `rm -rf ${ROOT}/releases/${B}`);
    const config = project.variant('zero-downtime', (t) =>
      t.replace('restart: sudo -n /usr/sbin/apachectl graceful', `restart: ${ZERO_DOWNTIME_RESTART}`),
    );
    const cli = async (...argv: string[]) => {
      const r = await project.cli('--config', config, ...argv);
      if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code}: ${r.err}`);
    };
    const paths = [A, B].map((id) => `${ROOT}/releases/${id}/src/ckan/ckan`);
    const load = loadGenerator(
      FLEET.map((h) => http[h]),
      6,
      paths,
    );
    try {
      await new Promise((r) => setTimeout(r, 1000));
      await cli('ship', 'staging', B);
      await waitServing(['r7-a'], B);
      await cli('promote', 'staging', 'production');
      await waitServing(PROD, B);
      await cli('rollback', 'production');
      await waitServing(PROD, A);
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      await load.stop();
    }
    const { requests, failures, seen } = load.stats;
    console.log(
      `zero downtime: ${requests} requests, ${failures.length} failed; served: ${JSON.stringify([...seen])}`,
    );
    expect(failures.slice(0, 10)).toEqual([]);
    expect(requests).toBeGreaterThan(500);
    // Both releases really were served during the run.
    expect([...seen.keys()].sort()).toEqual([...paths].sort());
    await expectServing(['r7-a'], B, '1.0.0');
    await expectServing(PROD, A, '1.1.0');
  });
});

// Values that would run `touch /tmp/pwned` (or break a command apart) if they ever reached a shell as
// anything but one literal argument.
const EVIL = [
  '$(touch /tmp/pwned)',
  '`touch /tmp/pwned`',
  "'; touch /tmp/pwned; echo '",
  '"; touch /tmp/pwned; echo "',
  'a b\tc',
  'line1\ntouch /tmp/pwned',
  '|| touch /tmp/pwned &',
  '\\$HOME ~ * ? [x] {a,b} > /tmp/pwned',
];

async function pwned(): Promise<string[]> {
  const found: string[] = [];
  for (const h of HOSTS) if ((await onHost(docker, h, 'ls /tmp/pwned 2>/dev/null')).out.trim()) found.push(h);
  if (existsSync('/tmp/pwned')) found.push('this machine');
  return found;
}

describe('7. hostile inputs', () => {
  it('bad names, IDs and hosts on the command line or in the config are refused (exit 2), nothing runs', async () => {
    for (const h of FLEET) await clearRecorded(docker, h);
    const argvs = [
      ['ship', 'staging; touch /tmp/pwned', A],
      ['ship', '$(touch /tmp/pwned)', A],
      ['ship', 'staging', '$(touch /tmp/pwned)'],
      ['ship', 'staging', `${A}; touch /tmp/pwned`],
      ['ship', 'staging', `${A}\ntouch /tmp/pwned`],
      ['rollback', 'staging', '--to', "'; touch /tmp/pwned #"],
      ['promote', 'staging', 'production`touch /tmp/pwned`'],
      ['unlock', 'staging\ntouch /tmp/pwned'],
    ];
    for (const argv of argvs) {
      const r = await project.cli('--config', project.config, ...argv);
      expect(r.code, JSON.stringify(argv)).toBe(2);
    }
    const configs: [string, (t: string) => string, RegExp][] = [
      ['env-name', (t) => t.replace('  small:\n', '  "small; touch /tmp/pwned":\n'), /environments/],
      ['host', (t) => t.replace('hosts: [r7-full]', 'hosts: ["r7-full; touch /tmp/pwned"]'), /hosts/],
      ['host-space', (t) => t.replace('hosts: [r7-full]', 'hosts: ["r7-full $(touch /tmp/pwned)"]'), /hosts/],
      ['user', (t) => t.replace('user: deploy', 'user: "deploy;touch /tmp/pwned"'), /user/],
      ['owner', (t) => t.replace('owner: ckan', 'owner: "ckan $(touch /tmp/pwned)"'), /owner/],
      ['config-file', (t) => t.replace('file: ckan.ini', 'file: "../../../tmp/pwned"'), /file/],
      [
        'shared',
        (t) => t.replace('{ path: storage, link: storage }', '{ path: "../../tmp", link: storage }'),
        /shared/,
      ],
      [
        'var-name',
        (t) => t.replace('site_title: Small', '"x$(touch /tmp/pwned)": 1, site_title: Small'),
        /vars/,
      ],
      ['root', (t) => t.replace('root: /usr/lib/ckan', 'root: "relative/$(touch /tmp/pwned)"'), /root/],
    ];
    for (const [name, edit, where] of configs) {
      const r = await project.cli('--config', project.variant(`evil-${name}`, edit), 'ship', 'small', A);
      expect(r.code, name).toBe(2);
      expect(r.err, name).toMatch(where);
    }
    for (const h of FLEET) expect(await recorded(docker, h), h).toEqual([]);
    expect(await pwned()).toEqual([]);
  });

  it('template values with metacharacters reach hooks, restart and the config file only as literal text', async () => {
    for (const h of FLEET) await clearRecorded(docker, h);
    const vars = EVIL.map((v, i) => `      evil${i}: ${JSON.stringify(v)}`).join('\n');
    const printf = EVIL.map((_, i) => `{{ evil${i} }}`).join(' ');
    // (A newline in a config value is left out: the config file is not a shell, but a newline would
    // start a new ini line, which is the template author's business.)
    const TITLE = EVIL.filter((v) => !v.includes('\n')).join(' | ');
    const config = project.variant('evil-values', (t) =>
      t
        .replace(
          '    vars: { site_url: "http://fleet.test", site_title: Fleet }',
          `    vars:\n      site_url: "http://fleet.test"\n      site_title: ${JSON.stringify(TITLE)}\n${vars}`,
        )
        .replace(
          'before_switch:\n',
          `before_switch:\n      - { run: ${JSON.stringify(`printf '%s\\n' ${printf} > /tmp/r7-hook-{{ host }}`)} }\n`,
        )
        .replace(
          'restart: sudo -n /usr/sbin/apachectl graceful',
          `restart: ${JSON.stringify(`printf '%s\\n' ${printf} > /tmp/r7-restart-{{ host }} && sudo -n /usr/sbin/apachectl graceful`)}`,
        ),
    );
    const r = await project.cli('--config', config, 'ship', 'fleet', B);
    expect(await pwned()).toEqual([]);
    expect(r.code, r.err).toBe(0);
    await waitServing(FLEET, B);
    for (const h of FLEET) {
      // Each value arrived as one argument, byte for byte.
      const hook = await onHost(docker, h, `cat /tmp/r7-hook-${h}; echo ===; cat /tmp/r7-restart-${h}`);
      expect(hook.out, h).toBe(`${EVIL.join('\n')}\n===\n${EVIL.join('\n')}\n`);
      const ini = await onHost(docker, h, `grep '^ckan.site_title' ${ROOT}/current/ckan.ini`);
      expect(ini.out, h).toBe(`ckan.site_title = ${TITLE}\n`);
      // Every command sshd ran is one of the tool's: the agent, its install, the manifest, a hook or
      // the restart; none was split by a value.
      for (const c of await recorded(docker, h)) {
        expect(c, h).toMatch(
          /^(sudo -n -- (\/usr\/bin\/python3|python3) \/usr\/lib\/ckan\/\.ckan-release\/agent\/[0-9a-f]{12}\.py [a-z]+ '\{.*\}'|sudo -n -- sh -c '(test -f|mkdir -p) .*'|sudo -n -- rm -f \/usr\/lib\/ckan\/\.ckan-release\/tmp\/[0-9a-f]+-manifest\.json|sudo -n -u ckan -- sh -c 'cd \/usr\/lib\/ckan\/releases\/[0-9Za-f-]+ && .*'|sh -c 'printf .*apachectl graceful')$/s,
        );
      }
    }
    expect(await pwned()).toEqual([]);
  });
});

describe('3. dropped connection', () => {
  // Each point cuts the SSH connection of a ship to staging (r7-a) once: the host must keep serving its
  // previous release, the next ship must succeed (taking the lock back if it was left), and after it
  // no partial directory, lock or temporary file may be left.
  type Point = { name: string; fault?: Fault; proxyAt?: number; shipped: 'absent' | 'present' };
  let proxy: CutProxy;
  let config: string;
  let base = 0;
  const archive = () => manifestA.archive.bytes;
  const points: Point[] = [
    { name: 'upload, early', proxyAt: 0.1, shipped: 'absent' },
    { name: 'upload, late', proxyAt: 0.9, shipped: 'absent' },
    {
      name: 'unpack (the answer to receive is lost)',
      fault: { match: ' receive ', when: 'after' },
      shipped: 'absent',
    },
    {
      name: 'finalize and config (its answer is lost)',
      fault: { match: ' finalize ', when: 'after' },
      shipped: 'absent',
    },
    {
      name: 'verify of a release already there',
      fault: { match: ' verify ', when: 'before' },
      shipped: 'present',
    },
    { name: 'before_switch hook', fault: { match: 'r7-hook', when: 'after' }, shipped: 'absent' },
    {
      name: 'lock renewal before the switch',
      fault: { match: ' lock ', nth: 2, when: 'after' },
      shipped: 'absent',
    },
    {
      name: 'switch (done, its answer lost)',
      fault: { match: ' switch ', when: 'after' },
      shipped: 'absent',
    },
    { name: 'restart', fault: { match: 'apachectl graceful', when: 'after' }, shipped: 'absent' },
    { name: 'health check', fault: { match: ' health ', when: 'before' }, shipped: 'absent' },
  ];

  beforeAll(async () => {
    proxy = new CutProxy(ssh['r7-a']);
    const port = await proxy.listen();
    const sandbox = path.join(project.dir, '.ckan-release/sandbox');
    // r7-a through the proxy (same host key alias, so known_hosts still applies).
    writeFileSync(
      path.join(project.dir, 'proxied_ssh_config'),
      readFileSync(path.join(sandbox, 'ssh_config'), 'utf8').replace(
        new RegExp(`(Host r7-a\\n\\s+HostName 127\\.0\\.0\\.1\\n\\s+Port )${ssh['r7-a']}`),
        `$1${port}`,
      ),
    );
    expect(readFileSync(path.join(project.dir, 'proxied_ssh_config'), 'utf8')).toContain(`Port ${port}`);
    // (A cheap before_switch hook instead of the demo's db upgrade: twenty ships here.)
    config = project.variant('proxied', (t) =>
      t
        .replace(
          /(staging:\n\s+hosts: \[r7-a\]\n\s+user: deploy\n\s+)ssh_config: \.ckan-release\/sandbox\/ssh_config/,
          '$1ssh_config: proxied_ssh_config',
        )
        .replace(
          /- \{ run: '\{\{ release \}\}\/bin\/ckan .* db upgrade', once: true \}/,
          "- { run: 'test -d storage # r7-hook' }",
        ),
    );
    expect(readFileSync(config, 'utf8')).toContain('# r7-hook');
    expect(readFileSync(config, 'utf8')).toContain('ssh_config: proxied_ssh_config');
    // What a ship sends before the archive: the SSH handshake, the agent, commands and the manifest.
    const agent = readFileSync('assets/host/ckan_release_host.py').length;
    base = agent + JSON.stringify(manifestA).length + 64 * 1024;
  });
  afterAll(() => proxy?.close());

  it.each(points)(
    'cut at $name: previous release serves; the next ship succeeds and leaves nothing',
    async (p) => {
      const before = await stagingCurrent();
      const next = before === A ? B : A;
      if (p.shipped === 'absent') await onHost(docker, 'r7-a', `rm -rf ${ROOT}/releases/${next}`);
      // (present: the point before the previous one shipped it, and keep_releases is 3)
      else
        expect((await onHost(docker, 'r7-a', `test -d ${ROOT}/releases/${next} && echo yes`)).out).toBe(
          'yes\n',
        );
      if (p.fault) await injectFault(docker, 'r7-a', p.fault);
      if (p.proxyAt !== undefined) {
        // Cut in the upload of the whole archive: with the kept manifests gone, the host has no
        // release to take files from, so no delta (a few kB) replaces the archive.
        await onHost(docker, 'r7-a', `rm -rf ${ROOT}/.ckan-release/manifests`);
        proxy.cutAfter(base + Math.floor(p.proxyAt * archive()));
      }
      const cuts = proxy.cuts;

      const r = await cliProcess('--config', config, 'ship', 'staging', next);
      expect(r.code, r.err).toBe(1);
      if (p.fault) expect(await cutsMade(docker, 'r7-a')).toHaveLength(1);
      else expect(proxy.cuts).toBe(cuts + 1);
      expect(r.err).toMatch(/connection was lost|connection is closed|cannot connect/);
      // The host serves what it served before.
      expect(await currentOf(docker, 'r7-a')).toBe(`${ROOT}/releases/${before}`);
      await waitServing(['r7-a'], before);

      const again = await project.cli('--config', config, 'ship', 'staging', next);
      expect(again.code, again.err).toBe(0);
      await expectServing(['r7-a'], next, next === A ? '1.1.0' : '1.0.0');
      expect(await leftovers('r7-a')).toBe('');
    },
  );
});

describe('4. killed client', () => {
  it('SIGKILL mid-upload: status explains the stale lock; the next ship takes it over and cleans up', async () => {
    const before = await stagingCurrent();
    const next = before === A ? B : A;
    await onHost(docker, 'r7-a', `rm -rf ${ROOT}/releases/${next}`);
    const child = spawn(
      process.execPath,
      ['bin/ckan-release', '--config', project.config, 'ship', 'staging', next],
      {
        stdio: 'ignore',
      },
    );
    for (let i = 0; i < 200; i++) {
      const r = await onHost(
        docker,
        'r7-a',
        `ls -A ${ROOT}/releases | grep -c '^.partial-' ; find ${ROOT}/releases -path '*/.partial-*' | wc -l`,
      );
      const [partials, files] = r.out.trim().split('\n').map(Number);
      if (partials! > 0 && files! > 50) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    child.kill('SIGKILL');
    await new Promise((res) => child.on('close', res));
    expect((await onHost(docker, 'r7-a', `ls -A ${ROOT}/releases | grep '^.partial-'`)).out).toMatch(
      /^\.partial-/,
    );
    await expectServing(['r7-a'], before, before === A ? '1.1.0' : '1.0.0');

    const status = await ok('status', 'staging');
    expect(status).toMatch(
      new RegExp(
        `lock: +\\S+ \\(pid ${child.pid}, ship staging \\S+, since \\S+\\) - its process is gone: the next operation from this machine takes it over`,
      ),
    );
    const json = JSON.parse(await ok('--json', 'status', 'staging')) as { hosts: { lock_stale: boolean }[] };
    expect(json.hosts[0]!.lock_stale).toBe(true);

    const r = await project.cli('--config', project.config, 'ship', 'staging', next);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(
      new RegExp(`r7-a: took over the lock of a process that is gone: \\S+ \\(pid ${child.pid},`),
    );
    expect(r.err).toMatch(/r7-a: pruned \.partial-\S+: partial directory left by an interrupted operation/);
    expect(r.err).toMatch(
      /r7-a: pruned \.ckan-release\/tmp\/[0-9a-f]+-manifest\.json: temporary file left by an interrupted operation/,
    );
    await expectServing(['r7-a'], next, next === A ? '1.1.0' : '1.0.0');
    expect(await leftovers('r7-a')).toBe('');
  });
});

describe('5. full disk', () => {
  it('the disk fills while unpacking: a clean failure, current untouched, the partial directory removed', async () => {
    await ok('setup', 'small');
    // A release that is "current" on the small disk (a stand-in: Apache is not asked here).
    const old = '20200101000000Z-00000001';
    await onHost(
      docker,
      'r7-full',
      `mkdir -p ${ROOT}/releases/${old}/bin && ln -s releases/${old} ${ROOT}/current && chown -R deploy ${ROOT}/releases/${old}`,
    );
    const free = async () =>
      Number((await onHost(docker, 'r7-full', `df --output=avail -B1 ${ROOT} | tail -1`)).out);
    const freeBefore = await free();
    const ledgerBefore = await ledgerOf(docker, 'r7-full');
    const r = await project.cli('--config', project.config, 'ship', 'small', A);
    expect(r.code, r.err).toBe(1);
    expect(r.err).toMatch(
      /ship small \S+ failed before any host switched; nothing changed on any host:\n {2}r7-full: no space left on the host/,
    );
    expect(await currentOf(docker, 'r7-full')).toBe(`${ROOT}/releases/${old}`);
    expect((await onHost(docker, 'r7-full', `ls -A ${ROOT}/releases`)).out).toBe(`${old}\n`);
    expect(await leftovers('r7-full')).toBe('');
    expect(await ledgerOf(docker, 'r7-full')).toEqual(ledgerBefore);
    expect(await free()).toBe(freeBefore);
  });

  it('too little space for the release: refused before anything is sent', async () => {
    await onHost(
      docker,
      'r7-full',
      `fallocate -l 20M ${ROOT}/shared/filler || dd if=/dev/zero of=${ROOT}/shared/filler bs=1M count=20`,
    );
    try {
      const r = await project.cli('--config', project.config, 'ship', 'small', A);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(
        /r7-full: preflight: \d+ bytes free under \/usr\/lib\/ckan, the release needs about \d+/,
      );
      expect((await onHost(docker, 'r7-full', `ls -A ${ROOT}/releases`)).out).toBe(
        '20200101000000Z-00000001\n',
      );
      expect(await leftovers('r7-full')).toBe('');
    } finally {
      await onHost(docker, 'r7-full', `rm -f ${ROOT}/shared/filler`);
    }
  });
});

describe('8. secrets', () => {
  it('vault secrets appear in no output, log, artifact, store, ledger or command; the config is 0640 ckan:www-data', async () => {
    const tag = Math.random().toString(16).slice(2, 10);
    const values = [`dbpw-${tag}-s3cr3t`, `beaker-${tag}-s3cr3t`];
    const secretsFile = path.join(project.dir, 'secrets/vaulted.yml');
    const passwordFile = path.join(project.dir, 'vault-password');
    writeFileSync(passwordFile, `vault-pw-${tag}\n`, { mode: 0o600 });
    writeFileSync(secretsFile, `db_password: ${values[0]}\nbeaker_secret: ${values[1]}\n`);
    // The real ansible-vault encrypts (what operators' playbook projects hold); ckan-release decrypts.
    const vault = spawnSync(
      'ansible-vault',
      ['encrypt', '--vault-password-file', passwordFile, secretsFile],
      {
        stdio: 'ignore',
      },
    );
    if (vault.error)
      throw new Error(
        `this test needs ansible-vault (${vault.error.message}): apt-get install ansible-core (.ci/run installs it)`,
      );
    expect(vault.status).toBe(0);
    expect(readFileSync(secretsFile, 'utf8')).toMatch(/^\$ANSIBLE_VAULT;1\.1;AES256/);
    const config = project.variant('vaulted', (t) =>
      t.replace(/(fleet:[\s\S]*?secrets: )secrets\/production\.yml/, '$1secrets/vaulted.yml'),
    );
    const failing = project.variant('vaulted-unhealthy', (t) =>
      t
        .replace(/(fleet:[\s\S]*?secrets: )secrets\/production\.yml/, '$1secrets/vaulted.yml')
        .replace('/api/3/action/status_show', '/api/3/action/status_show_missing')
        .replace('timeout: 30', 'timeout: 2'),
    );
    const outputs: string[] = [];
    const run = async (cfg: string, ...argv: string[]) => {
      const r = await project.cli('--config', cfg, '--vault-password-file', passwordFile, ...argv);
      outputs.push(`$ ${argv.join(' ')} (exit ${r.code})\n${r.out}${r.err}`);
      return { code: r.code, toString: () => outputs.at(-1)! };
    };
    // Each output format, on success and failure (with --debug's stack traces too).
    const shipA = await run(config, 'ship', 'fleet', A);
    expect(shipA.code, String(shipA)).toBe(0);
    const shipB = await run(config, '--json', 'ship', 'fleet', B);
    expect(shipB.code, String(shipB)).toBe(0);
    for (const json of [[], ['--json']]) {
      expect((await run(config, ...json, 'ship', 'fleet', A, '--dry-run')).code).toBe(0);
      expect((await run(failing, ...json, '--debug', 'ship', 'fleet', A)).code).toBe(1);
      expect((await run(config, ...json, 'status', 'fleet')).code).toBe(0);
      expect((await run(config, ...json, 'config', 'fleet')).code).toBe(0);
    }
    expect((await run(config, 'rollback', 'fleet')).code).toBe(0);
    // The rendered config does hold them (so the grep below would find them if they leaked).
    const ini = await onHost(docker, 'r7-a', `cat ${ROOT}/current/ckan.ini`);
    for (const v of values) expect(ini.out).toContain(v);

    const leaks: string[] = [];
    for (const v of values) {
      for (const o of outputs) if (o.includes(v)) leaks.push(`output of ${o.split('\n')[0]}`);
      // The project: artifact store (archives, manifests, build logs), sandbox files, configs (not the
      // fixture repositories and the build caches: secrets are never given to a build).
      try {
        execFileSync(
          'grep',
          ['-rl', '--binary-files=text', '--exclude-dir=.fixtures', '--exclude-dir=cache', v, project.dir],
          { encoding: 'utf8' },
        )
          .split('\n')
          .filter(Boolean)
          .forEach((f) => leaks.push(f));
      } catch {
        // grep exits 1 when nothing matches
      }
      for (const h of FLEET) {
        const found = await onHost(
          docker,
          h,
          `grep -rl --binary-files=text ${v} /usr/lib/ckan /var/log /var/lib/r7 /tmp /home /root /etc /var/lib/ckan 2>/dev/null | grep -v '^${ROOT}/releases/[^/]*/ckan.ini$'; true`,
        );
        found.out
          .split('\n')
          .filter(Boolean)
          .forEach((f) => leaks.push(`${h}:${f}`));
      }
      // Every archive in the store, uncompressed.
      for (const id of [A, B]) {
        const archive = path.join(project.dir, '.ckan-release/artifacts', id, 'release.tar.gz');
        const text = execFileSync(
          'sh',
          ['-c', `gzip -dc '${archive}' | grep -c --binary-files=text '${v}' || true`],
          {
            encoding: 'utf8',
          },
        );
        if (text.trim() !== '0') leaks.push(`${archive} (inside)`);
      }
    }
    expect(leaks).toEqual([]);
    for (const h of FLEET) {
      const modes = await onHost(docker, h, `stat -c '%a %U:%G' ${ROOT}/releases/*/ckan.ini | sort -u`);
      expect(modes.out, h).toBe('640 ckan:www-data\n');
    }
  });
});
