// deploy.fetch: direct, its pure parts: the config key (default ssh; direct needs an S3 store), the
// presigned URLs (signed here with no request sent, short-lived, GET of one object) and their redaction.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { S3Store } from '../../src/artifact/s3.js';
import { parseConfig } from '../../src/config/load.js';
import { URL_SECONDS } from '../../src/deploy/fetch.js';
import { redactPresigned } from '../../src/redact.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-fetch-'));
mkdirSync(path.join(dir, 'templates'));
writeFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'x\n');
const file = path.join(dir, 'ckan-release.yml');
const BASE = `project: portal
ckan: { source: https://github.com/ckan/ckan.git, ref: ckan-2.9.11 }
config: { template: templates/ckan.ini.j2 }
environments:
  staging: { hosts: [a] }
`;

describe('deploy.fetch', () => {
  it('is ssh unless the config says direct, which needs an S3 store', () => {
    expect(parseConfig(`${BASE}deploy: { restart: 'true' }\n`, file, { env: {} }).deploy.fetch).toBe('ssh');
    const c = parseConfig(
      `${BASE}store: s3://my-bucket/p\ndeploy: { restart: 'true', fetch: direct }\n`,
      file,
      {
        env: {},
      },
    );
    expect(c.deploy.fetch).toBe('direct');
    expect(() =>
      parseConfig(`${BASE}deploy: { restart: 'true', fetch: direct }\n`, file, { env: {} }),
    ).toThrow(
      /ckan-release\.yml.*deploy\.fetch: direct: hosts download the artifact from an S3 store, but `store:` is not an s3:\/\/BUCKET\/PREFIX URL/,
    );
    expect(() =>
      parseConfig(`${BASE}deploy: { restart: 'true', fetch: rsync }\n`, file, { env: {} }),
    ).toThrow(/ckan-release\.yml:\d+: deploy\.fetch: expected one of ssh, direct/);
  });
});

describe('presigned URLs', () => {
  it('are signed here for one object and URL_SECONDS, and redactPresigned takes their query out', async () => {
    const store = new S3Store(
      { bucket: 'b', prefix: 'p/', endpoint: 'http://127.0.0.1:7500', region: 'us-east-1' },
      {},
    );
    const saved = { ...process.env };
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: 'AKIDUNITTEST', AWS_SECRET_ACCESS_KEY: 'unit-secret' });
    try {
      const sha = 'a'.repeat(64);
      const url = await store.presignGet(store.chunkKey(sha), URL_SECONDS);
      const u = new URL(url);
      expect(`${u.origin}${u.pathname}`).toBe(`http://127.0.0.1:7500/b/p/chunks/${sha}`);
      expect(u.searchParams.get('X-Amz-Expires')).toBe(String(URL_SECONDS));
      expect(u.searchParams.get('X-Amz-Signature')).toMatch(/^[0-9a-f]{64}$/);
      expect(u.searchParams.get('X-Amz-Credential')).toMatch(/^AKIDUNITTEST\//);
      const text = `GET ${url} failed; again "${url}"`;
      const clean = redactPresigned(text);
      expect(clean).toBe(
        `GET http://127.0.0.1:7500/b/p/chunks/${sha}?<redacted> failed; again "http://127.0.0.1:7500/b/p/chunks/${sha}?<redacted>"`,
      );
      expect(redactPresigned('https://example.org/x?a=1')).toBe('https://example.org/x?a=1');
    } finally {
      process.env = saved;
      store.close();
    }
  });
});
