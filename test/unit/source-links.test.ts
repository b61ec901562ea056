// Source trees go into the build as git holds them: relative links, also links to links (CKAN 2.11.5
// has 40), pass; a link that leads outside the tree, directly or through another link, is refused
// with a UsageError (exit 2) that names the source, the link and its target.
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exportTree, symlinkLeads } from '../../src/builder/git.js';
import { UsageError } from '../../src/errors.js';

describe('symlinkLeads', () => {
  const leads = (links: Record<string, string>, link: string) =>
    symlinkLeads(new Map(Object.entries(links)), link);

  it('follows links to links inside the tree', () => {
    const links = {
      'ext/v04/plugin.py': '../v03/plugin.py',
      'ext/v03/plugin.py': '../v02/plugin.py',
      'ext/v02/plugin.py': '../v01/plugin.py',
    };
    expect(leads(links, 'ext/v04/plugin.py')).toBe('inside');
    expect(leads({ 'a/up': '..', 'a/b/self': '../../a/./b' }, 'a/b/self')).toBe('inside');
    expect(leads({ dangling: 'no/such/file' }, 'dangling')).toBe('inside');
    expect(leads({ x: 'y', y: 'x' }, 'x')).toBe('inside'); // a loop reaches nothing outside
  });

  it('refuses absolute targets and ".." above the top, also reached through another link', () => {
    expect(leads({ abs: '/etc/passwd' }, 'abs')).toBe('outside');
    expect(leads({ 'a/up': '../../x' }, 'a/up')).toBe('outside');
    expect(leads({ top: '..' }, 'top')).toBe('outside');
    // d/l is the top itself (inside); d/m = d/l/.. is then the top's parent.
    expect(leads({ 'd/l': '..', 'd/m': 'l/..' }, 'd/l')).toBe('inside');
    expect(leads({ 'd/l': '..', 'd/m': 'l/..' }, 'd/m')).toBe('outside');
    expect(leads({ 'a/l': '../b/abs', 'b/abs': '/tmp' }, 'a/l')).toBe('outside');
  });
});

// Every temporary tree this file makes, removed at the end.
const temps: string[] = [];
afterAll(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});
function temp(prefix: string): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  temps.push(d);
  return d;
}

function repo(files: Record<string, string>, links: Record<string, string>): { dir: string; commit: string } {
  const dir = temp('ckan-release-links-');
  const git = (...args: string[]) =>
    execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], { cwd: dir })
      .toString()
      .trim();
  git('init', '-q');
  for (const [p, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    writeFileSync(path.join(dir, p), content);
  }
  for (const [p, target] of Object.entries(links)) {
    mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    symlinkSync(target, path.join(dir, p));
  }
  git('add', '-A');
  git('commit', '-qm', 'tree');
  return { dir: path.join(dir, '.git'), commit: git('rev-parse', 'HEAD') };
}

describe('exportTree', () => {
  it('writes links to links unchanged', async () => {
    const r = repo(
      { 'ext/v01/plugin.py': 'print(1)\n' },
      { 'ext/v02/plugin.py': '../v01/plugin.py', 'ext/v03/plugin.py': '../v02/plugin.py', 'ext/up': '..' },
    );
    const dest = path.join(temp('ckan-release-out-'), 'ckan');
    await exportTree(r.dir, r.commit, dest, 'ckan');
    expect(lstatSync(path.join(dest, 'ext/v03/plugin.py')).isSymbolicLink()).toBe(true);
    expect(readlinkSync(path.join(dest, 'ext/v03/plugin.py'))).toBe('../v02/plugin.py');
    expect(readFileSync(path.join(dest, 'ext/v03/plugin.py'), 'utf8')).toBe('print(1)\n');
    expect(readlinkSync(path.join(dest, 'ext/up'))).toBe('..');
  });

  it('refuses a link leading outside the tree: a UsageError (exit 2) naming it; nothing left behind', async () => {
    const r = repo({ 'a.py': '' }, { 'docs/passwd': '../../../etc/passwd', 'docs/ok': '../a.py' });
    const dest = path.join(temp('ckan-release-out-'), 'ckanext-x');
    const e = await exportTree(r.dir, r.commit, dest, 'extensions.ckanext-x').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as UsageError).exitCode).toBe(2);
    expect((e as Error).message).toBe(
      `extensions.ckanext-x (commit ${r.commit.slice(0, 12)}): a symlink leads outside the source tree: docs/passwd -> ../../../etc/passwd`,
    );
    expect(existsSync(dest)).toBe(false);
  });

  it('a failing git archive is an OperationError naming the source, not an unexpected error', async () => {
    const r = repo({ 'a.py': '' }, {});
    const dest = path.join(temp('ckan-release-out-'), 'ckan');
    const e = await exportTree(r.dir, 'f'.repeat(40), dest, 'ckan').catch((x: unknown) => x);
    expect((e as { exitCode?: number }).exitCode).toBe(1);
    expect((e as Error).message).toMatch(/^ckan: git archive f{40} from .* failed: /);
  });
});
