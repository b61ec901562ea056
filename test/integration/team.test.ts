// Team scale against real services: an S3 store on a real radosgw (test/support/s3.ts), sandbox hosts,
// and webhook servers of the test's own on 127.0.0.1. A "CI" checkout builds and publishes; a second
// checkout with an empty local store promotes and rolls back; a third finds a corrupted chunk; a store
// that drops mid-upload lists nothing. Then history, diff and notify on the same fleet.
import { execFile } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, ledgerOf, served } from '../support/hosts.js';
import { runCli, testProject, type TestProject } from '../support/project.js';
import { s3Server, stopS3Server, type S3Server } from '../support/s3.js';

const ROOT = '/usr/lib/ckan';
const HOOK = 18360; // records every POST
const HANG = 18361; // accepts and never answers
const REFUSED = 18362; // nothing listens
const PROXY = 47081; // a TCP proxy to radosgw that cuts the connection

let docker: Docker;
let s3: S3Server;
let ci: TestProject;
let laptop: string; // the second checkout's config (empty local store)
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0
const httpPort = { 'tm-staging': 8360, 'tm-web1': 8361, 'tm-web2': 8362 } as const;
const received: { path: string; body: Record<string, unknown>; raw: string }[] = [];
let hook: http.Server;
let hang: net.Server;

const cli = runCli;

async function ok(config: string, ...argv: string[]) {
  const r = await cli('--config', config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r;
}

function lastJson(out: string): Record<string, unknown> {
  const lines = out.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

async function bucketKeys(bucket: string): Promise<string[]> {
  const c = s3.client();
  const r = await c.send(new ListObjectsV2Command({ Bucket: bucket }));
  c.destroy();
  return (r.Contents ?? []).map((o) => o.Key!).sort();
}

function manifestOf(dir: string, id: string): Manifest {
  return JSON.parse(
    readFileSync(path.join(dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
  ) as Manifest;
}

/** Another checkout of the same project: the config and its files, the sandbox's ssh config, no store. */
function checkout(name: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `ckan-release-${name}-`));
  for (const part of ['ckan-release.yml', 'templates', 'secrets', 'patches'])
    cpSync(path.join(ci.dir, part), path.join(dir, part), { recursive: true });
  mkdirSync(path.join(dir, '.ckan-release'));
  cpSync(path.join(ci.dir, '.ckan-release/sandbox'), path.join(dir, '.ckan-release/sandbox'), {
    recursive: true,
  });
  symlinkSync(path.join(ci.dir, '.fixtures'), path.join(dir, '.fixtures'));
  return path.join(dir, 'ckan-release.yml');
}

beforeAll(async () => {
  docker = await testDocker();
  s3 = await s3Server();
  Object.assign(process.env, s3.env);
  await s3.bucket('tm-ci');

  hook = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      received.push({ path: req.url ?? '', body: JSON.parse(raw) as Record<string, unknown>, raw });
      res.end('ok');
    });
  });
  await new Promise<void>((r) => hook.listen(HOOK, '127.0.0.1', r));
  hang = net.createServer(() => undefined);
  await new Promise<void>((r) => hang.listen(HANG, '127.0.0.1', r));

  ci = await testProject();
  let text = readFileSync(ci.config, 'utf8');
  [
    [2201, 8001],
    [2202, 8002],
    [2203, 8003],
  ].forEach(([ssh, web], i) => {
    text = text.replace(
      `ssh_port: ${ssh}, http_port: ${web}`,
      `ssh_port: ${2360 + i}, http_port: ${8360 + i}`,
    );
  });
  for (const h of ['staging', 'web1', 'web2']) text = text.replaceAll(`sandbox-${h}`, `tm-${h}`);
  // No endpoint, region or credentials in the config: the SDK's environment variables give them.
  text = text.replace(
    'project: demo-portal',
    `project: demo-portal\nstore: s3://tm-ci/demo\nnotify:\n  - http://127.0.0.1:${HOOK}/hooks/T0KEN-in-the-path`,
  );
  writeFileSync(ci.config, text);

  const a = await ok(ci.config, 'build');
  A = a.out.trim().split('\n').pop()!;
  expect(a.err).toMatch(new RegExp(`published ${A} to s3://tm-ci/demo/: (\\d+) of \\1 chunks uploaded`));
  const up = await ok(ci.config, 'sandbox', 'up');
  expect(up.out).toMatch(/^tm-staging: ssh 127\.0\.0\.1:2360/m);
  await ok(ci.config, 'setup', 'staging');
  await ok(ci.config, 'setup', 'production');
  laptop = checkout('laptop');
}, 900_000);

