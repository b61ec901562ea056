// The host agent's `fetch-manifest` and `fetch` commands (deploy.fetch: direct), run as the tool runs
// them (assets/host/ckan_release_host.py COMMAND JSON, URLs on stdin) by Python 2.7, 3.6 and python3,
// against an HTTP server of the test's own on 127.0.0.1 that stands in for the S3 store's presigned
// GETs: the chunks arrive in parallel, each checked, and unpack through the same receive as an SSH
// ship; the chunk cache serves a second fetch; a damaged chunk or a 404 is refused as a bad artifact;
// a closed port or a 403 is "store-unreachable" (the tool falls back to SSH) with nothing unpacked;
// no URL (they carry signatures) appears in any answer or error.
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const SIG = 'X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDTEST&X-Amz-Signature=5ec7e75167a7';

interface Chunk {
  sha256: string;
  bytes: number;
}
let server: http.Server;
let base = '';
let closedPort = 0;
const objects = new Map<string, Buffer>();
let inFlight = 0;
let maxInFlight = 0;
const requests: string[] = [];
let manifestText: Buffer;
let chunks: Chunk[];
const ID = '20261201000000Z-0123abcd';

/** A small release: a directory, files, a symlink; its GNU tar cut into 3 gzip members (the chunks). */
function makeArtifact(): void {
  const tree = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-fetch-tree-'));
  mkdirSync(path.join(tree, 'pkg'));
  const a = Buffer.alloc(400_000);
  for (let i = 0; i < a.length; i += 32) createHash('sha256').update(String(i)).digest().copy(a, i);
  writeFileSync(path.join(tree, 'pkg/a.py'), a);
  writeFileSync(path.join(tree, 'pkg/b.txt'), 'b\n'.repeat(50_000));
  symlinkSync('a.py', path.join(tree, 'pkg/link'));
  writeFileSync(path.join(tree, 'RELEASE.json'), '{}\n');
  const names = ['pkg', 'pkg/a.py', 'pkg/b.txt', 'pkg/link', 'RELEASE.json'];
  const tar = execFileSync('tar', [
    '--format=gnu',
    '--no-recursion',
    '--numeric-owner',
    '--owner=0',
    '--group=0',
    '-cf',
    '-',
    '-C',
    tree,
    ...names.map((n) => `./${n}`),
  ]);
  // Gzip members cut anywhere: the agent inflates them as one stream.
  const cuts = [0, 150_000, 420_000, tar.length];
  const members = cuts.slice(1).map((end, i) => gzipSync(tar.subarray(cuts[i], end)));
  chunks = members.map((b) => ({ sha256: sha256(b), bytes: b.length }));
  members.forEach((b) => objects.set(`/chunks/${sha256(b)}`, b));
  const archive = Buffer.concat(members);
  const files = names.map((n) => {
    const p = path.join(tree, n);
    if (n === 'pkg') return { path: n, type: 'dir', mode: '0755', size: 0, sha256: null };
    if (n === 'pkg/link') return { path: n, type: 'symlink', mode: '0777', size: 0, target: readlinkSync(p) };
    const data = readFileSync(p);
    return { path: n, type: 'file', mode: '0644', size: data.length, sha256: sha256(data) };
  });
  manifestText = Buffer.from(
    JSON.stringify(
      {
        id: ID,
        files,
        archive: { file: 'release.tar.gz', bytes: archive.length, sha256: sha256(archive), chunks },
      },
      null,
      2,
    ),
  );
  objects.set('/manifest', manifestText);
}

beforeAll(async () => {
  makeArtifact();
  server = http.createServer((req, res) => {
    const [p, query] = (req.url ?? '').split('?');
    requests.push(p!);
    if (query !== SIG) return res.writeHead(400).end('no signature');
    if (p!.startsWith('/forbidden/'))
      return res.writeHead(403).end('<Error><Code>AccessDenied</Code><Message>x</Message></Error>');
    const damaged = p!.startsWith('/damaged/');
    const body = objects.get(damaged ? p!.slice('/damaged'.length) : p!);
    if (!body) return res.writeHead(404).end('<Error><Code>NoSuchKey</Code></Error>');
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    // Each chunk takes a while: the downloads overlap when the agent runs them in parallel.
    setTimeout(() => {
      inFlight--;
      const out = Buffer.from(body);
      if (damaged) out[Math.floor(out.length / 2)]! ^= 1;
      res.writeHead(200, { 'content-length': out.length }).end(out);
    }, 300);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const probe = http.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
});

afterAll(() => server?.close());

const url = (p: string) => `${base}${p}?${SIG}`;

interface Answer {
  code: number;
  json: Record<string, unknown>;
  stdout: string;
  stderr: string;
}

/** One agent command as the tool runs it: JSON arguments on the command line, the URLs on stdin. */
function agent(python: string, command: string, args: object, stdin: object): Promise<Answer> {
  return new Promise((resolve) => {
    const child = execFile(
      python,
      [AGENT_SCRIPT, command, JSON.stringify(args)],
      { env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } },
      (e, stdout, stderr) => {
        const last = stdout.trim().split('\n').pop() ?? '';
        resolve({
          code: e ? ((e as { code?: number }).code ?? 1) : 0,
          json: last.startsWith('{') ? (JSON.parse(last) as Record<string, unknown>) : {},
          stdout,
          stderr,
        });
      },
    );
    child.stdin!.end(JSON.stringify(stdin));
  });
}

function layout(): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-fetch-root-'));
  mkdirSync(path.join(root, 'releases'));
  mkdirSync(path.join(root, '.ckan-release/tmp'), { recursive: true });
  return root;
}

