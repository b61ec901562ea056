// Test fixtures: git repositories of a fixture CKAN core and three fixture extensions, and a local
// wheelhouse, generated from the text sources under test/fixtures/python/ (see its README.md).
//
// Everything is deterministic: the same sources always give the same commit ids. ensureFixtures() is
// idempotent: a repository whose tags already point at the commits the sources produce, and a
// wheelhouse whose stamp matches the sources, are left alone; anything else is rebuilt beside it and
// renamed into place, so concurrent callers (vitest workers) cannot see a half-built fixture.

import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** test/fixtures/python: the committed text sources. */
export const FIXTURE_SOURCES_DIR = fileURLToPath(new URL('../fixtures/python/', import.meta.url));
/** examples/demo/.fixtures: where `npm run fixtures` puts the generated fixtures (gitignored). */
export const DEFAULT_FIXTURES_DIR = fileURLToPath(new URL('../../examples/demo/.fixtures/', import.meta.url));

export type FixtureRepoName = 'ckan' | 'ckanext-showcase' | 'ckanext-spatial' | 'ckanext-scheming';

export interface FixtureRepoSpec {
  name: FixtureRepoName;
  /** The branch every commit is on. */
  branch: string;
  /** Layout of the Python project, for tests that care. */
  layout: 'setup.py' | 'pyproject.toml' | 'setup.py+setup.cfg';
  /** File whose `__version__ = '...'` line differs between tags. */
  versionFile: string;
  /** Tags in commit order; each tag is one commit. */
  tags: readonly { tag: string; version: string }[];
  /** Annotated tags (CKAN's are) or lightweight ones. */
  annotated: boolean;
  /** Entry points of the `ckan.plugins` group that the project provides. */
  plugins: readonly string[];
}

export const FIXTURE_REPOS: readonly FixtureRepoSpec[] = [
  {
    name: 'ckan',
    branch: 'master',
    layout: 'setup.py',
    versionFile: 'ckan/__init__.py',
    tags: [
      { tag: 'ckan-2.9.10', version: '2.9.10' },
      { tag: 'ckan-2.9.11', version: '2.9.11' },
    ],
    annotated: true,
    plugins: ['stats', 'text_view'],
  },
  {
    name: 'ckanext-showcase',
    branch: 'main',
    layout: 'setup.py',
    versionFile: 'ckanext/showcase/__init__.py',
    tags: [
      { tag: 'v1.0.0', version: '1.0.0' },
      { tag: 'v1.1.0', version: '1.1.0' },
    ],
    annotated: false,
    plugins: ['showcase'],
  },
  {
    name: 'ckanext-spatial',
    branch: 'main',
    layout: 'pyproject.toml',
    versionFile: 'ckanext/spatial/__init__.py',
    tags: [{ tag: 'v2.1.0', version: '2.1.0' }],
    annotated: false,
    plugins: ['spatial_metadata', 'spatial_query'],
  },
  {
    name: 'ckanext-scheming',
    branch: 'main',
    layout: 'setup.py+setup.cfg',
    versionFile: 'ckanext/scheming/__init__.py',
    tags: [{ tag: 'release-3.0.0', version: '3.0.0' }],
    annotated: false,
    plugins: ['scheming_datasets'],
  },
];

/** File names of the wheels the wheelhouse holds. */
export const FIXTURE_WHEELS: readonly string[] = [
  'fixturelib_geo-1.0.0-py3-none-any.whl',
  'fixturelib_markup-1.0.0-py3-none-any.whl',
  'fixturelib_markup-2.0.0-py3-none-any.whl',
];

export interface FixtureRepo {
  /** Absolute path of the (non-bare) repository; clone it by path or `file://` URL. */
  path: string;
  branch: string;
  /** tag -> commit id (annotated tags peeled). */
  tags: Record<string, string>;
}

export interface FixturePaths {
  /** The fixtures directory (absolute). */
  dir: string;
  repos: Record<FixtureRepoName, FixtureRepo>;
  /** Directory of the wheels, for `pip --no-index --find-links`. */
  wheelhouse: string;
  /** Absolute paths of the wheels, sorted. */
  wheels: string[];
  /** What this call (re)built, relative to dir ('git/ckan', 'wheelhouse'); empty when all was up to date. */
  changed: string[];
}

// ---------------------------------------------------------------------------------------------------
// Processes

interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

function run(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd, env: opts.env ?? process.env, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (error) {
          const detail = (stderr || stdout || '').trim();
          reject(
            new Error(`${cmd} ${args.join(' ')} failed: ${error.message}${detail ? `\n${detail}` : ''}`),
          );
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
  });
}

