// Sources are fetched on the build machine with the user's own git (and so their credentials, ssh
// agent and config: private repositories work without keys entering any container), into a mirror
// cache that only ever fetches what is new.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import tar from 'tar-fs';
import { OperationError, UsageError } from '../errors.js';
import { redactUrls } from '../redact.js';

const run = promisify(execFile);

export interface GitResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function git(args: string[], opts: { cwd?: string } = {}): Promise<GitResult> {
  try {
    const { stdout, stderr } = await run('git', args, {
      cwd: opts.cwd,
      maxBuffer: 64 * 1024 * 1024,
      // Never prompt: a build runs unattended; missing credentials must fail, not hang.
      env: { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: process.env.GIT_ASKPASS ?? '' },
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string; message: string };
    if (err.code === 'ENOENT')
      throw new OperationError('git is not installed on this machine', 'install git');
    return {
      code: typeof err.code === 'number' ? err.code : 1,
      stdout: err.stdout ?? '',
      stderr: err.stderr ?? err.message,
    };
  }
}

/** The mirror of a source: <cache>/<last path part>-<12 hex of the URL>.git */
export function mirrorPath(cacheDir: string, url: string): string {
  const name = (url.replace(/\/+$/, '').split(/[/:]/).pop() ?? 'repo')
    .replace(/\.git$/, '')
    .replace(/[^A-Za-z0-9._-]/g, '_');
  const digest = createHash('sha256').update(url).digest('hex').slice(0, 12);
  return path.join(cacheDir, `${name}-${digest}.git`);
}

const FULL_SHA = /^[0-9a-f]{40}$/;

export interface Pinned {
  commit: string;
  mirror: string;
  /** Whether this resolution fetched from the remote (false: the mirror already had the commit). */
  fetched: boolean;
}

/**
 * Makes sure the mirror of `url` exists and holds `ref`, and pins `ref` to a commit. A full commit id
 * that the mirror already has needs no fetch; anything else (tags and branches move) fetches.
 */
export async function pin(cacheDir: string, url: string, ref: string, who: string): Promise<Pinned> {
  const mirror = mirrorPath(cacheDir, url);
  let fetched = false;
  if (!existsSync(mirror)) {
    mkdirSync(cacheDir, { recursive: true });
    const tmp = `${mirror}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    const r = await git(['clone', '--mirror', '--quiet', url, tmp]);
    if (r.code !== 0) {
      rmSync(tmp, { recursive: true, force: true });
      throw new UsageError(
        `${who}: cannot fetch ${redactUrls(url)}: ${redactUrls(lastLine(r.stderr))}`,
        'check the source URL and your git access to it',
      );
    }
    renameSync(tmp, mirror);
    fetched = true;
  } else if (!(FULL_SHA.test(ref) && (await hasCommit(mirror, ref)))) {
    const r = await git([
      '--git-dir',
      mirror,
      'fetch',
      '--quiet',
      '--prune',
      '--tags',
      'origin',
      '+refs/*:refs/*',
    ]);
    if (r.code !== 0)
      throw new UsageError(`${who}: cannot fetch ${redactUrls(url)}: ${redactUrls(lastLine(r.stderr))}`);
    fetched = true;
  }
  const r = await git(['--git-dir', mirror, 'rev-parse', '--verify', '--quiet', `${ref}^{commit}`]);
  if (r.code !== 0) {
    const tags = await git(['--git-dir', mirror, 'tag', '--sort=-creatordate']);
    const recent = tags.stdout.split('\n').filter(Boolean).slice(0, 5);
    throw new UsageError(
      `${who}: ref "${ref}" is not a tag, branch or commit of ${redactUrls(url)}`,
      recent.length ? `recent tags: ${recent.join(', ')}` : undefined,
    );
  }
  return { commit: r.stdout.trim(), mirror, fetched };
}

async function hasCommit(mirror: string, sha: string): Promise<boolean> {
  return (await git(['--git-dir', mirror, 'cat-file', '-e', `${sha}^{commit}`])).code === 0;
}

/**
 * Where a symlink of a source tree leads: 'inside' (its target, followed through the tree's other
 * links as the kernel would, stays in the tree; dangling or looping links count as inside: they can
 * reach nothing outside), or 'outside' (an absolute target, or ".." above the tree's top at any step).
 * `links` maps every symlink's path (relative to the tree, "/"-separated) to its target.
 */
export function symlinkLeads(links: ReadonlyMap<string, string>, link: string): 'inside' | 'outside' {
  const first = links.get(link);
  if (first === undefined) return 'inside';
  const at = link.split('/').slice(0, -1);
  if (first.startsWith('/')) return 'outside';
  let queue = first.split('/');
  let hops = 0;
  for (;;) {
    const part = queue.shift();
    if (part === undefined) return 'inside';
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (at.length === 0) return 'outside';
      at.pop();
      continue;
    }
    at.push(part);
    const target = links.get(at.join('/'));
    if (target === undefined) continue;
    if (++hops > 40) return 'inside'; // a loop (ELOOP for the kernel too)
    if (target.startsWith('/')) return 'outside';
    at.pop();
    queue = [...target.split('/'), ...queue];
  }
}

/**
 * Writes the tree of `commit` into `dest` (which must not exist), exactly as git holds it: relative
 * symlinks, also links to links (CKAN's own tree has 40), go through unchanged. A symlink whose
 * target leads outside the tree is refused (a UsageError naming `who`, the link and its target):
 * nothing outside the tree may enter a release through a source. Any other failure (git, the disk)
 * is an OperationError naming the source and `dest`.
 */
export async function exportTree(mirror: string, commit: string, dest: string, who: string): Promise<void> {
  mkdirSync(dest, { recursive: true });
  const child = spawn('git', ['--git-dir', mirror, 'archive', '--format=tar', commit], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const links = new Map<string, string>();
  // tar-fs's own link check refuses a link to another link; the check below replaces it. tar-fs
  // still never writes through a link (an entry under a link path fails as "not a valid path").
  // (@types/tar-fs describes tar-fs 2, which had neither validateSymlinks nor linkname in its types.)
  const extract = tar.extract(dest, {
    validateSymlinks: false,
    ignore: (_name: string, header?: { name: string; type?: string | null; linkname?: string | null }) => {
      if (header?.type === 'symlink') links.set(header.name.replace(/\/$/, ''), header.linkname ?? '');
      return false;
    },
  } as tar.ExtractOptions);
  child.stdout.pipe(extract);
  const exited = new Promise<number>((resolve) => {
    child.on('close', (c) => resolve(c ?? 1));
    child.on('error', () => resolve(127));
  });
  try {
    await new Promise<void>((resolve, reject) => {
      extract.on('finish', resolve);
      extract.on('error', reject);
    });
  } catch (e) {
    child.kill();
    await exited;
    rmSync(dest, { recursive: true, force: true });
    throw new OperationError(
      `${who}: writing its tree (commit ${commit.slice(0, 12)}) into ${dest} failed: ${(e as Error).message}`,
    );
  }
  const code = await exited;
  if (code !== 0)
    throw new OperationError(`${who}: git archive ${commit} from ${mirror} failed: ${lastLine(stderr)}`);
  const outside = [...links.keys()].filter((l) => symlinkLeads(links, l) === 'outside');
  if (outside.length) {
    rmSync(dest, { recursive: true, force: true });
    const shown = outside.slice(0, 5).map((l) => `${l} -> ${links.get(l)}`);
    throw new UsageError(
      `${who} (commit ${commit.slice(0, 12)}): ${outside.length === 1 ? 'a symlink leads' : `${outside.length} symlinks lead`} ` +
        `outside the source tree: ${shown.join(', ')}${outside.length > 5 ? ', ...' : ''}`,
      'a release holds only what its sources contain: make the link relative and inside the repository, or remove it (a patch cannot: sources are checked as fetched)',
    );
  }
}

function lastLine(text: string): string {
  return (
    text
      .trim()
      .split('\n')
      .filter((l) => l.trim())
      .pop() ?? 'unknown error'
  );
}
