// SSH as OpenSSH users have it, against real sandbox hosts: a bastion plus two CKAN hosts reachable
// ONLY through it. The bastion container runs with --network none (a loopback of its own) and the two
// targets share that private loopback (--network container:<bastion>), each sshd/Apache on its own
// port there. Nothing of theirs listens on the machine's 127.0.0.1: the test exposes the bastion's sshd
// alone, through a relay of its own (a Node server on 127.0.0.1 that pipes each connection into
// `docker exec -i <bastion> python3 relay.py`). ckan-release runs as a separate process with its own
// HOME: ~/.ssh/config with aliases and ProxyJump (one and two hops), keys only in a real ssh-agent, and
// ckan-release.yml names nothing but the aliases.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { containerName, freePorts, sandboxDown, sandboxUp } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const BASTION = 's5-bastion';
const WEB1 = 's5-web1';
const WEB2 = 's5-web2';
const PASSPHRASE = 'correct horse battery staple';

// Copies bytes between its stdin/stdout and 127.0.0.1:PORT inside the container, half-closes included.
const RELAY = `
import os, socket, sys, threading
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
def up():
    while True:
        d = os.read(0, 65536)
        if not d:
            break
        s.sendall(d)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
t = threading.Thread(target=up)
t.daemon = True
t.start()
while True:
    d = s.recv(65536)
    if not d:
        break
    while d:
        n = os.write(1, d)
        d = d[n:]
`;

let docker: Docker;
let project: TestProject;
let sandboxDir: string;
let home: string;
let agentSock: string;
let agent: ChildProcess | undefined;
let relay: net.Server | undefined;
const relayChildren = new Set<ChildProcess>();
let ports: {
  bastionSsh: number;
  relay: number;
  web1Ssh: number;
  web1Http: number;
  web2Ssh: number;
  web2Http: number;
};
let A: string;

interface Run {
  code: number;
  out: string;
  err: string;
}

/** bin/ckan-release as its own process (setsid: no controlling terminal), with the test's HOME and agent. */
function cli(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [path.resolve('bin/ckan-release'), '--config', project.config, ...argv],
      {
        cwd: project.dir,
        env: { ...process.env, HOME: home, SSH_AUTH_SOCK: agentSock, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, out, err }));
  });
}

