// deploy.fetch: direct against real services: a radosgw of this file's own (ports 7500-7519, the
// container df-s3-radosgw) and three sandbox hosts (df-web1..3, ssh 2500-2502, http 8500-8502).
// The hosts download the artifact from the bucket themselves through presigned URLs: the test counts
// every byte this process writes to each SSH connection (the CLI runs in-process) and compares it with
// the artifact; a host whose /etc/hosts sends the store's name elsewhere falls back to SSH and says so;
// a chunk with one byte flipped in the bucket is refused before any host switches; and no presigned
// URL is in the output, the ledgers or any command line the hosts' sshd ran.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countSshWrites } from '../../bench/client-meter.mjs';
import type { Manifest } from '../../src/artifact/manifest.js';
import { sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { recordCommands, recorded } from '../support/faults.js';
import { currentOf, ledgerOf, onHost, served } from '../support/hosts.js';
import { runCli, testProject, type TestProject } from '../support/project.js';
import { s3Server, stopS3Server, type S3Server } from '../support/s3.js';

const ROOT = '/usr/lib/ckan';
const HOSTS = ['df-web1', 'df-web2', 'df-web3'] as const;
const SSH_PORT = { 'df-web1': 2500, 'df-web2': 2501, 'df-web3': 2502 } as const;
const HTTP_PORT = { 'df-web1': 8500, 'df-web2': 8501, 'df-web3': 8502 } as const;
const S3_PORT = 7500;
// The store by name, so one host can be kept from reaching it (its own /etc/hosts).
const ENDPOINT = `http://localhost:${S3_PORT}`;
const BUCKET = 'df-direct';
const UNREACHABLE = 'df-web3';

let docker: Docker;
let s3: S3Server;
let project: TestProject;
let A: string;

// Bytes this process writes to SSH connections, by the remote port (one sandbox host each).
const ssh = countSshWrites();
const sshBytes = ssh.byPort;

async function ok(...argv: string[]) {
  const r = await runCli('--config', project.config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r;
}

function manifestOf(id: string): Manifest {
  return JSON.parse(
    readFileSync(path.join(project.dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
  ) as Manifest;
}

/** sha256 of every regular file of releases/<id> on the host, by path. */
async function filesOn(host: string, id: string): Promise<Map<string, string>> {
  const r = await onHost(
    docker,
    host,
    `cd ${ROOT}/releases/${id} && find . -type f -print0 | xargs -0 sha256sum`,
  );
  expect(r.code, r.out).toBe(0);
  return new Map(
    r.out
      .trim()
      .split('\n')
      .map((l) => {
        const [sum, file] = [l.slice(0, 64), l.slice(66)];
        return [file.replace(/^\.\//, ''), sum] as const;
      }),
  );
}

const noUrl = (text: string) => {
  expect(text).not.toMatch(/X-Amz-(Signature|Credential)/);
};

beforeAll(async () => {
  docker = await testDocker();
  s3 = await s3Server({ container: 'df-s3-radosgw', port: S3_PORT, monPort: 7501, msPorts: [7503, 7519] });
  // Credentials and region from the environment; the endpoint (by name) from the config.
  Object.assign(process.env, s3.env);
  delete process.env.AWS_ENDPOINT_URL_S3;
  await s3.bucket(BUCKET);
  project = await testProject();
  let text = readFileSync(project.config, 'utf8');
  text = text.replace(
    'project: demo-portal',
    `project: demo-portal\nstore: s3://${BUCKET}/demo\ns3: { endpoint: '${ENDPOINT}' }`,
  );
  text = text.replace('  keep_releases: 3\n', '  keep_releases: 3\n  fetch: direct\n');
  text =
    text.slice(0, text.indexOf('environments:')) +
    [
      'environments:',
      '  fleet:',
      `    hosts: [${HOSTS.join(', ')}]`,
      '    user: deploy',
      '    ssh_config: .ckan-release/sandbox/ssh_config',
      '    host_vars:',
      ...HOSTS.map((h) => `      ${h}: { ssh_port: ${SSH_PORT[h]}, http_port: ${HTTP_PORT[h]} }`),
      '    vars: { site_url: http://demo.test, site_title: Demo portal }',
      '    secrets: secrets/production.yml',
      '',
    ].join('\n');
  writeFileSync(project.config, text);
  const b = await ok('build');
  A = b.out.trim().split('\n').pop()!;
  expect(b.err).toMatch(new RegExp(`published ${A} to s3://${BUCKET}/demo/`));
  await ok('sandbox', 'up');
  await ok('setup', 'fleet');
  await recordCommands(docker, 'df-web1');
  // df-web3 resolves the store's name to an address where nothing listens: connection refused.
  const r = await onHost(
    docker,
    UNREACHABLE,
    `sed 's/^127\\.0\\.0\\.1\\([[:space:]]\\{1,\\}\\)localhost$/127.0.0.9\\1localhost/' /etc/hosts > /tmp/hosts && cat /tmp/hosts > /etc/hosts && getent hosts localhost`,
  );
  expect(r.out.trim()).toMatch(/^127\.0\.0\.9\s+localhost$/);
}, 900_000);

afterAll(async () => {
  ssh.restore();
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
  await stopS3Server();
});

describe('deploy.fetch: direct', () => {
  it('hosts fetch from the store themselves: SSH carries only control traffic; a host that cannot reach the store gets it through SSH, and says so', async () => {
    const m = manifestOf(A);
    const chunks = new Set(m.archive.chunks!.map((c) => c.sha256)).size;
    sshBytes.clear();
    const r = await ok('ship', 'fleet', A);
    expect(r.out).toBe(HOSTS.map((h) => `${h}: none -> ${A}\n`).join(''));
    for (const h of ['df-web1', 'df-web2'])
      expect(r.err).toMatch(
        new RegExp(
          `${h}: fetched from s3://${BUCKET}/demo/: ${chunks} of ${chunks} chunks downloaded \\([\\d.]+ MB\\), 0 from its chunk cache`,
        ),
      );
    expect(r.err).toMatch(
      new RegExp(
        `${UNREACHABLE}: cannot fetch the manifest of ${A} from the store: .*Connection refused.*: sending through SSH instead`,
      ),
    );
    expect(r.err).toMatch(new RegExp(`${UNREACHABLE}: received [\\d.]+ MB in`));
    for (const h of HOSTS) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
      expect((await served(HTTP_PORT[h])).status).toBe(200);
      // Every file of the release, byte for byte the manifest's (the rendered config aside).
      const files = await filesOn(h, A);
      const want = m.files.filter((f) => f.type === 'file');
      for (const f of want) expect(files.get(f.path), `${h}: ${f.path}`).toBe(f.sha256);
      expect([...files.keys()].filter((p) => !want.some((f) => f.path === p))).toEqual(['ckan.ini']);
    }
    // The hosts that fetched keep the artifact's chunks; the one that could not has none.
    const cached = await onHost(docker, 'df-web1', `ls ${ROOT}/.ckan-release/chunks`);
    expect(cached.out.trim().split('\n').sort()).toEqual(
      [...new Set(m.archive.chunks!.map((c) => c.sha256))].sort(),
    );
    const bytes = Object.fromEntries(HOSTS.map((h) => [h, sshBytes.get(SSH_PORT[h]) ?? 0]));
    process.stderr.write(
      `[direct] bytes written to SSH by the client, artifact ${m.archive.bytes} B: ` +
        HOSTS.map((h) => `${h} ${bytes[h]} B (${((100 * bytes[h]!) / m.archive.bytes).toFixed(2)} %)`).join(
          ', ',
        ) +
        '\n',
    );
    // Control traffic only: the agent (installed once), the commands, the config; the host that
    // fell back got the whole archive through SSH.
    for (const h of ['df-web1', 'df-web2'] as const) {
      expect(bytes[h]).toBeGreaterThan(0);
      expect(bytes[h]).toBeLessThan(m.archive.bytes / 20);
    }
    expect(bytes[UNREACHABLE]).toBeGreaterThan(m.archive.bytes);
    noUrl(r.out + r.err);
    for (const h of HOSTS) noUrl(JSON.stringify(await ledgerOf(docker, h)));
    // The fetch ran as a request of the host's agent session (its URLs on the session's input, never
    // on a command line sshd ran), and the host said it fetched.
    const commands = await recorded(docker, 'df-web1');
    expect(commands.some((c) => / serve\b/.test(c))).toBe(true);
    expect(r.err).toMatch(/df-web1: fetched from s3:/);
    noUrl(commands.join('\n'));
  });

  it('a chunk with one byte flipped in the bucket is refused before any host switches; put right, hosts download only what their cache lacks', async () => {
    const variant = project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0'));
    const b = await runCli('--config', variant, 'build');
    expect(b.code, b.err).toBe(0);
    const B = b.out.trim().split('\n').pop()!;
    const [ma, mb] = [manifestOf(A), manifestOf(B)];
    const inA = new Set(ma.archive.chunks!.map((c) => c.sha256));
    const fresh = [...new Set(mb.archive.chunks!.filter((c) => !inA.has(c.sha256)).map((c) => c.sha256))];
    expect(fresh.length).toBeGreaterThan(0);
    // Without a kept manifest an earlier release is no delta base: a full ship, fetched from the store.
    for (const h of HOSTS) await onHost(docker, h, `rm -f ${ROOT}/.ckan-release/manifests/*`);
    const key = `demo/chunks/${fresh[0]}`;
    const c = s3.client();
    const good = Buffer.from(
      await (await c.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))).Body!.transformToByteArray(),
    );
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length / 2)]! ^= 0x01;
    await c.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: bad }));
    try {
      const ledgers = await Promise.all(HOSTS.map((h) => ledgerOf(docker, h)));
      const r = await runCli('--config', variant, 'ship', 'fleet', B);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/failed before any host switched; nothing changed on any host/);
      for (const h of ['df-web1', 'df-web2'])
        expect(r.err).toMatch(
          new RegExp(
            `${h}: chunk ${fresh[0]} from the store is refused: the store sent ${good.length} bytes with sha256 ${createHash('sha256').update(bad).digest('hex')}, expected ${good.length} bytes with sha256 ${fresh[0]}`,
          ),
        );
      noUrl(r.out + r.err);
      for (const [i, h] of HOSTS.entries()) {
        expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
        // At most staged (the host that got it through SSH): never activated.
        const added = (await ledgerOf(docker, h)).slice(ledgers[i]!.length).map((e) => e.event);
        expect(added.filter((e) => e !== 'staged')).toEqual([]);
        expect((await onHost(docker, h, `ls -a ${ROOT}/releases`)).out).not.toContain('.partial-');
      }
    } finally {
      await c.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: good }));
      c.destroy();
    }
    const r = await runCli('--config', variant, 'ship', 'fleet', B);
    expect(r.code, r.err).toBe(0);
    const unique = new Set(mb.archive.chunks!.map((x) => x.sha256)).size;
    for (const h of ['df-web1', 'df-web2'] as const) {
      // The cache holds A's chunks and those of B that arrived before the damaged one stopped the fetch.
      const got = new RegExp(
        `${h}: fetched from s3://${BUCKET}/demo/: (\\d+) of ${unique} chunks downloaded \\([\\d.]+ MB\\), (\\d+) from its chunk cache`,
      ).exec(r.err);
      expect(got, r.err).not.toBeNull();
      const [downloaded, cached] = [Number(got![1]), Number(got![2])];
      expect(downloaded).toBeGreaterThanOrEqual(1);
      expect(downloaded).toBeLessThanOrEqual(fresh.length);
      expect(downloaded + cached).toBe(unique);
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${B}`);
      expect((await served(HTTP_PORT[h])).showcase).toBe('1.0.0');
    }
    expect(await currentOf(docker, UNREACHABLE)).toBe(`${ROOT}/releases/${B}`);
  });
});
