// ~/.ssh/config resolution as OpenSSH does it: patterns, first value wins, Include, %-tokens, and
// ProxyJump chains (each jump host resolved through the config itself; `ProxyJump none`; loops).
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { becomeFor } from '../../src/deploy/deploy.js';
import { maybeSudo } from '../../src/deploy/shell.js';
import { appendKnownHost, readKnownHosts, verifyHostKey } from '../../src/remote/known-hosts.js';
import { opensshPublicBlob } from '../../src/remote/ssh.js';
import { resolveTarget, type HostTarget } from '../../src/remote/target.js';
import type { Config, Environment } from '../../src/config/types.js';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';

function homeWith(config: string, files: Record<string, string> = {}): string {
  const home = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-home-'));
  mkdirSync(path.join(home, '.ssh'));
  writeFileSync(path.join(home, '.ssh', 'config'), config);
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(home, f)), { recursive: true });
    writeFileSync(path.join(home, f), text);
  }
  return home;
}

interface EnvSsh {
  sshConfig: string | undefined;
  user: string | undefined;
  port: number | undefined;
}
const noEnv: EnvSsh = { sshConfig: undefined, user: undefined, port: undefined };

function resolve(home: string, spec: string, env: Partial<EnvSsh> = {}): HostTarget {
  return resolveTarget({ ...noEnv, ...env }, spec, {
    home,
    systemConfig: '',
    processEnv: { SSH_AUTH_SOCK: '/run/agent.sock', KEYS: '/keys' },
  });
}

const hops = (t: HostTarget) => t.jumps.map((j) => `${j.user}@${j.hostname}:${j.port}`);

describe('ssh config: hosts and patterns', () => {
  const config = [
    'Host web? !web9',
    '    HostName %h.internal.example.org',
    '    User deploy',
    'Host web1',
    '    Port 2201',
    '    User ignored',
    'Host *.example.org',
    '    IdentityFile ~/.ssh/id_%r_%h',
    '    IdentityFile ${KEYS}/second',
    '    IdentitiesOnly yes',
    '    UserKnownHostsFile %d/.ssh/kh_%n',
    'Host *',
    '    Port 2222',
    '    HashKnownHosts yes',
    '    StrictHostKeyChecking accept-new',
    '',
  ].join('\n');

  it('first value wins over later blocks; %h in HostName; patterns with negation', () => {
    const home = homeWith(config);
    const t = resolve(home, 'web1');
    expect(t).toMatchObject({
      name: 'web1',
      hostname: 'web1.internal.example.org',
      user: 'deploy',
      port: 2201, // the first Port seen: "Host web1", before "Host *"
      hashKnownHosts: true,
      strictHostKeyChecking: 'accept-new',
      jumps: [],
    });
    const web9 = resolve(home, 'web9');
    expect(web9.hostname).toBe('web9');
    expect(web9.user).toBe(os.userInfo().username);
  });

  it('expands %-tokens, ~ and ${VAR} in IdentityFile and UserKnownHostsFile', () => {
    const home = homeWith(config);
    const t = resolve(home, 'db.example.org', { user: 'ops' });
    expect(t.identityFiles).toEqual([path.join(home, '.ssh/id_ops_db.example.org'), '/keys/second']);
    expect(t.identitiesConfigured).toBe(true);
    expect(t.identitiesOnly).toBe(true);
    expect(t.knownHostsFiles).toEqual([path.join(home, '.ssh/kh_db.example.org')]);
    expect(t.identityAgent).toBe('/run/agent.sock');
  });

  it("without IdentityFile: OpenSSH's default key files; the spec's user@host:port over the config", () => {
    const home = homeWith('Host x\n  User a\n  Port 1\n');
    const t = resolve(home, 'b@x:2');
    expect(t).toMatchObject({ user: 'b', port: 2, identitiesConfigured: false });
    expect(t.identityFiles).toContain(path.join(home, '.ssh/id_ed25519'));
  });

  it('follows Include (relative to ~/.ssh, globs) in place', () => {
    const home = homeWith('Include conf.d/*.conf\nHost *\n  User fallback\n', {
      '.ssh/conf.d/10-web.conf': 'Host web1\n  User fromInclude\n  Port 2200\n',
    });
    expect(resolve(home, 'web1')).toMatchObject({ user: 'fromInclude', port: 2200 });
    expect(resolve(home, 'other')).toMatchObject({ user: 'fallback', port: 22 });
  });

  it("reads the environment's ssh_config before ~/.ssh/config", () => {
    const home = homeWith('Host web1\n  HostName from-home\n  User home\n');
    const extra = path.join(home, 'extra_config');
    writeFileSync(extra, 'Host web1\n  HostName from-env\n');
    const t = resolve(home, 'web1', { sshConfig: extra });
    expect(t).toMatchObject({ hostname: 'from-env', user: 'home' });
  });

  it('refuses ProxyCommand (exit 2), pointing at ProxyJump', () => {
    const home = homeWith('Host web1\n  ProxyCommand ssh -W %h:%p bastion\n');
    expect(() => resolve(home, 'web1')).toThrow(/ProxyCommand is not supported/);
  });
});