/** First commit date of every fixture repository: 2023-11-14T22:13:20Z; each later commit +1 day. */
const BASE_EPOCH = 1_700_000_000;
const DAY = 86_400;
const FIXTURE_IDENT = { name: 'ckan-release fixtures', email: 'fixtures@ckan-release.invalid' };

/** Environment for deterministic git: fixed identity and dates, no user or system config. */
function gitEnv(epoch: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    // GIT_DIR, GIT_INDEX_FILE, ... from a git hook that runs the tests must not leak in.
    if (!key.startsWith('GIT_')) env[key] = value;
  }
  const date = `${epoch} +0000`;
  return {
    ...env,
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_TERMINAL_PROMPT: '0',
    GIT_AUTHOR_NAME: FIXTURE_IDENT.name,
    GIT_AUTHOR_EMAIL: FIXTURE_IDENT.email,
    GIT_AUTHOR_DATE: date,
    GIT_COMMITTER_NAME: FIXTURE_IDENT.name,
    GIT_COMMITTER_EMAIL: FIXTURE_IDENT.email,
    GIT_COMMITTER_DATE: date,
  };
}

const GIT_CONFIG_ARGS = [
  '-c',
  'commit.gpgsign=false',
  '-c',
  'tag.gpgsign=false',
  '-c',
  'core.autocrlf=false',
  '-c',
  'core.fileMode=true',
];

async function git(repoDir: string, args: string[], epoch = BASE_EPOCH): Promise<string> {
  const { stdout } = await run('git', [...GIT_CONFIG_ARGS, '-C', repoDir, ...args], { env: gitEnv(epoch) });
  return stdout.trim();
}

/** The commit id `ref` resolves to in `repoDir` (annotated tags peeled); throws if it does not resolve. */
export async function gitRevParse(repoDir: string, ref: string): Promise<string> {
  try {
    return await git(repoDir, ['rev-parse', '--verify', '--quiet', `${ref}^{commit}`]);
  } catch {
    throw new Error(`${ref} does not name a commit in ${repoDir}`);
  }
}

/**
 * Writes `content` to `relPath` in the work tree of `repoDir`, commits it on the current branch with
 * the fixtures' fixed identity, and optionally adds the lightweight tag `tag`. The commit date is one
 * hour after the parent's, so the same calls on the same repository always give the same commit id.
 * Returns the new commit id.
 */
export async function commitFile(
  repoDir: string,
  relPath: string,
  content: string | Buffer,
  message: string,
  tag?: string,
): Promise<string> {
  let epoch = BASE_EPOCH;
  try {
    epoch = Number(await git(repoDir, ['log', '-1', '--format=%ct', 'HEAD'])) + 3600;
  } catch {
    // No commit yet: keep the base date.
  }
  const target = path.join(repoDir, relPath);
  await mkdir(path.dirname(target), { recursive: true });
  await writeFile(target, content);
  await git(repoDir, ['add', '--', relPath], epoch);
  await git(repoDir, ['commit', '-q', '--allow-empty', '-m', message], epoch);
  if (tag !== undefined) await git(repoDir, ['tag', tag], epoch);
  return gitRevParse(repoDir, 'HEAD');
}

// ---------------------------------------------------------------------------------------------------
// Sources

const SKIPPED = new Set(['__pycache__', 'build', 'dist', '.git', '.venv']);

/** Relative (posix) paths of the source files under dir, sorted; build leftovers are skipped. */
async function listSources(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(path.join(dir, prefix), { withFileTypes: true });
  for (const entry of entries) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) {
      if (SKIPPED.has(entry.name) || entry.name.endsWith('.egg-info')) continue;
      out.push(...(await listSources(dir, rel)));
    } else if (entry.isFile() && !entry.name.endsWith('.pyc')) {
      out.push(rel);
    }
  }
  return out.sort();
}

