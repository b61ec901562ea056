// The command line: commands, exit codes and messages, through main() and through bin/ckan-release.
import { execFileSync, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { loadConfig } from '../../src/config/load.js';

const DEMO = path.resolve('examples/demo/ckan-release.yml');

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (t) => (out += t), err: (t) => (err += t), env: {} });
  return { code, out, err };
}

describe('bin/ckan-release', () => {
  it('--help lists every command of the design', () => {
    const out = execFileSync(process.execPath, ['bin/ckan-release', '--help'], { encoding: 'utf8' });
    for (const cmd of [
      'init',
      'build',
      'artifacts',
      'setup',
      'ship',
      'promote',
      'rollback',
      'status',
      'config',
      'unlock',
      'sandbox',
    ]) {
      expect(out).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
    }
  });

  it("--version prints package.json's version and exits 0", () => {
    const r = spawnSync(process.execPath, ['bin/ckan-release', '--version'], { encoding: 'utf8' });
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${pkg.version}\n`);
  });

  it('ship to an unknown environment exits 2 naming it and the known ones', () => {
    const r = spawnSync(process.execPath, ['bin/ckan-release', '--config', DEMO, 'ship', 'nowhere'], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(
      'ckan-release: no environment "nowhere" in examples/demo/ckan-release.yml: expected one of staging, production\n',
    );
    expect(r.stdout).toBe('');
  });
});

describe('main()', () => {
  it('a typo in the config exits 2 with the line, the key path and a suggestion', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-cli-'));
    mkdirSync(path.join(dir, 'templates'));
    copyFileSync(
      path.resolve('examples/demo/templates/ckan.ini.j2'),
      path.join(dir, 'templates/ckan.ini.j2'),
    );
    const text = readFileSync(DEMO, 'utf8')
      .replace('  keep_releases: 3', '  keep_relases: 3')
      .replace(/secrets: secrets\/\w+\.yml\n/g, '');
    writeFileSync(path.join(dir, 'ckan-release.yml'), text);
    const line = text.split('\n').findIndex((l) => l.includes('keep_relases')) + 1;
    const r = await cli('--config', path.join(dir, 'ckan-release.yml'), 'status', 'staging');
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      `ckan-release: ${path.join(dir, 'ckan-release.yml')}:${line}: deploy.keep_relases: unknown key; did you mean "keep_releases"?\n`,
    );
  });

  it('init --from-ansible keeps an existing config (exit 2) before looking at the Ansible project', async () => {
    const r = await cli('--config', DEMO, 'init', '--from-ansible', '/nonexistent');
    expect(r.code).toBe(2);
    expect(r.err).toBe(`ckan-release: ${path.resolve(DEMO)} exists\n  hint: pass --force to overwrite it\n`);
  });

  it('config renders the template for a host, secrets masked unless --show-secrets', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-cfg-'));
    for (const part of ['ckan-release.yml', 'templates', 'secrets', 'patches']) {
      cpSync(path.resolve('examples/demo', part), path.join(dir, part), { recursive: true });
    }
    const file = path.join(dir, 'ckan-release.yml');
    const r = await cli('--config', file, 'config', 'production', '--host', 'sandbox-web2');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^ckan\.site_url = http:\/\/demo\.test$/m);
    expect(r.out).toMatch(/^beaker\.session\.secret = \*{8}$/m);
    expect(r.out).toMatch(/^sqlalchemy\.url = postgresql:\/\/ckan:\*{8}@localhost\/ckan$/m);
    expect(r.out).toMatch(/^ckan\.plugins = showcase spatial_metadata spatial_query scheming_datasets$/m);
    expect(r.out).toMatch(/^ckan\.tracking_enabled = true$/m);
    expect(r.out).not.toContain('demo-production');
    const shown = await cli('--config', file, 'config', 'production', '--show-secrets');
    expect(shown.out).toMatch(/^beaker\.session\.secret = demo-production-beaker-secret$/m);
    const bad = await cli('--config', file, 'config', 'production', '--host', 'sandbox-staging');
    expect(bad.code).toBe(2);
    expect(bad.err).toBe(
      'ckan-release: sandbox-staging is not a host of production: expected one of sandbox-web1, sandbox-web2\n',
    );
  });

  it('init writes a commented starter that validates, and never overwrites unasked', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-init-'));
    const file = path.join(dir, 'ckan-release.yml');
    const r = await cli('--config', file, 'init');
    expect(r.code).toBe(0);
    expect(r.out).toBe(`wrote ${file}\nwrote ${path.join(dir, 'templates/ckan.ini.j2')}\n`);
    const config = loadConfig(file);
    // The newest supported CKAN on a builder that exists, online from PyPI, as written.
    expect(config.builder).toMatchObject({
      os: 'debian12',
      python: 'python3',
      network: 'host',
      pip: { indexUrl: 'https://pypi.org/simple' },
    });
    expect(existsSync(config.builder.dockerfile)).toBe(true);
    expect(config.ckan).toMatchObject({ source: 'https://github.com/ckan/ckan.git', ref: 'ckan-2.11.5' });
    expect(config.extensions.map((x) => [x.name, x.ref, x.requirements])).toEqual([
      ['ckanext-scheming', 'release-3.1.0', 'auto'],
    ]);
    // CKAN 2.11's hook migrates core and plugins; the comments give 2.7-2.10's.
    expect(config.deploy.hooks.beforeSwitch).toEqual([
      { run: '{{ release }}/bin/ckan -c {{ config_file }} db upgrade', once: true },
    ]);
    const text = readFileSync(file, 'utf8');
    expect(text).toContain('db upgrade -p harvest');
    expect(text).toContain('paster --plugin=ckan db upgrade -c {{ config_file }}');
    expect(Object.keys(config.environments)).toEqual(['staging', 'production']);
    const again = await cli('--config', file, 'init');
    expect(again.code).toBe(2);
    expect(again.err).toBe(`ckan-release: ${file} exists\n  hint: pass --force to overwrite it\n`);
  });

  it('usage errors exit 2', async () => {
    expect((await cli('ship')).code).toBe(2);
    expect((await cli('frobnicate')).code).toBe(2);
    expect((await cli('rollback', 'staging', '--bogus')).code).toBe(2);
  });

  it('--help exits 0', async () => {
    const r = await cli('ship', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/--dry-run/);
  });

  it('a missing config exits 2 and says how to make one', async () => {
    const r = await cli('--config', '/nonexistent/ckan-release.yml', 'ship', 'staging');
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      'ckan-release: /nonexistent/ckan-release.yml: no such file\n  hint: run `ckan-release init` to write one, or pass --config FILE\n',
    );
  });
});
