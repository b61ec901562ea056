// init --from-ansible on the old-style project of test/fixtures/ansible-project (see its README.md):
// the config it writes validates and says what the playbooks said; bad input exits 2 naming the file
// and line and writes nothing; an existing ckan-release.yml is kept unless --force.
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { loadSecrets } from '../../src/config/secrets.js';
import type { Config } from '../../src/config/types.js';
import { runCli } from '../support/project.js';

const FIXTURE = path.resolve('test/fixtures/ansible-project');
const VAULT_PASSWORD = 'ckan-release-fixture'; // documented in the fixture's README.md

const cli = runCli;

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'ckan-release-from-ansible-'));
}

describe('init --from-ansible on the fixture project', () => {
  let dir: string;
  let file: string;
  let out: string;
  let config: Config;
  let passwordFile: string;

  beforeAll(async () => {
    dir = tmp();
    file = path.join(dir, 'ckan-release.yml');
    passwordFile = path.join(dir, 'vault-password');
    writeFileSync(passwordFile, `${VAULT_PASSWORD}\n`);
    const r = await cli('--config', file, 'init', '--from-ansible', FIXTURE);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    out = r.out;
    config = loadConfig(file);
  });

  it('writes a config that validates, with CKAN and the extensions of the git tasks', () => {
    expect(config.project).toBe('ansible-project');
    expect(config.root).toBe('/usr/lib/ckan');
    expect(config.ckan).toMatchObject({ source: 'https://github.com/ckan/ckan.git', ref: 'ckan-2.9.11' });
    expect(config.extensions.map((x) => [x.name, x.source, x.ref, x.plugins])).toEqual([
      ['ckanext-showcase', 'https://github.com/ckan/ckanext-showcase.git', 'v1.1.0', ['showcase']],
      [
        'ckanext-spatial',
        'https://github.com/ckan/ckanext-spatial.git',
        'v2.1.0',
        ['spatial_metadata', 'spatial_query'],
      ],
      [
        'ckanext-scheming',
        'https://github.com/ckan/ckanext-scheming.git',
        'release-3.0.0',
        ['scheming_datasets'],
      ],
    ]);
  });

  it('maps the template task, the links, the prune, the run_once command and the handler', () => {
    expect(config.config).toEqual({ template: path.join(dir, 'templates/ckan.ini.j2'), file: 'ckan.ini' });
    expect(config.shared).toEqual([{ path: 'storage', link: 'storage' }]);
    expect(config.deploy).toMatchObject({
      keepReleases: 5,
      owner: 'ckan',
      group: 'apache',
      restart: 'sudo -n service httpd graceful',
      hooks: {
        beforeSwitch: [{ run: '{{ release }}/bin/ckan -c {{ config_file }} db upgrade', once: true }],
        afterSwitch: [],
      },
    });
  });

  it('makes one environment per playbook from the inventory groups and the variables Ansible would use', () => {
    const { staging, production } = config.environments;
    expect(staging).toMatchObject({
      hosts: ['ckan-staging.example.org'],
      user: 'deploy',
      requires: undefined,
    });
    expect(production).toMatchObject({
      hosts: ['web1.example.org', '10.20.0.12'],
      user: 'deploy',
      requires: 'staging',
    });
    // group_vars/all < group_vars/<group> < play vars < vars_files
    expect(staging!.vars).toMatchObject({
      site_url: 'http://staging.data.example.org',
      ckan_debug: 'yes',
      ckan_env: 'staging',
      ckan_ini: 'ckan.ini',
      release_dir: '{{ release }}',
    });
    expect(production!.vars).toMatchObject({
      site_url: 'https://data.example.org',
      ckan_tracking: 'yes',
      wsgi_processes: 4,
    });
    expect(Object.keys(production!.vars).filter((k) => k.startsWith('ansible_'))).toEqual([]);
    // host_vars/ and inventory host variables
    expect(production!.hostVars).toEqual({
      'web1.example.org': { ckan_harvest_enabled: true },
      '10.20.0.12': { wsgi_processes: 8 },
    });
  });

  it("copies the templates and the vault files, still encrypted, as each environment's secrets", () => {
    expect(readFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'utf8')).toBe(
      readFileSync(path.join(FIXTURE, 'templates/ckan.ini.j2'), 'utf8'),
    );
    expect(existsSync(path.join(dir, 'templates/apache.wsgi.j2'))).toBe(true);
    const secrets = readFileSync(path.join(dir, 'secrets/production.yml'), 'utf8');
    expect(secrets).toMatch(/^\$ANSIBLE_VAULT;1\.1;AES256\n/);
    expect(config.environments.production!.secrets).toBe(path.join(dir, 'secrets/production.yml'));
    expect(
      loadSecrets(config.environments.production!.secrets!, { vaultPasswordFile: passwordFile }),
    ).toEqual({
      db_password: 'production-db-pass',
      beaker_secret: 'production-beaker-secret',
    });
  });

  it('tells what it mapped and what it could not', () => {
    expect(out).toMatch(/^wrote .*ckan-release\.yml from the Ansible project /);
    expect(out).toMatch(/^copied .*vars\/secrets_staging\.yml -> .*secrets\/staging\.yml$/m);
    expect(out).toMatch(/^mapped:$/m);
    expect(out).toMatch(/task "Check out the extensions" -> ckan\.source\/ref and extensions\[\]/);
    expect(out).toMatch(/handler "restart apache" -> deploy\.restart: sudo -n service httpd graceful/);
    const notConverted = out.slice(out.indexOf('not converted:'));
    // The role is followed as Ansible runs it; what it does that does not map is listed with file:line.
    expect(out).toMatch(/role common -> read from .*roles\/common/);
    expect(notConverted).toMatch(
      /roles\/common\/tasks\/main\.yml:2: task "Install system packages" \(module yum is not converted\)/,
    );
    expect(notConverted).toMatch(
      /ckan_production\.yml:\d+: task "Make sure the Solr core answers" \(module uri is not converted\)/,
    );
    expect(out).toMatch(
      /task "Write the WSGI script" -> server\.files templates\/apache\.wsgi\.j2 -> \/etc\/ckan\/default\/apache\.wsgi/,
    );
    expect(config.server.files.map((f) => [f.source, f.dest, f.mode])).toEqual([
      ['templates/apache.wsgi.j2', '/etc/ckan/default/apache.wsgi', 0o644],
    ]);
    // and the config file says it too
    expect(readFileSync(file, 'utf8')).toMatch(
      /^# Not converted .*\n(# {3}- .*\n)*# {3}- .*module yum is not converted/m,
    );
  });

  it('renders the old template for a host with `config ENV --host H` (secrets masked)', async () => {
    const r = await cli(
      '--config',
      file,
      '--vault-password-file',
      passwordFile,
      'config',
      'production',
      '--host',
      'web1.example.org',
    );
    expect(r.code).toBe(0);
    expect(r.out).toContain('# CKAN configuration (production)\n#\n# Ansible managed\n');
    expect(r.out).toContain('debug = false\n');
    expect(r.out).toContain('sqlalchemy.url = postgresql://ckan_default:********@localhost/ckan_default\n');
    expect(r.out).toContain('ckan.storage_path = /usr/lib/ckan/shared/storage\n');
    expect(r.out).toContain(
      'ckan.plugins = stats text_view showcase spatial_metadata spatial_query scheming_datasets\n',
    );
    expect(r.out).toContain(
      'ckan.tracking_enabled = true\nckan.harvest.mq.type = redis\n# release /usr/lib/ckan/releases/RELEASE-ID\n',
    );
    const staging = await cli(
      '--config',
      file,
      '--vault-password-file',
      passwordFile,
      'config',
      'staging',
      '--show-secrets',
    );
    expect(staging.out).toContain('debug = true\n');
    expect(staging.out).toContain(':staging-db-pass@localhost');
    expect(staging.out).not.toContain('tracking_enabled');
  });
});