async function ok(...argv: string[]): Promise<string> {
  const r = await cli(argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r.out;
}

/** What the host's own Apache serves at status_show, asked from inside its network namespace. */
async function servedInside(host: string, port: number): Promise<{ ckanPath: string; extensions: string[] }> {
  const r = await onHost(docker, host, `curl -sf http://127.0.0.1:${port}/api/3/action/status_show`);
  expect(r.code, r.out).toBe(0);
  const body = JSON.parse(r.out) as { result: { extensions: string[]; fixture: { ckan_path: string } } };
  return { ckanPath: body.result.fixture.ckan_path, extensions: body.result.extensions };
}

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

function writeSshConfig(extra = ''): void {
  writeFileSync(
    path.join(home, '.ssh', 'config'),
    [
      '# the test HOME: aliases, a bastion, one- and two-hop jumps; keys only from the agent',
      `Host ${BASTION}`,
      '    HostName 127.0.0.1',
      `    Port ${ports.relay}`,
      '    ProxyJump none',
      `Host ${WEB1}`,
      '    HostName 127.0.0.1',
      `    Port ${ports.web1Ssh}`,
      `    ProxyJump ${BASTION}`,
      `Host ${WEB2}`,
      '    HostName 127.0.0.1',
      `    Port ${ports.web2Ssh}`,
      `    ProxyJump ${BASTION},deploy@${WEB1}`,
      'Host s5-*',
      '    User deploy',
      extra,
      'Host *',
      '    HashKnownHosts yes',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  sandboxDir = path.join(project.dir, 'jump-sandbox');
  const p = await freePorts(8);
  ports = {
    bastionSsh: p[0]!,
    relay: p[1]!,
    web1Ssh: p[2]!,
    web1Http: p[3]!,
    web2Ssh: p[4]!,
    web2Http: p[5]!,
  };
  await sandboxUp(
    docker,
    {
      dir: sandboxDir,
      hosts: [
        { name: BASTION, sshPort: ports.bastionSsh, httpPort: p[6]!, network: 'private' },
        { name: WEB1, sshPort: ports.web1Ssh, httpPort: ports.web1Http, network: `with:${BASTION}` },
        { name: WEB2, sshPort: ports.web2Ssh, httpPort: ports.web2Http, network: `with:${BASTION}` },
      ],
    },
    (l) => process.stderr.write(`[sandbox] ${l}\n`),
  );

  // The relay: the bastion's sshd, and nothing else, on the machine's 127.0.0.1.
  relay = net.createServer((socket) => {
    const child = spawn(
      'docker',
      ['exec', '-i', containerName(BASTION), 'python3', '-c', RELAY, String(ports.bastionSsh)],
      {
        stdio: ['pipe', 'pipe', 'ignore'],
      },
    );
    relayChildren.add(child);
    socket.pipe(child.stdin!);
    child.stdout!.pipe(socket);
    socket.on('error', () => child.kill());
    child.stdin!.on('error', () => socket.destroy());
    child.on('close', () => {
      relayChildren.delete(child);
      socket.end();
    });
  });
  await new Promise<void>((resolve) => relay!.listen(ports.relay, '127.0.0.1', resolve));

  // A HOME with no key files at all, and an agent that holds the sandbox key.
  home = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-home-'));
  mkdirSync(path.join(home, '.ssh'), { mode: 0o700 });
  writeSshConfig();
  agentSock = path.join(home, 'agent.sock');
  agent = spawn('ssh-agent', ['-D', '-a', agentSock], { stdio: 'ignore' });
  for (let i = 0; i < 50 && !existsSync(agentSock); i++) await new Promise((r) => setTimeout(r, 100));
  execFileSync('ssh-add', [path.join(sandboxDir, 'id_ed25519')], {
    env: { ...process.env, SSH_AUTH_SOCK: agentSock },
    stdio: 'ignore',
  });

  // ckan-release.yml: the production environment names nothing but the aliases.
  let text = readFileSync(project.config, 'utf8');
  text = text.slice(0, text.indexOf('environments:'));
  text +=
    'environments:\n' +
    '  production:\n' +
    `    hosts: [${WEB1}, ${WEB2}]\n` +
    '    host_vars:\n' +
    `      ${WEB1}: { http_port: ${ports.web1Http} }\n` +
    `      ${WEB2}: { http_port: ${ports.web2Http} }\n` +
    '    vars: { site_url: http://demo.test, site_title: Demo portal }\n' +
    '    secrets: secrets/production.yml\n';
  writeFileSync(project.config, text);
  const built = await project.cli('--config', project.config, 'build');
  if (built.code !== 0) throw new Error(`build failed:\n${built.err}`);
  A = built.out.trim();
}, 900_000);

afterAll(async () => {
  relay?.close();
  for (const c of relayChildren) c.kill();
  agent?.kill();
  if (docker && sandboxDir) await sandboxDown(docker, { dir: sandboxDir }, () => undefined);
});

describe('the network', () => {
  it('reaches the targets only through the bastion', async () => {
    // Nothing on the machine's 127.0.0.1 answers on the targets' ports...
    for (const port of [ports.web1Ssh, ports.web1Http, ports.web2Ssh, ports.web2Http, ports.bastionSsh])
      expect(await refused(port), String(port)).toBe('ECONNREFUSED');
    // ...the targets have no network but the shared private loopback...
    for (const h of [WEB1, WEB2]) expect((await onHost(docker, h, 'ls /sys/class/net')).out).toBe('lo\n');
    // ...where their sshd answer, seen from the bastion.
    const banner = await onHost(
      docker,
      BASTION,
      `bash -c 'exec 3<>/dev/tcp/127.0.0.1/${ports.web2Ssh} && timeout 2 head -c 7 <&3'`,
    );
    expect(banner.out).toBe('SSH-2.0');
  });
});

describe('host keys', () => {
  it('an unknown host is refused, exit 2, naming the jump host, --accept-new-host-key and ssh-keyscan', async () => {
    const r = await cli(['setup', 'production']);
    expect(r.code, r.err).toBe(2);
    expect(r.err).toMatch(
      new RegExp(
        `${WEB1}: jump host ${BASTION} \\(deploy@127\\.0\\.0\\.1:${ports.relay}\\): unknown host key ssh-ed25519 SHA256:`,
      ),
    );
    expect(r.err).toMatch(/--accept-new-host-key/);
    expect(r.err).toMatch(new RegExp(`ssh-keyscan -p ${ports.relay} 127\\.0\\.0\\.1`));
    expect(existsSync(path.join(home, '.ssh', 'known_hosts'))).toBe(false);
    expect((await onHost(docker, WEB1, `ls -A ${ROOT}`)).out).toBe('');
  });

  it('--accept-new-host-key trusts every hop on first use and writes it hashed (HashKnownHosts yes)', async () => {
    const out = await ok('--accept-new-host-key', 'setup', 'production');
    expect(out).toMatch(new RegExp(`^${WEB1}: made `, 'm'));
    expect(out).toMatch(new RegExp(`^${WEB2}: made `, 'm'));
    const knownHosts = path.join(home, '.ssh', 'known_hosts');
    const lines = readFileSync(knownHosts, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(l).toMatch(/^\|1\|[A-Za-z0-9+/=]+\|[A-Za-z0-9+/=]+ ssh-ed25519 /);
    // OpenSSH itself finds each host's real key under its name.
    for (const [host, port] of [
      [BASTION, ports.bastionSsh],
      [WEB1, ports.web1Ssh],
      [WEB2, ports.web2Ssh],
    ] as const) {
      const name = `[127.0.0.1]:${host === BASTION ? ports.relay : port}`;
      const found = execFileSync('ssh-keygen', ['-F', name, '-f', knownHosts]).toString();
      const real = (await onHost(docker, host, 'cut -d" " -f2 /etc/ssh/ssh_host_ed25519_key.pub')).out.trim();
      expect(found, host).toContain(real);
    }
    // The next run needs no flag.
    const again = await ok('setup', 'production');
    expect(again.split('\n').sort()).toEqual(['', `${WEB1}: already set up`, `${WEB2}: already set up`]);
  });
});

describe('ship through the bastion, keys from the agent', () => {
  it('ship production: both hosts serve the release', async () => {
    const out = await ok('ship', 'production', A);
    expect(out).toBe(`${WEB1}: none -> ${A}\n${WEB2}: none -> ${A}\n`);
    for (const [h, port] of [
      [WEB1, ports.web1Http],
      [WEB2, ports.web2Http],
    ] as const) {
      expect(await currentOf(docker, h), h).toBe(`${ROOT}/releases/${A}`);
      const s = await servedInside(h, port);
      expect(s.ckanPath, h).toBe(`${ROOT}/releases/${A}/src/ckan/ckan`);
      expect(s.extensions, h).toEqual(['showcase', 'spatial_metadata', 'spatial_query', 'scheming_datasets']);
    }
    // The relay carried every connection: the bastion's sshd logged the deploy user's logins.
    const log = await onHost(docker, BASTION, 'grep -c "Accepted publickey for deploy" /var/log/sshd.log');
    expect(Number(log.out.trim())).toBeGreaterThan(0);
  });

  it('without the agent, no key is accepted (exit 1, naming the failing hop)', async () => {
    const r = await cli(['status', 'production'], { SSH_AUTH_SOCK: '' });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      new RegExp(
        `${WEB1}: jump host ${BASTION} \\(deploy@127\\.0\\.0\\.1:${ports.relay}\\): cannot connect: .*no key was accepted`,
      ),
    );
  });

  it('a changed host key is refused even with --accept-new-host-key, before any command', async () => {
    const knownHosts = path.join(home, '.ssh', 'known_hosts');
    const saved = readFileSync(knownHosts, 'utf8');
    const other = path.join(home, 'other');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const name = `[127.0.0.1]:${ports.web2Ssh}`;
    execFileSync('ssh-keygen', ['-R', name, '-f', knownHosts], { stdio: 'ignore' });
    writeFileSync(
      knownHosts,
      `${readFileSync(knownHosts, 'utf8')}${name} ${readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`,
    );
    try {
      const before = (await onHost(docker, WEB2, `ls ${ROOT}/.ckan-release; readlink -e ${ROOT}/current`))
        .out;
      const r = await cli(['--accept-new-host-key', 'ship', 'production', A]);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(
        new RegExp(
          `${WEB2} \\(deploy@127\\.0\\.0\\.1:${ports.web2Ssh} via ${BASTION}, deploy@${WEB1}\\): HOST KEY CHANGED`,
        ),
      );
      expect((await onHost(docker, WEB2, `ls ${ROOT}/.ckan-release; readlink -e ${ROOT}/current`)).out).toBe(
        before,
      );
    } finally {
      writeFileSync(knownHosts, saved);
    }
  });
});

describe('IdentitiesOnly', () => {
  it("an IdentityFile with only its .pub beside it selects the agent's copy, and only that key", async () => {
    writeFileSync(
      path.join(home, '.ssh', 'deploy_key.pub'),
      readFileSync(path.join(sandboxDir, 'id_ed25519.pub')),
    );
    const decoy = path.join(home, 'decoy');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', decoy]);
    copyFileSync(`${decoy}.pub`, path.join(home, '.ssh', 'decoy_key.pub'));
    try {
      // The agent holds the right key, but IdentitiesOnly names another one: nothing is offered.
      writeSshConfig('    IdentityFile ~/.ssh/decoy_key\n    IdentitiesOnly yes');
      const refused = await cli(['status', 'production']);
      expect(refused.code, refused.err).toBe(1);
      expect(refused.err).toMatch(/no key was accepted/);
      writeSshConfig('    IdentityFile ~/.ssh/deploy_key\n    IdentitiesOnly yes');
      const r = await cli(['status', 'production']);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toContain(`current:         ${A}`);
    } finally {
      writeSshConfig();
    }
  });
});

describe('encrypted keys', () => {
  let keyFile: string;
  beforeAll(() => {
    keyFile = path.join(home, '.ssh', 'id_ed25519');
    copyFileSync(path.join(sandboxDir, 'id_ed25519'), keyFile);
    chmodSync(keyFile, 0o600);
    execFileSync('ssh-keygen', ['-q', '-p', '-N', PASSPHRASE, '-f', keyFile]);
  });

  it('without agent and without a terminal: exit 2, naming the key file and ssh-add', async () => {
    const r = await cli(['status', 'production'], { SSH_AUTH_SOCK: '' });
    expect(r.code, r.err).toBe(2);
    expect(r.err).toContain(`${keyFile} is encrypted and there is no terminal to ask for the passphrase`);
    expect(r.err).toContain(`ssh-add ${keyFile}`);
  });

  it('on a terminal: asks for the passphrase without echo, once for every hop and host', async () => {
    // `script` gives ckan-release a pseudo-terminal as its controlling terminal; the passphrase is
    // typed into it once the prompt shows.
    const argv = [path.resolve('bin/ckan-release'), '--config', project.config, 'status', 'production'];
    const child = spawn(
      'script',
      ['-qec', [process.execPath, ...argv].map((a) => `'${a}'`).join(' '), '/dev/null'],
      {
        cwd: project.dir,
        env: { ...process.env, HOME: home, SSH_AUTH_SOCK: '' },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let screen = '';
    let typed = 0;
    child.stdout.on('data', (c: Buffer) => {
      screen += c.toString();
      const prompts = screen.split('Enter passphrase for key').length - 1;
      if (prompts > typed) {
        typed = prompts;
        child.stdin.write(`${PASSPHRASE}\r`);
      }
    });
    const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
    child.stdin.end();
    expect(screen).toContain(`Enter passphrase for key '${keyFile}': `);
    expect(typed).toBe(1);
    expect(screen).not.toContain(PASSPHRASE);
    expect(code, screen).toBe(0);
    expect(screen).toContain(`current:         ${A}`);
  });
});

describe('become', () => {
  it('a sudo that wants a password: exit 2, naming the host and the step', async () => {
    await onHost(docker, WEB2, "echo 'deploy ALL=(ALL) ALL' > /etc/sudoers.d/deploy");
    try {
      const r = await cli(['status', 'production']);
      expect(r.code, r.err).toBe(2);
      expect(r.err).toMatch(
        new RegExp(`${WEB2}: [a-z ]+: sudo wants a password \\("sudo: a password is required"\\)`),
      );
      expect(r.err).toMatch(/NOPASSWD/);
      // ship: web2 fails before any switch, named; web1 keeps serving what it served. Every failure is
      // the hosts' setup (HostsFailedError's rule: exit 2 when every failure was bad input).
      const shipped = await cli(['ship', 'production', A]);
      expect(shipped.code, shipped.err).toBe(2);
      expect(shipped.err).toMatch(/failed before any host switched; nothing changed on any host/);
      expect(shipped.err).toMatch(new RegExp(`${WEB2}: [a-z ]+: sudo wants a password`));
      expect(await currentOf(docker, WEB1)).toBe(`${ROOT}/releases/${A}`);
    } finally {
      await onHost(docker, WEB2, "echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy");
    }
  });
});
