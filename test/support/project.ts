// A throwaway copy of the example project (its config: test/fixtures/project/) with its own fixtures, store and caches, so tests can change
// refs, patches and repositories without touching examples/demo.
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli.js';
import { ensureFixtures, type FixturePaths } from './fixtures.js';

export interface TestProject {
  dir: string;
  config: string;
  fixtures: FixturePaths;
  /** Writes a variant of the project's config beside it and returns its path. */
  variant(name: string, edit: (text: string) => string): string;
  cli(...argv: string[]): Promise<{ code: number; out: string; err: string }>;
}

export async function testProject(): Promise<TestProject> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-project-'));
  for (const part of ['templates', 'secrets', 'patches']) {
    cpSync(path.resolve('examples/demo', part), path.join(dir, part), { recursive: true });
  }
  // The test bed's config: the example project with a plain restart command (the tests put recipes in).
  cpSync(path.resolve('test/fixtures/project/ckan-release.yml'), path.join(dir, 'ckan-release.yml'));
  const fixtures = await ensureFixtures(path.join(dir, '.fixtures'));
  mkdirSync(path.join(dir, 'cache'), { recursive: true });
  // Mirrors and work directories of this project only (read by the builder at call time).
  process.env.CKAN_RELEASE_CACHE = path.join(dir, 'cache');
  const config = path.join(dir, 'ckan-release.yml');
  return {
    dir,
    config,
    fixtures,
    variant(name, edit) {
      const file = path.join(dir, `${name}.yml`);
      writeFileSync(file, edit(readFileSync(config, 'utf8')));
      return file;
    },
    cli: runCli,
  };
}

/** Runs the CLI in this process (as bin/ckan-release does), collecting its stdout and stderr. */
export async function runCli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (t) => (out += t), err: (t) => (err += t), env: process.env });
  return { code, out, err };
}