describe('ssh config: ProxyJump', () => {
  const config = [
    'Host bastion',
    '    HostName bastion.example.org',
    '    User jump',
    '    Port 2022',
    '    ProxyJump none',
    'Host inner',
    '    HostName 10.0.0.2',
    '    ProxyJump bastion',
    'Host web1',
    '    HostName 10.0.1.1',
    '    ProxyJump inner',
    'Host web2',
    '    HostName 10.0.1.2',
    '    ProxyJump bastion,ops@inner:2200',
    'Host web3',
    '    ProxyJump ssh://root@[2001:db8::1]:2022',
    'Host loop1',
    '    ProxyJump loop2',
    'Host loop2',
    '    ProxyJump loop1',
    'Host *.example.org',
    '    ProxyJump bastion',
    'Host *',
    '    User deploy',
    '',
  ].join('\n');

  it('one bastion: the jump host is resolved through the config, and never through itself', () => {
    const home = homeWith(config);
    const t = resolve(home, 'inner');
    expect(hops(t)).toEqual(['jump@bastion.example.org:2022']);
    expect(t.jumps[0]!.name).toBe('bastion');
    expect(t.jumps[0]!.keyNames).toEqual(['[bastion.example.org]:2022']);
    // The bastion's own "ProxyJump none" comes before "Host *.example.org"'s ProxyJump.
    expect(resolve(home, 'bastion').jumps).toEqual([]);
  });

  it("a jump host's own ProxyJump makes a chain", () => {
    const t = resolve(homeWith(config), 'web1');
    expect(hops(t)).toEqual(['jump@bastion.example.org:2022', 'deploy@10.0.0.2:22']);
    expect(t).toMatchObject({ hostname: '10.0.1.1', user: 'deploy', port: 22 });
  });

  it('a comma list: hops in order, user@host:port forms over the jump host config', () => {
    const t = resolve(homeWith(config), 'web2');
    expect(hops(t)).toEqual(['jump@bastion.example.org:2022', 'ops@10.0.0.2:2200']);
    expect(t.jumps.map((j) => j.name)).toEqual(['bastion', 'ops@inner:2200']);
  });

  it('ssh:// and [IPv6] forms', () => {
    expect(hops(resolve(homeWith(config), 'web3'))).toEqual(['root@2001:db8::1:2022']);
  });

  it("the environment's user and port apply to its hosts, not to jump hosts", () => {
    const t = resolve(homeWith('Host t\n  ProxyJump j\n'), 't', { user: 'deploy', port: 2200 });
    expect(t).toMatchObject({ user: 'deploy', port: 2200 });
    expect(t.jumps[0]).toMatchObject({ user: os.userInfo().username, port: 22 });
  });

  it('a loop is an error naming the chain and how to break it', () => {
    expect(() => resolve(homeWith(config), 'loop1')).toThrow(/ProxyJump loops: loop1 -> loop2 -> loop1/);
    const star = homeWith('Host *\n  ProxyJump bastion\n');
    expect(() => resolve(star, 'web1')).toThrow(/ProxyJump loops: web1 -> bastion -> bastion/);
  });
});

describe('keys', () => {
  it('reads the public key in clear from an encrypted OpenSSH key', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-key-'));
    const key = path.join(dir, 'id');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'secret words', '-f', key]);
    const pub = Buffer.from(readFileSync(`${key}.pub`, 'utf8').split(' ')[1]!, 'base64');
    expect(opensshPublicBlob(readFileSync(key))?.equals(pub)).toBe(true);
  });
});

describe('known_hosts written on first use', () => {
  it('appends hashed (HashKnownHosts) or plain entries that verify as known', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-kh-'));
    const file = path.join(dir, 'sub', 'known_hosts');
    const key = Buffer.from('AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl', 'base64');
    appendKnownHost(file, '[10.0.0.1]:2222', key, true);
    appendKnownHost(file, 'web1', key, false);
    const text = readFileSync(file, 'utf8');
    expect(text).toMatch(/^\|1\|[^|]+\|[^ ]+ ssh-ed25519 AAAA/);
    expect(text).not.toContain('10.0.0.1');
    expect(text.split('\n')[1]).toMatch(/^web1 ssh-ed25519 /);
    const entries = readKnownHosts([file]);
    expect(verifyHostKey(entries, ['[10.0.0.1]:2222'], key)).toEqual({ status: 'known' });
    expect(verifyHostKey(entries, ['[10.0.0.1]:2223'], key)).toEqual({ status: 'unknown' });
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });
});

describe('become', () => {
  const config = (deploy: Partial<Config['deploy']>) => ({ deploy: { owner: 'ckan', ...deploy } }) as Config;
  const env = (e: Partial<Environment> = {}) => e as Environment;

  it('defaults: sudo as root when deploy.owner is set and the SSH user is not root', () => {
    expect(becomeFor(config({}), env(), 'deploy')).toBe(true);
    expect(becomeFor(config({}), env(), 'root')).toBe(false);
    expect(becomeFor(config({ owner: undefined }), env(), 'deploy')).toBe(false);
  });

  it('become / become_user, the environment over deploy', () => {
    expect(becomeFor(config({ become: false }), env(), 'deploy')).toBe(false);
    expect(becomeFor(config({ become: false }), env({ become: true }), 'deploy')).toBe(true);
    expect(becomeFor(config({ becomeUser: 'ckan' }), env(), 'deploy')).toBe('ckan');
    expect(becomeFor(config({ becomeUser: 'ckan' }), env({ becomeUser: 'admin' }), 'deploy')).toBe('admin');
    expect(becomeFor(config({ becomeUser: 'ckan' }), env(), 'ckan')).toBe(false);
    expect(maybeSudo(['id'], 'ckan')).toEqual(['sudo', '-n', '-u', 'ckan', '--', 'id']);
  });
});