function setVersion(source: string, version: string, file: string): string {
  const re = /^__version__ = (['"])[^'"]*\1$/m;
  if (!re.test(source)) throw new Error(`no __version__ line in fixture source ${file}`);
  return source.replace(re, `__version__ = '${version}'`);
}

/** Copies the sources of srcDir to dest (files mode 0644), the version file rewritten to `version`. */
async function writeTree(
  srcDir: string,
  files: string[],
  dest: string,
  versionFile?: string,
  version?: string,
) {
  for (const rel of files) {
    let content: string | Buffer = await readFile(path.join(srcDir, rel));
    if (rel === versionFile && version !== undefined) {
      content = setVersion(content.toString('utf8'), version, path.join(srcDir, rel));
    }
    const target = path.join(dest, rel);
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, content);
    await chmod(target, 0o644);
  }
}

// ---------------------------------------------------------------------------------------------------
// Directory swapping

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Moves the freshly built `tmp` to `dest`, unless `dest` is (by now) good, in which case tmp is dropped.
 * Returns whether dest was replaced.
 */
async function installDir(tmp: string, dest: string, isGood: () => Promise<boolean>): Promise<boolean> {
  if (await isGood()) {
    await rm(tmp, { recursive: true, force: true });
    return false;
  }
  if (await exists(dest)) {
    const old = `${dest}.old-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await rename(dest, old);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    await rm(old, { recursive: true, force: true });
  }
  try {
    await rename(tmp, dest);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Another process installed it meanwhile: keep theirs if it is good.
    if ((code === 'ENOTEMPTY' || code === 'EEXIST') && (await isGood())) {
      await rm(tmp, { recursive: true, force: true });
      return false;
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------
// Git repositories

async function buildRepo(spec: FixtureRepoSpec, dest: string): Promise<Record<string, string>> {
  const srcDir = path.join(FIXTURE_SOURCES_DIR, spec.name);
  const files = await listSources(srcDir);
  await run('git', [...GIT_CONFIG_ARGS, '-c', `init.defaultBranch=${spec.branch}`, 'init', '-q', dest], {
    env: gitEnv(BASE_EPOCH),
  });
  const tags: Record<string, string> = {};
  for (const [i, { tag, version }] of spec.tags.entries()) {
    const epoch = BASE_EPOCH + i * DAY;
    await writeTree(srcDir, files, dest, spec.versionFile, version);
    await git(dest, ['add', '-A'], epoch);
    await git(dest, ['commit', '-q', '-m', `${spec.name} ${version} (ckan-release test fixture)`], epoch);
    if (spec.annotated) {
      await git(dest, ['tag', '-a', '-m', `${spec.name} ${version}`, tag], epoch);
    } else {
      await git(dest, ['tag', tag], epoch);
    }
    tags[tag] = await gitRevParse(dest, tag);
  }
  return tags;
}

async function repoMatches(repoDir: string, tags: Record<string, string>): Promise<boolean> {
  if (!(await exists(path.join(repoDir, '.git')))) return false;
  for (const [tag, commit] of Object.entries(tags)) {
    try {
      if ((await gitRevParse(repoDir, tag)) !== commit) return false;
    } catch {
      return false;
    }
  }
  return true;
}

async function ensureRepo(
  spec: FixtureRepoSpec,
  gitDir: string,
): Promise<{ repo: FixtureRepo; changed: boolean }> {
  const dest = path.join(gitDir, spec.name);
  const tmp = await mkdtemp(path.join(gitDir, `.tmp-${spec.name}-`));
  let changed: boolean;
  let tags: Record<string, string>;
  try {
    tags = await buildRepo(spec, path.join(tmp, 'repo'));
    changed = await installDir(path.join(tmp, 'repo'), dest, () => repoMatches(dest, tags));
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return { repo: { path: dest, branch: spec.branch, tags }, changed };
}

// ---------------------------------------------------------------------------------------------------
// Wheelhouse

/** Bump to force a rebuild of existing wheelhouses when the recipe below changes. */
const WHEELHOUSE_RECIPE = 2;
const STAMP_FILE = '.fixtures-stamp.json';

async function wheelSourcesHash(): Promise<string> {
  const root = path.join(FIXTURE_SOURCES_DIR, 'wheels');
  const hash = createHash('sha256').update(`recipe ${WHEELHOUSE_RECIPE}\n`);
  for (const rel of await listSources(root)) {
    const content = await readFile(path.join(root, rel));
    hash.update(`${rel}\n${content.length}\n`).update(content);
  }
  return hash.digest('hex');
}

async function wheelhouseMatches(wheelhouse: string, hash: string): Promise<boolean> {
  try {
    const stamp = JSON.parse(await readFile(path.join(wheelhouse, STAMP_FILE), 'utf8')) as {
      sources?: string;
    };
    if (stamp.sources !== hash) return false;
    for (const wheel of FIXTURE_WHEELS) if (!(await exists(path.join(wheelhouse, wheel)))) return false;
    return true;
  } catch {
    return false;
  }
}

/** /usr/bin/python3 if it has pip, setuptools and wheel, else python3 on PATH; else an error. */
async function findBuildPython(): Promise<string> {
  for (const python of ['/usr/bin/python3', 'python3']) {
    try {
      await run(python, ['-c', 'import setuptools, wheel, pip']);
      return python;
    } catch {
      // Try the next one.
    }
  }
  throw new Error(
    'Cannot build the fixture wheelhouse: neither /usr/bin/python3 nor python3 on PATH can import pip, ' +
      'setuptools and wheel. On Debian/Ubuntu: apt-get install python3-pip python3-setuptools python3-wheel',
  );
}

async function buildWheelhouse(dest: string, hash: string): Promise<void> {
  const python = await findBuildPython();
  const root = path.join(FIXTURE_SOURCES_DIR, 'wheels');
  const sources = (await readdir(root, { withFileTypes: true }))
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    // The user's pip settings (PIP_FIND_LINKS, PIP_CONSTRAINT, ...) and Python paths must not leak in.
    if (!key.startsWith('PIP_') && key !== 'PYTHONPATH' && key !== 'PYTHONHOME') env[key] = value;
  }
  Object.assign(env, {
    PIP_CONFIG_FILE: '/dev/null',
    PIP_DISABLE_PIP_VERSION_CHECK: '1',
    PIP_NO_INPUT: '1',
    PYTHONDONTWRITEBYTECODE: '1',
    // Fixed zip entry dates: the same sources give byte-identical wheels.
    SOURCE_DATE_EPOCH: String(BASE_EPOCH),
  });
  const work = await mkdtemp(path.join(tmpdir(), 'ckan-release-wheels-'));
  try {
    for (const name of sources) {
      // Build from a copy: pip builds in place and would leave build/ and *.egg-info in the sources.
      const srcDir = path.join(root, name);
      const copy = path.join(work, name);
      await writeTree(srcDir, await listSources(srcDir), copy);
      await run(
        python,
        [
          '-m',
          'pip',
          'wheel',
          '--no-deps',
          '--no-build-isolation',
          '--no-index',
          '--no-cache-dir',
          '-q',
          '-w',
          dest,
          copy,
        ],
        { cwd: work, env },
      );
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  const built = (await readdir(dest)).filter((f) => f.endsWith('.whl')).sort();
  const missing = FIXTURE_WHEELS.filter((w) => !built.includes(w));
  if (missing.length > 0) {
    throw new Error(
      `Fixture wheelhouse build did not produce ${missing.join(', ')} (got ${built.join(', ')})`,
    );
  }
  await writeFile(
    path.join(dest, STAMP_FILE),
    JSON.stringify({ sources: hash, python, wheels: built }, null, 2) + '\n',
  );
}

async function ensureWheelhouse(dir: string): Promise<{ wheelhouse: string; changed: boolean }> {
  const wheelhouse = path.join(dir, 'wheelhouse');
  const hash = await wheelSourcesHash();
  if (await wheelhouseMatches(wheelhouse, hash)) return { wheelhouse, changed: false };
  const tmp = await mkdtemp(path.join(dir, '.tmp-wheelhouse-'));
  await chmod(tmp, 0o755);
  try {
    await buildWheelhouse(tmp, hash);
    return {
      wheelhouse,
      changed: await installDir(tmp, wheelhouse, () => wheelhouseMatches(wheelhouse, hash)),
    };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------

/**
 * Makes sure `dir` (default examples/demo/.fixtures) holds `git/<repo>` for every FIXTURE_REPOS entry
 * and `wheelhouse/` with FIXTURE_WHEELS, rebuilding only what does not match the sources.
 */
export async function ensureFixtures(dir: string = DEFAULT_FIXTURES_DIR): Promise<FixturePaths> {
  const root = path.resolve(dir);
  const gitDir = path.join(root, 'git');
  await mkdir(gitDir, { recursive: true });

  const changed: string[] = [];
  const repos = {} as Record<FixtureRepoName, FixtureRepo>;
  for (const spec of FIXTURE_REPOS) {
    const result = await ensureRepo(spec, gitDir);
    repos[spec.name] = result.repo;
    if (result.changed) changed.push(`git/${spec.name}`);
  }

  const { wheelhouse, changed: wheelsChanged } = await ensureWheelhouse(root);
  if (wheelsChanged) changed.push('wheelhouse');

  return {
    dir: root,
    repos,
    wheelhouse,
    wheels: FIXTURE_WHEELS.map((w) => path.join(wheelhouse, w)),
    changed,
  };
}
