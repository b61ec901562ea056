// Sandbox hosts on the real engine: the system OpenSSH client logs in with real host key checking, and a
// manual deploy of a demo artifact (upload, config, atomic switch, apachectl graceful) is served by
// Apache + mod_wsgi in daemon mode.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LABEL_DIR,
  LABEL_HOST,
  LABEL_SANDBOX,
  containerName,
  freePorts,
  sandboxDown,
  sandboxPaths,
  sandboxUp,
  type SandboxHost,
} from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { testProject } from '../support/project.js';

const say = (line: string) => process.stderr.write(`[sandbox-test] ${line}\n`);

const PLUGINS = ['showcase', 'spatial_metadata', 'spatial_query', 'scheming_datasets'];

let docker: Docker;
let dir: string;
let hosts: SandboxHost[];
const tag = `t${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;

/** ssh -F <dir>/ssh_config <host> <command>, stdin from a file if given. */
function ssh(
  host: string,
  command: string,
  opts: { stdinFile?: string; extra?: string[] } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const fd = opts.stdinFile ? openSync(opts.stdinFile, 'r') : 'ignore';
    const child = spawn('ssh', ['-F', sandboxPaths(dir).sshConfig, ...(opts.extra ?? []), host, command], {
      stdio: [fd, 'pipe', 'pipe'],
    });
    if (typeof fd === 'number') closeSync(fd);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** An artifact of the example project, built in a throwaway copy of it (fixtures made there). */
async function demoArtifact(): Promise<{ id: string; tarball: string }> {
  const project = await testProject();
  const r = await project.cli('--config', project.config, 'build');
  if (r.code !== 0) throw new Error(`building the example project failed:\n${r.err}`);
  const id = r.out.trim().split('\n').pop()!;
  return { id, tarball: path.join(project.dir, '.ckan-release/artifacts', id, 'release.tar.gz') };
}

beforeAll(async () => {
  docker = await testDocker();
  dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-sandbox-test-'));
  const [a, b, c, d] = (await freePorts(4)) as [number, number, number, number];
  const started = Date.now();
  hosts = await sandboxUp(
    docker,
    {
      dir,
      hosts: [
        { name: `${tag}-a`, sshPort: a, httpPort: b },
        { name: `${tag}-b`, sshPort: c, httpPort: d },
      ],
    },
    say,
  );
  say(`sandbox up (2 hosts, image included): ${((Date.now() - started) / 1000).toFixed(1)} s`);
}, 900_000);

afterAll(async () => {
  if (docker && dir) await sandboxDown(docker, { dir }, say).catch(() => undefined);
  if (dir) rmSync(dir, { recursive: true, force: true });
}, 120_000);

describe('sandbox hosts', () => {
  it('writes the key pair, known_hosts, ssh_config and hosts.json', () => {
    const p = sandboxPaths(dir);
    for (const f of [p.identityFile, p.publicKey, p.knownHosts, p.sshConfig, p.hostsJson])
      expect(existsSync(f), f).toBe(true);
    const known = readFileSync(p.knownHosts, 'utf8');
    const config = readFileSync(p.sshConfig, 'utf8');
    for (const h of hosts) {
      expect(known).toMatch(new RegExp(`^${h.name} ssh-ed25519 AAAA\\S+$`, 'm'));
      expect(known).toMatch(new RegExp(`^\\[127\\.0\\.0\\.1\\]:${h.sshPort} ssh-ed25519 AAAA\\S+$`, 'm'));
      expect(config).toContain(
        `Host ${h.name}\n    HostName 127.0.0.1\n    Port ${h.sshPort}\n    User deploy\n`,
      );
      expect(config).toContain(`HostKeyAlias ${h.name}\n`);
    }
    expect(config).toContain('StrictHostKeyChecking yes');
    expect(JSON.parse(readFileSync(p.hostsJson, 'utf8'))).toEqual(hosts);
  });

  it('lets the OpenSSH client in as deploy, with passwordless sudo and a verified host key', async () => {
    for (const h of hosts) {
      const r = await ssh(h.name, 'id -un; sudo -n true && echo sudo-ok');
      expect(r.stderr).not.toMatch(/warning|Permanently added/i);
      expect(r.code).toBe(0);
      expect(r.stdout.trim().split('\n')).toEqual(['deploy', 'sudo-ok']);
    }
    // The key really is checked: with no known host key, StrictHostKeyChecking refuses.
    const refused = await ssh(hosts[0]!.name, 'true', { extra: ['-o', 'UserKnownHostsFile=/dev/null'] });
    expect(refused.code).toBe(255);
    expect(refused.stderr).toMatch(/Host key verification failed/);
    // And each host has its own key.
    const keys = readFileSync(sandboxPaths(dir).knownHosts, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[2]);
    expect(new Set(keys).size).toBe(hosts.length);
  });

  it('runs one labelled container per host, with host networking and no restart policy', async () => {
    for (const h of hosts) {
      const info = await docker.getContainer(h.container).inspect();
      expect(info.Name).toBe(`/${containerName(h.name)}`);
      expect(info.State.Running).toBe(true);
      expect(info.Config.Labels).toMatchObject({
        [LABEL_SANDBOX]: '1',
        [LABEL_HOST]: h.name,
        [LABEL_DIR]: sandboxPaths(dir).dir,
        'org.ckan-release.sandbox-host': '1',
      });
      expect(info.HostConfig.NetworkMode).toBe('host');
      expect(info.HostConfig.RestartPolicy?.Name).toBe('no');
    }
  });

  it('has Apache answering, but not 200, before any release is current', async () => {
    for (const h of hosts) {
      const r = await fetch(`http://127.0.0.1:${h.httpPort}/api/3/action/status_show`);
      await r.arrayBuffer();
      expect(r.status).not.toBe(200);
      expect(r.status).toBeGreaterThanOrEqual(500);
    }
  });

  it('refuses a port that is already in use, naming it, and touches nothing', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    const [other] = (await freePorts(1)) as [number];
    const otherDir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-sandbox-test-'));
    try {
      await expect(
        sandboxUp(
          docker,
          { dir: otherDir, hosts: [{ name: `${tag}-c`, sshPort: port, httpPort: other }] },
          say,
        ),
      ).rejects.toThrow(`port ${port} (SSH of host ${tag}-c) is already in use on 127.0.0.1`);
      // A port of a running sandbox host is named with its container.
      await expect(
        sandboxUp(
          docker,
          { dir: otherDir, hosts: [{ name: `${tag}-c`, sshPort: other, httpPort: hosts[1]!.httpPort }] },
          say,
        ),
      ).rejects.toThrow(`by sandbox container ${containerName(hosts[1]!.name)}`);
      const list = await docker.listContainers({
        all: true,
        filters: { label: [`${LABEL_DIR}=${otherDir}`] },
      });
      expect(list).toEqual([]);
    } finally {
      blocker.close();
      rmSync(otherDir, { recursive: true, force: true });
    }
  });

  it('serves a manually deployed demo release through mod_wsgi after an atomic switch and a graceful', async () => {
    const { id, tarball } = await demoArtifact();
    const release = `/usr/lib/ckan/releases/${id}`;
    await Promise.all(
      hosts.map(async (h) => {
        const up = await ssh(h.name, `mkdir -p ${release} && tar -xzf - -C ${release}`, {
          stdinFile: tarball,
        });
        expect(up.stderr).toBe('');
        expect(up.code).toBe(0);
        const ini = [
          '[app:main]',
          `ckan.site_url = http://127.0.0.1:${h.httpPort}`,
          `ckan.plugins = ${PLUGINS.join(' ')}`,
        ].join('\\n');
        const sw = await ssh(
          h.name,
          `set -e; printf '${ini}\\n' > ${release}/ckan.ini; cd /usr/lib/ckan; ` +
            `ln -s releases/${id} tmp-current && mv -T tmp-current current; sudo -n apachectl graceful`,
        );
        expect(sw.code, sw.stderr).toBe(0);

        const url = `http://127.0.0.1:${h.httpPort}/api/3/action/status_show`;
        const deadline = Date.now() + 30_000;
        let last = '';
        let body:
          { result: { extensions: string[]; site_url: string; fixture: { ckan_path: string } } } | undefined;
        while (Date.now() < deadline) {
          try {
            const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
            const text = await r.text();
            last = `${r.status} ${text.slice(0, 200)}`;
            if (r.status === 200) {
              body = JSON.parse(text) as typeof body;
              break;
            }
          } catch (e) {
            last = (e as Error).message;
          }
          await new Promise((r) => setTimeout(r, 500));
        }
        expect(body, `status_show on ${h.name} never answered 200; last: ${last}`).toBeDefined();
        expect(body!.result.extensions).toEqual(PLUGINS);
        expect(body!.result.site_url).toBe(`http://127.0.0.1:${h.httpPort}`);
        expect(body!.result.fixture.ckan_path.startsWith(`${release}/`)).toBe(true);
      }),
    );
  }, 600_000);

  it('sandboxDown removes the containers of its sandbox and keeps the keys', async () => {
    const removed = await sandboxDown(docker, { dir }, say);
    expect(removed.sort()).toEqual(hosts.map((h) => containerName(h.name)).sort());
    const left = await docker.listContainers({
      all: true,
      filters: { label: [`${LABEL_SANDBOX}=1`, `${LABEL_DIR}=${sandboxPaths(dir).dir}`] },
    });
    expect(left).toEqual([]);
    const byName = await docker.listContainers({ all: true, filters: { name: [`${tag}-`] } });
    expect(byName).toEqual([]);
    expect(existsSync(sandboxPaths(dir).identityFile)).toBe(true);
    expect(existsSync(sandboxPaths(dir).hostsJson)).toBe(false);
  });
});