describe.each(TEST_PYTHONS)('the host agent fetches from the store itself (Python $label)', (py) => {
  let python: string;
  let root: string;
  beforeAll(() => {
    python = requirePython(py);
    root = layout();
  });
  const manifestPath = (op: string) => path.join(root, '.ckan-release/tmp', `${op}-manifest.json`);
  const getManifest = (op: string, u = url('/manifest')) =>
    agent(
      python,
      'fetch-manifest',
      { root, id: ID, op, bytes: manifestText.length, sha256: sha256(manifestText) },
      { url: u, chunks },
    );
  const fetch = (op: string, withUrls: (c: Chunk, i: number) => string | undefined) =>
    agent(
      python,
      'fetch',
      { root, id: ID, op, manifest: manifestPath(op), owner: null, group: null },
      { chunks: chunks.map((c, i) => ({ ...c, ...(withUrls(c, i) ? { url: withUrls(c, i) } : {}) })) },
    );
  const noUrl = (a: Answer) => {
    for (const text of [a.stdout, a.stderr]) {
      expect(text).not.toContain('X-Amz-Signature');
      expect(text).not.toContain('AKIDTEST');
      expect(text).not.toContain(base);
    }
  };

  it('downloads the manifest and every chunk in parallel, checks them, and unpacks the release', async () => {
    const m = await getManifest('op1');
    expect(m.code, m.stderr).toBe(0);
    expect(m.json).toEqual({ cached: [], manifest: manifestPath('op1') });
    expect(readFileSync(manifestPath('op1'))).toEqual(manifestText);
    maxInFlight = 0;
    const f = await fetch('op1', (c) => url(`/chunks/${c.sha256}`));
    expect(f.code, f.stderr).toBe(0);
    expect(f.json).toMatchObject({ entries: 5, downloaded: 3, cached: 0 });
    expect(maxInFlight).toBe(3);
    const partial = path.join(root, 'releases', `.partial-${ID}-op1`);
    expect(f.json.partial).toBe(partial);
    expect(sha256(readFileSync(path.join(partial, 'pkg/a.py')))).toBe(
      sha256(readFileSync(path.join(partial, 'pkg/link'))),
    );
    expect(readFileSync(path.join(partial, 'pkg/b.txt'), 'utf8')).toBe('b\n'.repeat(50_000));
    expect(readdirSync(path.join(root, '.ckan-release/chunks')).sort()).toEqual(
      chunks.map((c) => c.sha256).sort(),
    );
    noUrl(f);
  });

  it('a second fetch takes every chunk from the chunk cache: nothing downloaded', async () => {
    const m = await getManifest('op2');
    expect(m.json.cached).toEqual(chunks.map((c) => c.sha256));
    const before = requests.length;
    const f = await fetch('op2', () => undefined);
    expect(f.code, f.stderr).toBe(0);
    expect(f.json).toMatchObject({ entries: 5, downloaded: 0, cached: 3 });
    expect(requests.length).toBe(before);
  });

  it('a cached chunk that was changed is not reported as cached (and is removed)', async () => {
    const victim = path.join(root, '.ckan-release/chunks', chunks[1]!.sha256);
    writeFileSync(victim, 'not the chunk');
    const m = await getManifest('op3');
    expect(m.json.cached).toEqual([chunks[0]!.sha256, chunks[2]!.sha256]);
    expect(existsSync(victim)).toBe(false);
  });

  it('a chunk with a flipped byte, or one the store lacks (404), is refused as a bad artifact', async () => {
    const damaged = await fetch('op3', (c, i) =>
      url(i === 1 ? `/damaged/chunks/${c.sha256}` : `/chunks/${c.sha256}`),
    );
    expect(damaged.code).toBe(3);
    expect(damaged.json.error).toBe('bad-artifact');
    expect(damaged.json.message).toMatch(
      new RegExp(
        `^chunk ${chunks[1]!.sha256} from the store is refused: the store sent ${chunks[1]!.bytes} bytes with sha256 [0-9a-f]{64}, expected`,
      ),
    );
    noUrl(damaged);
    const missing = await fetch('op3', (c, i) =>
      url(i === 1 ? `/chunks/nothing-here` : `/chunks/${c.sha256}`),
    );
    expect(missing.json.error).toBe('bad-artifact');
    expect(missing.json.message).toContain('the store does not have it (HTTP 404 NoSuchKey)');
    noUrl(missing);
  });

  it('a store the host cannot reach (closed port, 403) is store-unreachable, before anything is unpacked', async () => {
    const partial = path.join(root, 'releases', `.partial-${ID}-op4`);
    const refused = await getManifest('op4', `http://127.0.0.1:${closedPort}/manifest?${SIG}`);
    expect(refused.code).toBe(3);
    expect(refused.json.error).toBe('store-unreachable');
    expect(refused.json.message).toMatch(
      /^cannot fetch the manifest of \S+ from the store: .*(refused|Errno 111)/i,
    );
    noUrl(refused);
    writeFileSync(manifestPath('op4'), manifestText);
    // The cache lacks chunk 1 (removed above): its download is the first, and it is forbidden.
    const forbidden = await fetch('op4', (c, i) => (i === 1 ? url(`/forbidden/${c.sha256}`) : undefined));
    expect(forbidden.code).toBe(3);
    expect(forbidden.json.error).toBe('store-unreachable');
    expect(forbidden.json.message).toBe(
      `cannot fetch chunk ${chunks[1]!.sha256} from the store: HTTP 403 AccessDenied`,
    );
    expect(existsSync(partial)).toBe(false);
    noUrl(forbidden);
  });
});