afterAll(async () => {
  if (docker && ci)
    await sandboxDown(docker, { dir: path.join(ci.dir, '.ckan-release/sandbox') }, () => undefined);
  hook?.close();
  hang?.close();
  await stopS3Server();
});

describe('the S3 store', () => {
  it('CI build published every chunk and the manifest; a second checkout lists it', async () => {
    const m = manifestOf(ci.dir, A);
    expect(m.archive.chunks!.length).toBeGreaterThan(1);
    expect(m.archive.chunks!.reduce((n, c) => n + c.bytes, 0)).toBe(m.archive.bytes);
    const keys = await bucketKeys('tm-ci');
    expect(keys).toEqual(
      [
        ...new Set(m.archive.chunks!.map((c) => `demo/chunks/${c.sha256}`)),
        `demo/manifests/${A}.json`,
      ].sort(),
    );
    const listed = JSON.parse((await ok(laptop, '--json', 'artifacts')).out) as {
      id: string;
      bytes: number;
    }[];
    expect(listed).toEqual([expect.objectContaining({ id: A, bytes: m.archive.bytes })]);
    expect(existsSync(path.join(path.dirname(laptop), '.ckan-release/artifacts', A))).toBe(false);
  });

  it('a second build (one extension changed) uploads only its new chunks', async () => {
    const variant = ci.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0'));
    const r = await ok(variant, '--json', 'build');
    const result = lastJson(r.out) as { id: string; bytes: number; published: Record<string, number> };
    B = result.id;
    const [ma, mb] = [manifestOf(ci.dir, A), manifestOf(ci.dir, B)];
    const had = new Set(ma.archive.chunks!.map((c) => c.sha256));
    const fresh = new Map(
      mb.archive.chunks!.filter((c) => !had.has(c.sha256)).map((c) => [c.sha256, c.bytes]),
    );
    const expected = [...fresh.values()].reduce((n, b) => n + b, 0);
    expect(result.published.uploaded_chunks).toBe(fresh.size);
    expect(result.published.uploaded_bytes).toBe(expected);
    expect(expected).toBeGreaterThan(0);
    expect(expected).toBeLessThan(mb.archive.bytes);
    process.stderr.write(
      `[team] second build uploaded ${expected} of ${mb.archive.bytes} bytes (${((100 * expected) / mb.archive.bytes).toFixed(1)} %), ${fresh.size} of ${mb.archive.chunks!.length} chunks\n`,
    );
  });

  it('CI ships staging; a second checkout with an empty store promotes and rolls back', async () => {
    expect((await ok(ci.config, 'ship', 'staging')).out).toBe(`tm-staging: none -> ${B}\n`);
    const p = await ok(laptop, 'promote', 'staging', 'production');
    expect(p.out).toBe(`tm-web1: none -> ${B}\ntm-web2: none -> ${B}\n`);
    const mb = manifestOf(ci.dir, B);
    expect(p.err).toContain(
      `fetched ${B} from s3://tm-ci/demo/: ${mb.archive.chunks!.length} of ${mb.archive.chunks!.length} chunks downloaded`,
    );
    for (const h of ['tm-web1', 'tm-web2'] as const) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${B}`);
      expect((await served(httpPort[h])).showcase).toBe('1.0.0');
    }
    // The rollback target A is fetched with only the chunks the laptop's cache lacks.
    const r = await ok(laptop, 'rollback', 'production', '--to', A.slice(0, 20));
    expect(r.out).toBe(`tm-web1: ${B} -> ${A}\ntm-web2: ${B} -> ${A}\n`);
    const ma = manifestOf(ci.dir, A);
    const inB = new Set(mb.archive.chunks!.map((c) => c.sha256));
    const need = new Set(ma.archive.chunks!.filter((c) => !inB.has(c.sha256)).map((c) => c.sha256)).size;
    expect(r.err).toContain(
      `fetched ${A} from s3://tm-ci/demo/: ${need} of ${ma.archive.chunks!.length} chunks downloaded`,
    );
    for (const h of ['tm-web1', 'tm-web2'] as const) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
      expect((await served(httpPort[h])).showcase).toBe('1.1.0');
    }
    // The fetched artifact is byte for byte the one CI built.
    expect(
      readFileSync(path.join(path.dirname(laptop), '.ckan-release/artifacts', A, 'release.tar.gz')),
    ).toEqual(readFileSync(path.join(ci.dir, '.ckan-release/artifacts', A, 'release.tar.gz')));
  });

  it('a chunk with one byte flipped in the bucket is refused before any host is touched', async () => {
    const ma = manifestOf(ci.dir, A);
    const inB = new Set(manifestOf(ci.dir, B).archive.chunks!.map((c) => c.sha256));
    const victim = ma.archive.chunks!.find((c) => !inB.has(c.sha256))!;
    const key = `demo/chunks/${victim.sha256}`;
    const c = s3.client();
    const body = Buffer.from(
      await (await c.send(new GetObjectCommand({ Bucket: 'tm-ci', Key: key }))).Body!.transformToByteArray(),
    );
    const good = Buffer.from(body);
    body[Math.floor(body.length / 2)]! ^= 0x01;
    await c.send(new PutObjectCommand({ Bucket: 'tm-ci', Key: key, Body: body }));
    try {
      const before = (await ledgerOf(docker, 'tm-staging')).length;
      const r = await cli('--config', checkout('third'), 'ship', 'staging', A);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(
        new RegExp(
          `chunk \\d+ of ${A} is damaged \\(${key}: ${victim.bytes} bytes, sha256 [0-9a-f]{64}\\); refused`,
        ),
      );
      expect(await currentOf(docker, 'tm-staging')).toBe(`${ROOT}/releases/${B}`);
      expect((await ledgerOf(docker, 'tm-staging')).length).toBe(before);
    } finally {
      await c.send(new PutObjectCommand({ Bucket: 'tm-ci', Key: key, Body: good }));
      c.destroy();
    }
  });

  it('a store that drops mid-upload and then refuses leaves nothing listed; publish again completes it', async () => {
    await s3.bucket('tm-drop');
    // Cuts the connection that carries the 5,000,000th byte (of 7 MB); every connection after that is refused.
    let sent = 0;
    let cut = false;
    const proxy = net.createServer((client) => {
      if (cut) return client.destroy();
      const up = net.connect({ host: '127.0.0.1', port: s3.port });
      const kill = () => (client.destroy(), up.destroy());
      client.on('data', (d: Buffer) => {
        sent += d.length;
        if (sent >= 5_000_000) {
          cut = true;
          return kill();
        }
        up.write(d);
      });
      up.on('data', (d: Buffer) => client.write(d));
      for (const s of [client, up]) s.on('error', kill).on('close', kill);
    });
    await new Promise<void>((r) => proxy.listen(PROXY, '127.0.0.1', r));
    try {
      const viaProxy = ci.variant('drop', (t) =>
        t.replace(
          'store: s3://tm-ci/demo',
          `store: s3://tm-drop/demo\ns3:\n  endpoint: http://127.0.0.1:${PROXY}`,
        ),
      );
      const r = await cli('--config', viaProxy, 'artifacts', 'publish', B);
      expect(r.code).toBe(1);
      expect(cut).toBe(true);
      expect(r.err).toMatch(
        /s3:\/\/tm-drop\/demo\/: (upload|head) s3:\/\/tm-drop\/demo\/chunks\/[0-9a-f]{64}: /,
      );
    } finally {
      proxy.close();
    }
    const direct = ci.variant('drop-direct', (t) =>
      t.replace('store: s3://tm-ci/demo', 'store: s3://tm-drop/demo'),
    );
    const keys = await bucketKeys('tm-drop');
    expect(keys.some((k) => k.startsWith('demo/manifests/'))).toBe(false);
    // Half uploaded: some chunks made it before the cut.
    expect(keys.length).toBeGreaterThan(0);
    expect(keys.length).toBeLessThan(manifestOf(ci.dir, B).archive.chunks!.length);
    expect(JSON.parse((await ok(direct, '--json', 'artifacts')).out)).toEqual([]);
    const again = lastJson((await ok(direct, '--json', 'artifacts', 'publish', B)).out) as Record<
      string,
      number
    >;
    expect(again.uploaded_chunks).toBe(again.chunks! - keys.length);
    expect(
      (JSON.parse((await ok(direct, '--json', 'artifacts')).out) as { id: string }[]).map((x) => x.id),
    ).toEqual([B]);
    // Published once: again is a no-op; a manifest under the same key with other content is never overwritten.
    const twice = lastJson((await ok(direct, '--json', 'artifacts', 'publish', B)).out);
    expect(twice).toMatchObject({ published: false, uploaded_chunks: 0 });
    const c = s3.client();
    await c.send(new PutObjectCommand({ Bucket: 'tm-drop', Key: `demo/manifests/${B}.json`, Body: '{}' }));
    c.destroy();
    const other = await cli('--config', direct, 'artifacts', 'publish', B);
    expect(other.code).toBe(1);
    expect(other.err).toContain(
      `demo/manifests/${B}.json exists with other content; manifests are never overwritten`,
    );
  });
});

