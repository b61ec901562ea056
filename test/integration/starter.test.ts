// `init`'s starter as written, against the real CKAN of the test bed: its upstream GitHub URLs are
// mapped to ../shared/real-ckan/git/* through git's own url.<base>.insteadOf (GIT_CONFIG_* in the
// environment), never by editing the file; its refs must pin to the real upstream commits. Then it
// BUILDS: PyPI is stood in for by the test bed's wheelhouse, served by this test as a PEP 503 simple
// index on 127.0.0.1:8341, and the starter's `index_url:` is the one line changed (the builder hands it
// to pip inside the build container, so nothing in this process's environment could redirect it). The starter's network: host
// lets the build container reach 127.0.0.1.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveInputs, type BuildInputs } from '../../src/builder/inputs.js';
import { main } from '../../src/cli.js';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import type { Manifest } from '../../src/artifact/manifest.js';

const REAL = path.resolve(process.env.CKAN_RELEASE_REAL_CKAN ?? '../shared/real-ckan');
const HAVE_REAL = ['git/ckan.git', 'git/ckanext-scheming.git', 'wheelhouse'].every((p) =>
  existsSync(path.join(REAL, p)),
);
if (!HAVE_REAL)
  console.warn(
    `\n*** SKIPPED: the real CKAN of the test bed is not at ${REAL} (an input of the test bed, not of ` +
      'the project). Point CKAN_RELEASE_REAL_CKAN=DIR at a directory of the same layout ' +
      '(git/ckan.git, git/ckanext-scheming.git, wheelhouse/) to run it. ***\n',
  );

// This test's port only (its range: 8341-8349).
const INDEX_PORT = 8341;
const STARTER_INDEX_LINE = /^(\s*index_url:\s*)https:\/\/pypi\.org\/simple(\s.*)?$/m;

/** PEP 503: runs of -, _ and . become one -, lower case. */
const normalize = (name: string): string => name.replace(/[-_.]+/g, '-').toLowerCase();

/**
 * The wheelhouse as a PEP 503 simple index: /simple/ lists the projects, /simple/<normalized>/ links
 * each project's wheels (with their sha256), /files/<wheel> serves them.
 */
function serveWheelhouse(wheelhouse: string): Promise<http.Server> {
  const projects = new Map<string, { file: string; sha256: string }[]>();
  for (const file of readdirSync(wheelhouse).filter((f) => f.endsWith('.whl'))) {
    // A wheel's file name starts with its distribution name, '-' escaped as '_' (PEP 427).
    const name = normalize(file.split('-')[0]!);
    const sha256 = createHash('sha256')
      .update(readFileSync(path.join(wheelhouse, file)))
      .digest('hex');
    projects.set(name, [...(projects.get(name) ?? []), { file, sha256 }]);
  }
  const page = (title: string, links: string[]): string =>
    `<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0"><title>${title}</title></head><body>\n${links.join('\n')}\n</body></html>\n`;
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const send = (status: number, type: string, body: string | Buffer): void => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (url === '/simple/')
      return send(
        200,
        'text/html',
        page(
          'Simple index',
          [...projects.keys()].map((n) => `<a href="/simple/${n}/">${n}</a>`),
        ),
      );
    const m = /^\/simple\/([^/]+)\/?$/.exec(url);
    if (m) {
      const files = projects.get(normalize(m[1]!));
      if (!files) return send(404, 'text/plain', 'not found\n');
      return send(
        200,
        'text/html',
        page(
          `Links for ${m[1]}`,
          files.map((f) => `<a href="/files/${f.file}#sha256=${f.sha256}">${f.file}</a>`),
        ),
      );
    }
    const wheel = /^\/files\/([^/]+\.whl)$/.exec(url)?.[1];
    if (wheel && projects.get(normalize(wheel.split('-')[0]!))?.some((f) => f.file === wheel)) {
      served.add(wheel);
      return send(200, 'application/octet-stream', readFileSync(path.join(wheelhouse, wheel)));
    }
    send(404, 'text/plain', 'not found\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', (e) =>
      reject(new Error(`the test's package index cannot listen on 127.0.0.1:${INDEX_PORT}: ${e.message}`)),
    );
    server.listen(INDEX_PORT, '127.0.0.1', () => resolve(server));
  });
}

const MAP: Record<string, string> = {
  'https://github.com/ckan/ckan.git': 'git/ckan.git',
  'https://github.com/ckan/ckanext-scheming.git': 'git/ckanext-scheming.git',
};

let dir: string;
let config: Config;
let inputs: BuildInputs;
let written: string;
let server: http.Server | undefined;
/** The wheels the index served: what pip fetched from it. */
const served = new Set<string>();
const saved: Record<string, string | undefined> = {};

beforeAll(async () => {
  if (!HAVE_REAL) return;
  dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-starter-'));
  const file = path.join(dir, 'ckan-release.yml');
  const r = { code: 0, err: '' };
  r.code = await main(['--config', file, 'init'], {
    out: () => undefined,
    err: (t) => (r.err += t),
    env: process.env,
  });
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  written = readFileSync(file, 'utf8');
  config = loadConfig(file);
  // Mirrors and work directories of this test only; the build below reuses the mirrors.
  const env: Record<string, string> = {
    CKAN_RELEASE_CACHE: path.join(dir, 'cache'),
    GIT_CONFIG_COUNT: String(Object.keys(MAP).length),
  };
  Object.entries(MAP).forEach(([url, local], i) => {
    env[`GIT_CONFIG_KEY_${i}`] = `url.${path.join(REAL, local)}.insteadOf`;
    env[`GIT_CONFIG_VALUE_${i}`] = url;
  });
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  inputs = await resolveInputs(config, path.join(dir, 'cache/git'));
}, 300_000);

