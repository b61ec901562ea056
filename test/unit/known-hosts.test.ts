// known_hosts as OpenSSH writes it: plain entries, [host]:port, hashed entries made by the real
// ssh-keygen -H, @revoked, and changed keys.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { fingerprint, knownHostsLine, parseKnownHosts, verifyHostKey } from '../../src/remote/known-hosts.js';
import { resolveTarget, splitHost } from '../../src/remote/target.js';
import type { Environment } from '../../src/config/types.js';

let dir: string;
let keyA: Buffer;
let keyB: Buffer;
let fpA: string;

function makeKey(name: string): { blob: Buffer; fp: string } {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, name)]);
  const pub = readFileSync(path.join(dir, `${name}.pub`), 'utf8').split(' ');
  const fp = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', path.join(dir, `${name}.pub`)], {
    encoding: 'utf8',
  }).split(' ')[1]!;
  return { blob: Buffer.from(pub[1]!, 'base64'), fp };
}

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-kh-'));
  const a = makeKey('a');
  keyA = a.blob;
  fpA = a.fp;
  keyB = makeKey('b').blob;
});

describe('known_hosts', () => {
  it('computes the fingerprint ssh-keygen prints', () => {
    expect(fingerprint(keyA)).toBe(fpA);
  });

  it('knows plain entries, by name and by [name]:port', () => {
    const entries = parseKnownHosts(
      `web1.example.org,10.0.0.5 ${knownHostsLine('x', keyA).split(' ').slice(1).join(' ')}\n` +
        knownHostsLine('[127.0.0.1]:2201', keyB),
    );
    expect(verifyHostKey(entries, ['web1.example.org'], keyA)).toEqual({ status: 'known' });
    expect(verifyHostKey(entries, ['[127.0.0.1]:2201'], keyB)).toEqual({ status: 'known' });
    expect(verifyHostKey(entries, ['127.0.0.1'], keyB)).toEqual({ status: 'unknown' });
  });

  it('knows entries hashed by the real ssh-keygen -H', () => {
    const file = path.join(dir, 'known_hosts');
    writeFileSync(
      file,
      knownHostsLine('[127.0.0.1]:2201', keyA) + '\n' + knownHostsLine('web2.example.org', keyB) + '\n',
    );
    execFileSync('ssh-keygen', ['-H', '-f', file], { stdio: 'ignore' });
    const text = readFileSync(file, 'utf8');
    expect(text).not.toMatch(/127\.0\.0\.1|web2/);
    const entries = parseKnownHosts(text);
    expect(verifyHostKey(entries, ['[127.0.0.1]:2201'], keyA)).toEqual({ status: 'known' });
    expect(verifyHostKey(entries, ['web2.example.org'], keyB)).toEqual({ status: 'known' });
    expect(verifyHostKey(entries, ['web3.example.org'], keyB)).toEqual({ status: 'unknown' });
  });

  it('reports a changed key of the same type, with the expected one', () => {
    const entries = parseKnownHosts(knownHostsLine('web1', keyA));
    const v = verifyHostKey(entries, ['web1'], keyB);
    expect(v.status).toBe('changed');
    expect(v.status === 'changed' && v.expected[0]!.key.equals(keyA)).toBe(true);
  });

  it('honours @revoked, wildcards and negations', () => {
    const body = knownHostsLine('x', keyA).split(' ').slice(1).join(' ');
    expect(verifyHostKey(parseKnownHosts(`@revoked * ${body}`), ['web1'], keyA)).toEqual({
      status: 'revoked',
    });
    expect(
      verifyHostKey(parseKnownHosts(`*.example.org,!bad.example.org ${body}`), ['web1.example.org'], keyA),
    ).toEqual({ status: 'known' });
    expect(
      verifyHostKey(parseKnownHosts(`*.example.org,!bad.example.org ${body}`), ['bad.example.org'], keyA),
    ).toEqual({ status: 'unknown' });
  });
});

describe('host targets', () => {
  const env = (over: Partial<Environment> = {}): Environment => ({
    name: 'staging',
    hosts: [],
    user: undefined,
    port: undefined,
    sshConfig: undefined,
    configFile: 'ckan.ini',
    vars: {},
    hostVars: {},
    secrets: undefined,
    requires: undefined,
    parallel: 10,
    ...over,
  });

  it('splits user@host:port', () => {
    expect(splitHost('deploy@web1:2222')).toEqual({ user: 'deploy', host: 'web1', port: 2222 });
    expect(splitHost('web1')).toEqual({ user: undefined, host: 'web1', port: undefined });
    expect(splitHost('[::1]:22')).toEqual({ user: undefined, host: '::1', port: 22 });
  });

  it("reads the environment's ssh_config before ~/.ssh/config, first value wins", () => {
    const home = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-home-'));
    execFileSync('mkdir', ['-p', path.join(home, '.ssh')]);
    writeFileSync(
      path.join(home, '.ssh/config'),
      'Host web1\n  User admin\n  Port 2200\n  IdentityFile ~/.ssh/id_home\nHost *\n  StrictHostKeyChecking yes\n',
    );
    const extra = path.join(home, 'sandbox_ssh_config');
    writeFileSync(
      extra,
      'Host web1\n  HostName 127.0.0.1\n  Port 2201\n  HostKeyAlias web1\n  UserKnownHostsFile /x/known_hosts\n  IdentityFile /x/id\n',
    );
    const t = resolveTarget(env({ sshConfig: extra, user: 'deploy' }), 'web1', home);
    expect(t).toMatchObject({
      name: 'web1',
      hostname: '127.0.0.1',
      port: 2201,
      user: 'admin',
      knownHostsFiles: ['/x/known_hosts'],
      keyNames: ['web1'],
      strictHostKeyChecking: 'yes',
    });
    expect(t.identityFiles[0]).toBe('/x/id');
  });

  it('falls back to the environment user and port, then defaults', () => {
    const home = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-home-'));
    const t = resolveTarget(env({ user: 'deploy', port: 2222 }), 'web9.example.org', home);
    expect(t).toMatchObject({
      hostname: 'web9.example.org',
      port: 2222,
      user: 'deploy',
      keyNames: ['[web9.example.org]:2222'],
    });
    expect(resolveTarget(env(), 'ops@web9:23', home)).toMatchObject({ user: 'ops', port: 23 });
  });
});