describe('S3 errors', () => {
  it('wrong credentials are bad input (exit 2) with a hint, and the secret is not printed', async () => {
    const good = process.env.AWS_SECRET_ACCESS_KEY!;
    process.env.AWS_SECRET_ACCESS_KEY = 'wrong-secret-key-0000000000000000000000000';
    try {
      const r = await cli('--config', laptop, 'artifacts');
      expect(r.code).toBe(2);
      expect(r.err).toMatch(
        /^ckan-release: s3:\/\/tm-ci\/demo\/: list s3:\/\/tm-ci\/demo\/manifests\/: SignatureDoesNotMatch/m,
      );
      expect(r.err).toMatch(/hint: check the credentials and their permissions on the bucket/);
      expect(r.err).not.toContain('wrong-secret-key');
    } finally {
      process.env.AWS_SECRET_ACCESS_KEY = good;
    }
  });
});

describe('diff, notify and history', () => {
  it('diff B A: the extension that changed with its commit subjects, pip freeze, files', async () => {
    const d = JSON.parse((await ok(ci.config, '--json', 'diff', B, A)).out) as {
      sources: { name: string; status: string; commits: { subject: string }[] | null }[];
      pip: { changed: { name: string; from: string; to: string }[] };
      files: { changed: number; bytes_changed: number };
      summary: string;
    };
    expect(d.sources.filter((s) => s.status !== 'same').map((s) => s.name)).toEqual(['ckanext-showcase']);
    expect(d.sources.find((s) => s.name === 'ckanext-showcase')!.commits!.map((c) => c.subject)).toEqual([
      'ckanext-showcase 1.1.0 (ckan-release test fixture)',
    ]);
    expect(d.pip.changed.map((x) => x.name)).toContain('ckanext-showcase');
    expect(d.files.changed).toBeGreaterThan(0);
    expect(d.summary).toMatch(
      /^ckanext-showcase v1\.0\.0 -> v1\.1\.0 \(1 commit\); pip: \d+ packages? changed; files: /,
    );
    const text = (await ok(ci.config, 'diff', B, A)).out;
    process.stderr.write(`[team] diff B A:\n${text}`);
    expect(text).toMatch(
      /ckanext-showcase: v1\.0\.0 \([0-9a-f]{12}\) -> v1\.1\.0 \([0-9a-f]{12}\)\n {4}[0-9a-f]{12} ckanext-showcase 1\.1\.0/,
    );
  });

  it('notify: start and success of promote/rollback with who, hosts and the diff; a hanging and a refusing webhook only reported', async () => {
    const who = `${os.userInfo().username}@${os.hostname()}`;
    const promote = received.filter((x) => x.body.operation === 'promote');
    expect(promote.map((x) => x.body.event)).toEqual(['start', 'success']);
    expect(promote[1]!.body).toMatchObject({
      environment: 'production',
      artifact: B,
      who,
      hosts: ['tm-web1', 'tm-web2'],
      from: [null, null],
    });
    expect(promote[1]!.body.text).toMatch(
      new RegExp(`^ckan-release promote production ${B}: done by ${who} in [\\d.]+ s, 2 hosts healthy`),
    );
    const rollback = received.filter((x) => x.body.operation === 'rollback');
    expect(rollback.map((x) => x.body.event)).toEqual(['start', 'success']);
    expect(rollback[1]!.body.diff).toMatch(/^ckanext-showcase v1\.0\.0 -> v1\.1\.0/);

    // A ship that fails before the switch (a before_switch hook exits 3): a failure notice. The other
    // webhooks hang (bounded) and refuse: reported, never fatal.
    const failing = ci.variant('failing', (t) =>
      t
        .replace(`notify:\n`, `notify:\n  - http://127.0.0.1:${HANG}/x\n  - http://127.0.0.1:${REFUSED}/y\n`)
        .replace(/before_switch:\n.*\n/, "before_switch:\n      - { run: 'exit 3', once: true }\n"),
    );
    const r = await cli('--config', failing, 'ship', 'staging', A);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/failed before any host switched/);
    expect(r.err).toContain(
      `notify http://127.0.0.1:${HANG}/...: start notice failed: no answer within 5 s (the deploy goes on)`,
    );
    expect(r.err).toMatch(
      new RegExp(`notify http://127\\.0\\.0\\.1:${REFUSED}/\\.\\.\\.: failure notice failed: .*ECONNREFUSED`),
    );
    const failure = received.filter((x) => x.body.event === 'failure');
    expect(failure).toHaveLength(1);
    expect(failure[0]!.body).toMatchObject({ operation: 'ship', environment: 'staging', artifact: A });
    expect(failure[0]!.body.text).toMatch(/FAILED/);
    expect(await currentOf(docker, 'tm-staging')).toBe(`${ROOT}/releases/${B}`);

    // No secret, and not the webhook URL's own path, in any payload.
    const secrets = ['staging', 'production'].flatMap((e) =>
      readFileSync(path.join(ci.dir, 'secrets', `${e}.yml`), 'utf8')
        .split('\n')
        .filter((l) => /^\w+: /.test(l))
        .map((l) => l.split(': ')[1]!),
    );
    expect(secrets.length).toBe(4);
    for (const x of received) {
      for (const s of [...secrets, 'T0KEN']) expect(x.raw).not.toContain(s);
      expect(x.path).toBe('/hooks/T0KEN-in-the-path');
    }
  });

  it('history: every operation from the ledgers merged, with who, from -> to, result and duration', async () => {
    const who = `${os.userInfo().username}@${os.hostname()}`;
    type Op = {
      what: string;
      artifact: string;
      from: (string | null)[];
      result: string;
      who: string;
      hosts: string[];
      seconds: number;
    };
    const prod = (
      JSON.parse((await ok(laptop, '--json', 'history', 'production')).out) as { operations: Op[] }
    ).operations;
    expect(prod.map((o) => [o.what, o.from, o.artifact, o.result, o.hosts])).toEqual([
      ['promote', [null], B, 'healthy', ['tm-web1', 'tm-web2']],
      ['rollback', [B], A, 'healthy', ['tm-web1', 'tm-web2']],
    ]);
    for (const o of prod) {
      expect(o.who).toBe(who);
      expect(o.seconds).toBeGreaterThan(0);
    }
    const staging = (
      JSON.parse((await ok(ci.config, '--json', 'history', 'staging')).out) as { operations: Op[] }
    ).operations;
    expect(staging.map((o) => [o.what, o.artifact, o.result])).toEqual([
      ['ship', B, 'healthy'],
      ['ship', A, 'incomplete'],
    ]);
    const text = (await ok(ci.config, 'history', 'staging')).out;
    process.stderr.write(
      `[team] history staging:\n${text}[team] history production:\n${(await ok(laptop, 'history', 'production')).out}`,
    );
    expect(text).toMatch(
      new RegExp(
        `Z  ${who.replace(/[.]/g, '\\.')}\\s+ship\\s+none -> ${B}  healthy [\\d.]+s  \\[tm-staging\\]`,
      ),
    );
    expect(text).toMatch(/ship\s+- -> \S+ {2}incomplete {2}\[tm-staging\]/);
  });
});

