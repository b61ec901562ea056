// One agent session per host and operation (README "How a host is driven"), over real SSH to a real
// sandbox host (sshd + sudo + Apache): the channels and sudo runs an operation costs, and a connection
// dropped while a request runs. Own host name and ports (session-a, 2400/8400): runs beside the other
// integration tests, under the second lock slot.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callAgent, installAgent, type AgentHost } from '../../src/deploy/agent.js';
import { environment, loadConfig } from '../../src/config/load.js';
import { SshRemote } from '../../src/remote/ssh.js';
import { resolveTarget } from '../../src/remote/target.js';
import { sandboxDown, sandboxUp } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const HOST = 'session-a';
const ROOT = '/usr/lib/ckan';
let docker: Docker;
let project: TestProject;
let A: string;

/** bin/ckan-release in its own process with CKAN_RELEASE_TRACE=1: its exit, output and HOST's counts. */
function traced(...argv: string[]): Promise<{ code: number; err: string; channels: number; sudo: number }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bin/ckan-release', '--config', project.config, ...argv], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, CKAN_RELEASE_TRACE: '1' },
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => {
      const m = new RegExp(`ckan-release trace: ${HOST}: (\\d+) SSH channels, (\\d+) sudo runs`).exec(err);
      resolve({ code: code ?? -1, err, channels: m ? Number(m[1]) : -1, sudo: m ? Number(m[2]) : -1 });
    });
  });
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  const text = readFileSync(project.config, 'utf8')
    .replaceAll('sandbox-staging', HOST)
    .replace('ssh_port: 2201, http_port: 8001', 'ssh_port: 2400, http_port: 8400');
  writeFileSync(project.config, text);
  const b = await project.cli('--config', project.config, 'build');
  expect(b.code, b.err).toBe(0);
  A = b.out.trim().split('\n').pop()!;
  await sandboxUp(
    docker,
    {
      dir: path.join(project.dir, '.ckan-release/sandbox'),
      hosts: [{ name: HOST, sshPort: 2400, httpPort: 8400 }],
    },
    () => undefined,
  );
  const s = await project.cli('--config', project.config, 'setup', 'staging');
  expect(s.code, s.err).toBe(0);
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('one agent session per host and operation', () => {
  it('status, a ship, and the ship of the release already there: one agent channel and one sudo each (plus hook and restart)', async () => {
    const status = await traced('status', 'staging');
    expect(status.code, status.err).toBe(0);
    expect([status.channels, status.sudo]).toEqual([1, 1]);

    const ship = await traced('ship', 'staging', A);
    expect(ship.code, ship.err).toBe(0);
    expect(await currentOf(docker, HOST)).toBe(`${ROOT}/releases/${A}`);
    // The agent's session (the manifest sent through it too, and removed by it), the before_switch
    // hook (as the owner: sudo -u ckan) and the restart (sudo apachectl graceful): every one a sudo.
    expect([ship.channels, ship.sudo]).toEqual([3, 3]);

    const again = await traced('ship', 'staging', A);
    expect(again.code, again.err).toBe(0);
    expect(again.err).toMatch(/already there/);
    // The agent's session, the hook and the restart: nothing uploaded.
    expect([again.channels, again.sudo]).toEqual([3, 3]);
    // Every agent process has exited with its session.
    const left = await onHost(
      docker,
      HOST,
      "ps -eo args | grep -c '^/usr/bin/python3 .*[c]kan-release/agent/.* serve' || true",
    );
    expect(left.out.trim()).toBe('0');
  });

  it('a connection dropped while a request runs: that request fails and is not sent again; the next call reconnects', async () => {
    const config = loadConfig(project.config);
    const remote = await SshRemote.connect(resolveTarget(environment(config, 'staging'), HOST));
    try {
      const h: AgentHost = { remote, root: ROOT, python: '/usr/bin/python3', sudo: true };
      await installAgent(h);
      await callAgent(h, 'read host facts', 'facts', { root: ROOT });
      // A health check polling a port nothing listens on, for 4 s; the connection is cut after 0.5 s
      // by killing its sshd session process on the host.
      const inFlight = callAgent(h, 'health check', 'health', {
        url: 'http://127.0.0.1:9/none',
        plugins: [],
        timeout: 4,
      });
      // Its failure is expected from now on: the client may see the connection go before the kill's
      // `docker exec` returns, and a rejection nobody handles yet is an unhandled one.
      const lost = expect(inFlight).rejects.toThrow(
        /health check: the connection was lost before the command finished/,
      );
      await new Promise((r) => setTimeout(r, 500));
      const sshd = await onHost(
        docker,
        HOST,
        "ps -eo pid,args | awk '/sshd: deploy@notty/ && !/awk/ {print $1}'",
      );
      expect(sshd.out.trim()).toMatch(/^\d+$/);
      await onHost(docker, HOST, `kill -9 ${sshd.out.trim()}`);
      await lost;
      const facts = await callAgent<{ layout: boolean }>(h, 'read host facts', 'facts', { root: ROOT });
      expect(facts.layout).toBe(true);
      expect(remote.counts.channels).toBe(2);
      // The cut-off health check ran to its end on the host and was not run again.
      await new Promise((r) => setTimeout(r, 4500));
      const agents = await onHost(
        docker,
        HOST,
        "ps -eo args | grep -c '^/usr/bin/python3 .*[c]kan-release/agent/.* serve' || true",
      );
      expect(agents.out.trim()).toBe('1');
    } finally {
      remote.close();
    }
  });
});