afterAll(async () => {
  if (server) await new Promise((resolve) => server!.close(resolve));
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

describe.skipIf(!HAVE_REAL)("init's starter, as written", () => {
  it('names upstream sources only; nothing in the file points at the test bed', () => {
    const text = readFileSync(path.join(dir, 'ckan-release.yml'), 'utf8');
    expect(text).not.toContain('real-ckan');
    expect(config.ckan.url).toBe('https://github.com/ckan/ckan.git');
  });

  it('pins CKAN 2.11.5 and ckanext-scheming 3.1.0 to their upstream commits', () => {
    expect(inputs.ckan.ref).toBe('ckan-2.11.5');
    expect(inputs.ckan.commit).toMatch(/^69f790d9e378/);
    expect(inputs.extensions.map((x) => [x.name, x.ref])).toEqual([['ckanext-scheming', 'release-3.1.0']]);
  });

  it("finds no requirements file in ckanext-scheming 3.1.0 (its dependencies are in setup.py): 'auto' installs none", () => {
    const x = inputs.extensions[0]!;
    expect(x.requirements).toBe('auto');
    const has = (f: string) => {
      try {
        execFileSync('git', ['--git-dir', x.mirror, 'cat-file', '-e', `${x.commit}:${f}`], {
          stdio: 'ignore',
        });
        return true;
      } catch {
        return false;
      }
    };
    expect(['requirements.txt', 'pip-requirements.txt', 'setup.py'].map(has)).toEqual([false, false, true]);
  });

  it('uses a builder that exists and CKAN 2.11 runs on (debian12: Python 3.11)', () => {
    expect(config.builder.os).toBe('debian12');
    expect(existsSync(config.builder.dockerfile)).toBe(true);
    expect(readFileSync(config.builder.dockerfile, 'utf8')).toMatch(/Python 3\.11/);
  });

  it('builds as written, with the wheelhouse as its index: exit 0, CKAN 2.11.5 with scheming_datasets on debian12', async () => {
    server = await serveWheelhouse(path.join(REAL, 'wheelhouse'));
    const index = `http://127.0.0.1:${(server.address() as AddressInfo).port}/simple`;
    const file = path.join(dir, 'ckan-release.yml');
    expect(written).toMatch(STARTER_INDEX_LINE);
    const text = written.replace(
      STARTER_INDEX_LINE,
      (_l, head: string, tail?: string) => `${head}${index}${tail ?? ''}`,
    );
    writeFileSync(file, text);
    // Exactly one line differs from what init wrote: the index.
    const before = written.split('\n');
    const after = text.split('\n');
    expect(after.length).toBe(before.length);
    const changed = after.flatMap((l, i) => (l === before[i] ? [] : [[before[i], l]]));
    expect(changed).toHaveLength(1);
    expect(changed[0]![0]).toMatch(/^\s*index_url: https:\/\/pypi\.org\/simple/);
    expect(changed[0]![1]).toMatch(new RegExp(`^\\s*index_url: ${index.replace(/[.]/g, '\\.')}`));

    let out = '';
    let err = '';
    const t0 = Date.now();
    const code = await main(['--config', file, 'build'], {
      out: (t) => (out += t),
      err: (t) => (err += t),
      env: process.env,
    });
    const seconds = (Date.now() - t0) / 1000;
    process.stderr.write(
      `[starter] build: ${seconds.toFixed(1)} s\n${err
        .split('\n')
        .filter((l) => /(Z built |Z steps: )/.test(l))
        .map((l) => `[starter]   ${l}\n`)
        .join('')}`,
    );
    if (code !== 0) throw new Error(`ckan-release build exited ${code}:\n${err}`);
    const id = out.trim().split('\n').pop()!;
    expect(id).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
    const manifest = JSON.parse(
      readFileSync(path.join(dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
    ) as Manifest;
    expect(manifest.ckan).toMatchObject({ version: '2.11.5', ref: 'ckan-2.11.5' });
    expect(manifest.ckan.commit).toMatch(/^69f790d9e378/);
    expect(manifest.extensions.map((x) => [x.name, x.ref, x.plugins])).toEqual([
      ['ckanext-scheming', 'release-3.1.0', ['scheming_datasets']],
    ]);
    expect(manifest.plugins.scheming_datasets?.dist).toMatch(/ckanext[-_]scheming/i);
    expect(manifest.builder.os).toBe('debian12');
    expect(manifest.pip.index_url).toBe(index);
    // Installed from that index: scheming 3.1.0's own dependency (ckanapi, from its setup.py) too.
    expect(manifest.pip.freeze.some((l) => /^ckanapi==/i.test(l))).toBe(true);
    expect([...served].some((f) => f.startsWith('ckanapi-'))).toBe(true);
  }, 1_800_000);
});
