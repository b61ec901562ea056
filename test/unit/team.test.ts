// The pure parts of the team features: the S3 store's config, history's merge of ledgers, diff of two
// manifests, and the notification's text and its bounded, never-fatal delivery.
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { diffManifests, diffSummary, freezeEntries } from '../../src/artifact/diff.js';
import { parseS3Url } from '../../src/artifact/location.js';
import type { Manifest } from '../../src/artifact/manifest.js';
import { parseConfig } from '../../src/config/load.js';
import { mergeLedgers } from '../../src/deploy/history.js';
import { notify, webhookName } from '../../src/deploy/notify.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-team-'));
mkdirSync(path.join(dir, 'templates'));
writeFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'x\n');
const file = path.join(dir, 'ckan-release.yml');
const BASE = `project: portal
ckan: { source: https://github.com/ckan/ckan.git, ref: ckan-2.9.11 }
config: { template: templates/ckan.ini.j2 }
deploy: { restart: 'true' }
environments:
  staging: { hosts: [a] }
`;

describe('store: s3://', () => {
  it('parses bucket and prefix; the local store becomes its cache', () => {
    expect(parseS3Url('s3://b/x/y/')).toEqual({ bucket: 'b', prefix: 'x/y/' });
    expect(parseS3Url('s3://b')).toEqual({ bucket: 'b', prefix: '' });
    expect(parseS3Url('/srv/store')).toBeUndefined();
    const c = parseConfig(
      `${BASE}store: s3://my-bucket/ckan\ns3: { endpoint: 'http://127.0.0.1:9000', force_path_style: false }\nnotify: [https://hooks.example/x]\n`,
      file,
      { env: {} },
    );
    expect(c.s3).toEqual({
      bucket: 'my-bucket',
      prefix: 'ckan/',
      endpoint: 'http://127.0.0.1:9000',
      region: undefined,
      profile: undefined,
      forcePathStyle: false,
    });
    expect(c.store).toBe(path.join(dir, '.ckan-release/artifacts'));
    expect(c.notify).toEqual(['https://hooks.example/x']);
  });

  it('refuses a bad bucket name and s3 settings without an S3 store, naming the line', () => {
    expect(() => parseConfig(`${BASE}store: s3://Bad_Bucket/x\n`, file, { env: {} })).toThrow(
      /ckan-release\.yml:7: store: expected s3:\/\/BUCKET\/PREFIX with a valid bucket name/,
    );
    expect(() => parseConfig(`${BASE}s3: { region: eu-west-1 }\n`, file, { env: {} })).toThrow(
      /s3: settings for an S3 store, but `store:` is not an s3:\/\/BUCKET\/PREFIX URL/,
    );
    expect(() => parseConfig(`${BASE}notify: [ftp://x]\n`, file, { env: {} })).toThrow(
      /notify\[0\]: expected an http\(s\) webhook URL/,
    );
  });
});

describe('history', () => {
  const by = { user: 'ana', machine: 'laptop', operation: 'ship staging R2' };
  it('merges one operation across hosts by its token; failed and incomplete ones too; old entries stand alone', () => {
    const ops = mergeLedgers([
      {
        host: 'web1',
        entries: [
          { event: 'adopted', release: 'R0', time: '2026-01-01T00:00:00Z' },
          { event: 'staged', release: 'R2', op: 'o1', by, time: '2026-01-02T00:00:05Z' },
          { event: 'activated', release: 'R2', op: 'o1', by, previous: 'R1', time: '2026-01-02T00:00:06Z' },
          {
            event: 'healthy',
            release: 'R2',
            op: 'o1',
            by,
            started: '2026-01-02T00:00:00Z',
            time: '2026-01-02T00:00:08Z',
          },
          { event: 'pruned', release: 'R0', op: 'o1', time: '2026-01-02T00:00:09Z' },
          { event: 'staged', release: 'R3', op: 'o2', by, time: '2026-01-03T00:00:01Z' },
          { event: 'activated', release: 'R3', op: 'o2', by, previous: 'R2', time: '2026-01-03T00:00:01Z' },
          {
            event: 'failed',
            release: 'R3',
            op: 'o2',
            by,
            started: '2026-01-03T00:00:00Z',
            why: 'hook',
            time: '2026-01-03T00:00:02Z',
          },
        ],
      },
      {
        host: 'web2',
        entries: [
          { event: 'staged', release: 'R2', op: 'o1', by, time: '2026-01-02T00:00:04Z' },
          { event: 'activated', release: 'R2', op: 'o1', by, previous: 'R1', time: '2026-01-02T00:00:06Z' },
          {
            event: 'healthy',
            release: 'R2',
            op: 'o1',
            by,
            started: '2026-01-02T00:00:00Z',
            time: '2026-01-02T00:00:10Z',
          },
          { event: 'staged', release: 'R4', op: 'o3', by, time: '2026-01-04T00:00:00Z' },
        ],
      },
    ]);
    expect(ops.map((o) => [o.what, o.from, o.artifact, o.result, o.hosts, o.seconds, o.who])).toEqual([
      ['setup', [], 'R0', 'adopted', ['web1'], null, null],
      ['ship', ['R1'], 'R2', 'healthy', ['web1', 'web2'], 10, 'ana@laptop'],
      ['ship', ['R2'], 'R3', 'failed', ['web1'], 2, 'ana@laptop'],
      ['ship', [], 'R4', 'incomplete', ['web2'], null, 'ana@laptop'],
    ]);
    expect(ops[2]!.why).toBe('hook');
  });
});