describe('the CI recipe', () => {
  it('examples/ci/ckan-release-ci.sh: build-and-stage on one runner, promote on a fresh one', async () => {
    const script = path.resolve('examples/ci/ckan-release-ci.sh');
    if (!existsSync(path.resolve('dist/cli.js')))
      throw new Error('dist/ is missing: run `npm run build` first');
    const run = (cwd: string, config: string, step: string) =>
      new Promise<{ code: number; out: string; err: string }>((resolve) => {
        execFile(
          'bash',
          [script, step],
          {
            cwd,
            env: {
              ...process.env,
              CKAN_RELEASE: `node ${path.resolve('bin/ckan-release')}`,
              CKAN_RELEASE_CONFIG: config,
            },
            maxBuffer: 64 << 20,
            encoding: 'utf8',
          },
          (e: Error | null, out: string, err: string) =>
            resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out, err }),
        );
      });
    const stage = await run(ci.dir, ci.config, 'build-and-stage');
    expect(stage.code, stage.err).toBe(0);
    const id = /^built and published (\S+)$/m.exec(stage.out)![1]!;
    // Same inputs as A: only the chunks that hold the release's own path (RELEASE.json, the editable
    // installs' metadata) are new.
    const pub = new RegExp(`published ${id} to s3://tm-ci/demo/: (\\d+) of (\\d+) chunks uploaded`).exec(
      stage.err,
    )!;
    expect(Number(pub[1])).toBeLessThan(Number(pub[2]));
    expect(stage.out).toContain(`tm-staging: ${B} -> ${id}\n`);
    expect(await currentOf(docker, 'tm-staging')).toBe(`${ROOT}/releases/${id}`);
    const staged = JSON.parse(readFileSync(path.join(ci.dir, 'history-staging.json'), 'utf8')) as {
      operations: { artifact: string; result: string }[];
    };
    expect(staged.operations.at(-1)).toMatchObject({ artifact: id, result: 'healthy' });

    const runner = checkout('runner');
    const prom = await run(path.dirname(runner), runner, 'promote');
    expect(prom.code, prom.err).toBe(0);
    expect(prom.err).toContain(`fetched ${id} from s3://tm-ci/demo/`);
    for (const h of ['tm-web1', 'tm-web2'] as const) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${id}`);
      expect((await served(httpPort[h])).showcase).toBe('1.1.0');
    }
  });
});
