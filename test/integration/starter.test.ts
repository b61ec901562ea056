// `init`'s starter as written, against the real CKAN of the test bed: its upstream GitHub URLs are
// mapped to ../shared/real-ckan/git/* through git's own url.<base>.insteadOf (GIT_CONFIG_* in the
// environment), never by editing the file; its refs must pin to the real upstream commits.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveInputs, type BuildInputs } from '../../src/builder/inputs.js';
import { main } from '../../src/cli.js';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';

const REAL = path.resolve(process.env.CKAN_RELEASE_REAL_CKAN ?? '../shared/real-ckan');
const HAVE_REAL = existsSync(path.join(REAL, 'git/ckan.git'));
if (!HAVE_REAL)
  console.warn(
    `\n*** SKIPPED: the real CKAN of the test bed is not at ${REAL} (an input of the test bed, not of ` +
      'the project). Point CKAN_RELEASE_REAL_CKAN=DIR at a directory of the same layout ' +
      '(git/ckan.git, git/ckanext-scheming.git) to run it. ***\n',
  );

const MAP: Record<string, string> = {
  'https://github.com/ckan/ckan.git': 'git/ckan.git',
  'https://github.com/ckan/ckanext-scheming.git': 'git/ckanext-scheming.git',
};

let dir: string;
let config: Config;
let inputs: BuildInputs;
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
  config = loadConfig(file);
  const env: Record<string, string> = { GIT_CONFIG_COUNT: String(Object.keys(MAP).length) };
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

afterAll(() => {
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
});