describe('the converted project renders the old template as the old playbooks did', () => {
  // test/fixtures/ansible-project/expected/ckan.ini.<host>: made by real Ansible (expected/regenerate.sh).
  it.each([
    ['staging', 'ckan-staging.example.org'],
    ['production', 'web1.example.org'],
  ])('%s, %s: byte for byte', async (env, host) => {
    const dir = tmp();
    const file = path.join(dir, 'ckan-release.yml');
    writeFileSync(path.join(dir, 'pw'), VAULT_PASSWORD);
    expect((await cli('--config', file, 'init', '--from-ansible', FIXTURE)).code).toBe(0);
    const r = await cli(
      '--config',
      file,
      '--vault-password-file',
      path.join(dir, 'pw'),
      'config',
      env,
      '--host',
      host,
      '--show-secrets',
    );
    expect(r.code).toBe(0);
    expect(r.out).toBe(readFileSync(path.join(FIXTURE, 'expected', `ckan.ini.${host}`), 'utf8'));
  });
});

describe('init --from-ansible refuses bad input with exit 2, naming the file (and line), writing nothing', () => {
  function project(edit: (dir: string) => void): string {
    const dir = path.join(tmp(), 'old');
    cpSync(FIXTURE, dir, { recursive: true });
    edit(dir);
    return dir;
  }
  async function refused(from: string, message: RegExp): Promise<void> {
    const out = tmp();
    const r = await cli('--config', path.join(out, 'ckan-release.yml'), 'init', '--from-ansible', from);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(existsSync(path.join(out, 'ckan-release.yml'))).toBe(false);
    expect(existsSync(path.join(out, 'templates'))).toBe(false);
  }

  it('a missing directory', async () => {
    await refused(
      '/nonexistent/old-playbooks',
      /^ckan-release: --from-ansible \/nonexistent\/old-playbooks: no such directory/,
    );
  });
  it('a directory without a playbook', async () => {
    await refused(tmp(), /: no playbook: expected ckan_production\.yml, ckan_staging\.yml/);
  });
  it('a playbook that is not YAML', async () => {
    const dir = project((d) => {
      const f = path.join(d, 'ckan_staging.yml');
      writeFileSync(
        f,
        readFileSync(f, 'utf8').replace('  become: yes\n', '  become: yes\n   bad: [indent\n'),
      );
    });
    await refused(dir, /ckan_staging\.yml:\d+: invalid YAML/);
  });
  it('a group_vars file that is not YAML', async () => {
    const dir = project((d) =>
      writeFileSync(
        path.join(d, 'group_vars/all.yml'),
        '---\nckan_root: /usr/lib/ckan\nckan_repo: "unclosed\n',
      ),
    );
    await refused(dir, /group_vars\/all\.yml:\d+: invalid YAML/);
  });
  it('an inventory that is not INI', async () => {
    const dir = project((d) =>
      writeFileSync(
        path.join(d, 'hosts'),
        '[ckan_staging]\nckan-staging.example.org\n[ckan_production\nweb1\n',
      ),
    );
    await refused(dir, /hosts:3: not an inventory section header/);
  });
  it('a play whose hosts are not in the inventory', async () => {
    const dir = project((d) => {
      const f = path.join(d, 'ckan_staging.yml');
      writeFileSync(f, readFileSync(f, 'utf8').replace('hosts: ckan_staging', 'hosts: ckan_stagign'));
    });
    await refused(
      dir,
      /ckan_staging\.yml:4: \[0\]\.hosts: "ckan_stagign" is neither a group nor a host of .*hosts/,
    );
  });
  it('no inventory', async () => {
    const dir = project((d) => {
      writeFileSync(path.join(d, 'ansible.cfg'), '[defaults]\nremote_user = deploy\n');
      rmSync(path.join(d, 'hosts'));
    });
    await refused(
      dir,
      /old: no INI inventory found \(looked for ansible\.cfg, -i in bin\/\*\.sh and Makefile, hosts, inventory/,
    );
  });
  it('an ansible.cfg that is not INI', async () => {
    const dir = project((d) => writeFileSync(path.join(d, 'ansible.cfg'), 'inventory = hosts\n'));
    await refused(dir, /ansible\.cfg:1: a setting before any \[section\]/);
  });
});

describe('init never overwrites an existing ckan-release.yml without --force', () => {
  it('keeps it, exit 2; --force replaces it', async () => {
    const dir = tmp();
    const file = path.join(dir, 'ckan-release.yml');
    writeFileSync(file, 'mine\n');
    const r = await cli('--config', file, 'init', '--from-ansible', FIXTURE);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/ckan-release\.yml exists/);
    expect(r.err).toMatch(/hint: pass --force to overwrite it/);
    expect(readFileSync(file, 'utf8')).toBe('mine\n');
    expect(existsSync(path.join(dir, 'templates'))).toBe(false);
    const forced = await cli('--config', file, 'init', '--from-ansible', FIXTURE, '--force');
    expect(forced.code).toBe(0);
    expect(loadConfig(file).project).toBe('ansible-project');
  });
  it('nor a template of another content', async () => {
    const dir = tmp();
    cpSync(path.join(FIXTURE, 'templates'), path.join(dir, 'templates'), { recursive: true });
    writeFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'my own\n');
    const r = await cli('--config', path.join(dir, 'ckan-release.yml'), 'init', '--from-ansible', FIXTURE);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/templates\/ckan\.ini\.j2 exists and differs from/);
    expect(readFileSync(path.join(dir, 'templates/ckan.ini.j2'), 'utf8')).toBe('my own\n');
  });
});