function manifest(id: string, showcase: string, files: [string, string][], freeze: string[]): Manifest {
  return {
    id,
    ckan: { ref: 'ckan-2.9.11', commit: 'c'.repeat(40) },
    extensions: [{ name: 'ckanext-showcase', ref: showcase, commit: showcase.padEnd(40, '0'), plugins: [] }],
    patches: [],
    pip: { freeze },
    archive: { bytes: 10, sha256: 'x' },
    files: files.map(([p, sha]) => ({
      path: p,
      type: 'file',
      mode: '0644',
      size: 100,
      sha256: sha,
      target: null,
    })),
  } as unknown as Manifest;
}

describe('history: times', () => {
  it('an operation of less than a second lasts that long; whole-second entries of older agents sort by their moment', () => {
    const by = { user: 'ana', machine: 'laptop', operation: 'rollback production' };
    const ops = mergeLedgers([
      {
        host: 'web1',
        entries: [
          // An older agent's whole seconds, an operation of its own before the next one.
          { event: 'healthy', release: 'R1', op: 'o1', by, time: '2026-01-02T00:00:05Z' },
          {
            event: 'activated',
            release: 'R2',
            op: 'o2',
            by,
            previous: 'R1',
            time: '2026-01-02T00:00:05.700Z',
          },
          {
            event: 'healthy',
            release: 'R2',
            op: 'o2',
            by,
            started: '2026-01-02T00:00:05.368Z',
            time: '2026-01-02T00:00:05.912Z',
          },
        ],
      },
    ]);
    expect(ops.map((o) => [o.op, o.time, o.seconds])).toEqual([
      ['o1', '2026-01-02T00:00:05Z', null],
      ['o2', '2026-01-02T00:00:05.368Z', 0.544],
    ]);
  });
});

describe('diff', () => {
  it('sources, pip freeze and files between two manifests', () => {
    const a = manifest(
      'A',
      'v1.0.0',
      [
        ['x.py', '1'],
        ['y.py', '2'],
        ['gone.py', '3'],
      ],
      ['ckanext-showcase==1.0.0', 'six==1.16.0'],
    );
    const b = manifest(
      'B',
      'v1.1.0',
      [
        ['x.py', '1'],
        ['y.py', '9'],
        ['new.py', '4'],
      ],
      ['ckanext-showcase==1.1.0', 'six==1.16.0', 'rich==13'],
    );
    const d = diffManifests(a, b);
    expect(d.sources.map((s) => [s.name, s.status])).toEqual([
      ['ckan', 'same'],
      ['ckanext-showcase', 'changed'],
    ]);
    expect(d.pip).toEqual({
      added: ['rich==13'],
      removed: [],
      changed: [{ name: 'ckanext-showcase', from: '==1.0.0', to: '==1.1.0' }],
    });
    expect(d.files).toMatchObject({ added: 1, removed: 1, changed: 1, bytes_changed: 200 });
    expect(diffSummary(d)).toBe(
      'ckanext-showcase v1.0.0 -> v1.1.0; pip: 2 packages changed; files: 1 changed, 1 added, 1 removed (0.0 MB)',
    );
    expect(diffSummary(diffManifests(a, a))).toBe('no change');
    expect([
      ...freezeEntries([
        '# Editable install with no version control (ckanext-showcase==1.1.0)',
        '-e /usr/lib/ckan/releases/X/src/ckanext-showcase',
        '-e git+https://example.org/x.git@abc#egg=ckanext_foo',
        'Flask_Babel==1.0.0',
        'pkg @ file:///wheels/pkg-1.whl',
      ]),
    ]).toEqual([
      ['ckanext-showcase', '==1.1.0 (editable)'],
      ['ckanext-foo', ' (editable)'],
      ['flask-babel', '==1.0.0'],
      ['pkg', ' @ file:///wheels/pkg-1.whl'],
    ]);
  });
});

