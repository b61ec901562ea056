// The generated test fixtures: tags, determinism, idempotence, the wheelhouse, and the git helpers.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FIXTURE_REPOS,
  FIXTURE_WHEELS,
  commitFile,
  ensureFixtures,
  gitRevParse,
  type FixturePaths,
} from '../support/fixtures.js';

const run = promisify(execFile);
const TIMEOUT = 300_000;

async function git(repo: string, ...args: string[]): Promise<string> {
  const env = { ...process.env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' };
  return (await run('git', ['-C', repo, ...args], { env })).stdout.trim();
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

function tagMap(fx: FixturePaths): Record<string, Record<string, string>> {
  return Object.fromEntries(Object.entries(fx.repos).map(([name, repo]) => [name, repo.tags]));
}

/** mtime (ns) of every ref file and of each wheel: a rebuild would change them. */
async function snapshot(fx: FixturePaths): Promise<Record<string, bigint>> {
  const out: Record<string, bigint> = {};
  for (const repo of Object.values(fx.repos)) {
    for (const rel of ['.git', '.git/HEAD', '.git/refs/tags']) {
      out[path.join(repo.path, rel)] = (await stat(path.join(repo.path, rel), { bigint: true })).mtimeNs;
    }
  }
  for (const wheel of fx.wheels) out[wheel] = (await stat(wheel, { bigint: true })).mtimeNs;
  out[fx.wheelhouse] = (await stat(fx.wheelhouse, { bigint: true })).mtimeNs;
  return out;
}

describe('ensureFixtures', () => {
  const dirs: string[] = [];
  let a: FixturePaths;
  let dirA: string;

  beforeAll(async () => {
    dirA = await mkdtemp(path.join(tmpdir(), 'fixtures-a-'));
    dirs.push(dirA);
    a = await ensureFixtures(dirA);
  }, TIMEOUT);

  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('builds every repository and the wheelhouse on the first run', () => {
    expect(a.dir).toBe(path.resolve(dirA));
    expect(a.changed).toEqual([...FIXTURE_REPOS.map((r) => `git/${r.name}`), 'wheelhouse']);
  });

  it('creates the tags, each on its own commit, on the expected branch', async () => {
    expect(Object.keys(a.repos).sort()).toEqual([
      'ckan',
      'ckanext-scheming',
      'ckanext-showcase',
      'ckanext-spatial',
    ]);
    expect(Object.keys(a.repos.ckan.tags)).toEqual(['ckan-2.9.10', 'ckan-2.9.11']);
    expect(Object.keys(a.repos['ckanext-showcase'].tags)).toEqual(['v1.0.0', 'v1.1.0']);
    expect(Object.keys(a.repos['ckanext-spatial'].tags)).toEqual(['v2.1.0']);
    expect(Object.keys(a.repos['ckanext-scheming'].tags)).toEqual(['release-3.0.0']);

    for (const spec of FIXTURE_REPOS) {
      const repo = a.repos[spec.name];
      expect(repo.path).toBe(path.join(a.dir, 'git', spec.name));
      expect(await git(repo.path, 'symbolic-ref', '--short', 'HEAD')).toBe(spec.branch);
      const last = spec.tags[spec.tags.length - 1]!;
      expect(await gitRevParse(repo.path, spec.branch)).toBe(repo.tags[last.tag]);
      expect(await git(repo.path, 'rev-list', '--count', spec.branch)).toBe(String(spec.tags.length));
      for (const { tag, version } of spec.tags) {
        expect(repo.tags[tag]).toMatch(/^[0-9a-f]{40}$/);
        const source = await git(repo.path, 'show', `${tag}:${spec.versionFile}`);
        expect(source).toContain(`__version__ = '${version}'`);
      }
      expect(await git(repo.path, 'status', '--porcelain')).toBe('');
    }
    // CKAN's tags are annotated, the extensions' lightweight.
    expect(await git(a.repos.ckan.path, 'cat-file', '-t', 'ckan-2.9.11')).toBe('tag');
    expect(await git(a.repos['ckanext-showcase'].path, 'cat-file', '-t', 'v1.1.0')).toBe('commit');
    // Consecutive tags differ only in the version line.
    expect(await git(a.repos.ckan.path, 'diff', '--name-only', 'ckan-2.9.10', 'ckan-2.9.11')).toBe(
      'ckan/__init__.py',
    );
  });

  it('lays the repositories out like the real projects', async () => {
    const ls = async (name: keyof FixturePaths['repos']) =>
      (await git(a.repos[name].path, 'ls-files')).split('\n');
    const ckan = await ls('ckan');
    expect(ckan).toEqual(
      expect.arrayContaining([
        'setup.py',
        'requirements.txt',
        'wsgi.py',
        'ckan/__init__.py',
        'ckan/cli/__init__.py',
        'ckan/cli/cli.py',
        'ckan/plugins/__init__.py',
        'ckan/config/middleware.py',
      ]),
    );
    const spatial = await ls('ckanext-spatial');
    expect(spatial).toContain('pyproject.toml');
    expect(spatial).toContain('requirements.txt');
    expect(spatial).not.toContain('setup.py');
    const showcase = await ls('ckanext-showcase');
    expect(showcase).toContain('setup.py');
    expect(showcase).not.toContain('requirements.txt');
    const scheming = await ls('ckanext-scheming');
    expect(scheming).toEqual(expect.arrayContaining(['setup.py', 'setup.cfg', 'requirements.txt']));
  });

  it('fills the wheelhouse with the three wheels', async () => {
    expect(a.wheelhouse).toBe(path.join(a.dir, 'wheelhouse'));
    const wheels = (await readdir(a.wheelhouse)).filter((f) => f.endsWith('.whl')).sort();
    expect(wheels).toEqual([...FIXTURE_WHEELS]);
    expect(a.wheels).toEqual(FIXTURE_WHEELS.map((w) => path.join(a.wheelhouse, w)));
  });

  it(
    'changes nothing when run again into the same directory',
    async () => {
      const before = await snapshot(a);
      const again = await ensureFixtures(dirA);
      expect(again.changed).toEqual([]);
      expect(tagMap(again)).toEqual(tagMap(a));
      expect(await snapshot(again)).toEqual(before);
      expect((await readdir(path.join(dirA, 'git'))).sort()).toEqual(FIXTURE_REPOS.map((r) => r.name).sort());
    },
    TIMEOUT,
  );

  it(
    'gives the same commit ids and wheels in another directory',
    async () => {
      const dirB = await mkdtemp(path.join(tmpdir(), 'fixtures-b-'));
      dirs.push(dirB);
      const b = await ensureFixtures(dirB);
      expect(tagMap(b)).toEqual(tagMap(a));
      for (const [i, wheel] of b.wheels.entries())
        expect(await sha256(wheel)).toBe(await sha256(a.wheels[i]!));
    },
    TIMEOUT,
  );

  it(
    'rebuilds only a repository whose tags no longer match',
    async () => {
      const showcase = a.repos['ckanext-showcase'];
      await git(showcase.path, 'tag', '-f', 'v1.1.0', 'v1.0.0');
      const fixed = await ensureFixtures(dirA);
      expect(fixed.changed).toEqual(['git/ckanext-showcase']);
      expect(await gitRevParse(showcase.path, 'v1.1.0')).toBe(showcase.tags['v1.1.0']);
    },
    TIMEOUT,
  );

  it(
    'rebuilds the wheelhouse when a wheel is missing',
    async () => {
      await rm(a.wheels[0]!);
      const fixed = await ensureFixtures(dirA);
      expect(fixed.changed).toEqual(['wheelhouse']);
      expect((await readdir(fixed.wheelhouse)).filter((f) => f.endsWith('.whl')).sort()).toEqual([
        ...FIXTURE_WHEELS,
      ]);
    },
    TIMEOUT,
  );

  it(
    'commitFile commits deterministically and tags',
    async () => {
      const dirC = await mkdtemp(path.join(tmpdir(), 'fixtures-c-'));
      dirs.push(dirC);
      const c = await ensureFixtures(dirC);
      const ids: string[] = [];
      for (const fx of [a, c]) {
        const repo = fx.repos['ckanext-showcase'].path;
        const id = await commitFile(
          repo,
          'ckanext/showcase/NEWS.txt',
          'one more change\n',
          'Add NEWS',
          'v1.2.0',
        );
        expect(id).toMatch(/^[0-9a-f]{40}$/);
        expect(await gitRevParse(repo, 'v1.2.0')).toBe(id);
        expect(await gitRevParse(repo, 'main')).toBe(id);
        expect(await git(repo, 'rev-parse', `${id}^`)).toBe(fx.repos['ckanext-showcase'].tags['v1.1.0']);
        expect(await git(repo, 'status', '--porcelain')).toBe('');
        ids.push(id);
      }
      expect(ids[0]).toBe(ids[1]);
      await expect(gitRevParse(a.repos.ckan.path, 'no-such-ref')).rejects.toThrow(/no-such-ref/);
      // A commit on the branch leaves the tags alone, so the repository is not rebuilt.
      expect((await ensureFixtures(dirA)).changed).toEqual([]);
    },
    TIMEOUT,
  );
});