describe('notify', () => {
  it('names a webhook by its origin only; a hanging one is cut at the bound and reported, never thrown', async () => {
    expect(webhookName('https://hooks.slack.com/services/T0/B0/secret')).toBe('https://hooks.slack.com/...');
    const bodies: string[] = [];
    const server = http.createServer((req, res) => {
      let raw = '';
      req.on('data', (c: Buffer) => (raw += c.toString()));
      req.on('end', () => {
        bodies.push(raw);
        if (req.url === '/hang') return; // never answers
        res.statusCode = req.url === '/500' ? 500 : 200;
        res.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const said: string[] = [];
    const reports = await notify(
      [`http://127.0.0.1:${port}/ok`, `http://127.0.0.1:${port}/hang`, `http://127.0.0.1:${port}/500`],
      {
        event: 'start',
        operation: 'ship',
        environment: 'staging',
        artifact: 'R1',
        who: 'a@b',
        hosts: ['h'],
        error: 'pw=s3cret',
      },
      { mask: (t) => t.split('s3cret').join('***'), say: (l) => said.push(l), timeoutMs: 3000 },
    );
    server.closeAllConnections();
    server.close();
    expect(reports.map((r) => r.ok)).toEqual([true, false, false]);
    expect(said.sort()).toEqual([
      `notify http://127.0.0.1:${port}/...: start notice failed: no answer within 3 s (the deploy goes on)`,
      `notify http://127.0.0.1:${port}/...: start notice refused: HTTP 500 (the deploy goes on)`,
    ]);
    expect(bodies).toHaveLength(3);
    for (const b of bodies) {
      expect(b).not.toContain('s3cret');
      expect(JSON.parse(b)).toMatchObject({
        text: 'ckan-release ship staging R1: started by a@b on 1 host (h)',
        event: 'start',
      });
    }
  });
});

describe('examples/ci', () => {
  it('both CI files are valid YAML whose jobs run the shared script: build-and-stage on push, promote as a manual step', () => {
    const gh = parse(readFileSync('examples/ci/github-actions.yml', 'utf8')) as {
      on: Record<string, unknown>;
      jobs: Record<string, { environment: string; needs?: string; steps: { run?: string }[] }>;
    };
    expect(Object.keys(gh.on)).toContain('push');
    expect(
      gh.jobs['build-and-stage']!.steps.some((s) => s.run?.includes('ckan-release-ci.sh build-and-stage')),
    ).toBe(true);
    expect(gh.jobs['promote-production']).toMatchObject({
      needs: 'build-and-stage',
      environment: 'production',
    });
    expect(
      gh.jobs['promote-production']!.steps.some((s) => s.run?.includes('ckan-release-ci.sh promote')),
    ).toBe(true);
    const gl = parse(readFileSync('examples/ci/gitlab-ci.yml', 'utf8')) as Record<
      string,
      { script?: string[]; rules?: { when?: string }[] }
    >;
    expect(gl['build-and-stage']!.script).toEqual([
      expect.stringContaining('ckan-release-ci.sh build-and-stage'),
    ]);
    expect(gl['promote-production']!.script).toEqual([expect.stringContaining('ckan-release-ci.sh promote')]);
    expect(gl['promote-production']!.rules![0]!.when).toBe('manual');
  });
});
