// init --from-ansible on a project in the published layout of the old playbooks
// (test/fixtures/ansible-ckan-deploys: bin/<env>_<action>.sh wrappers passing -i, -u and --extra-vars,
// ckan_<env>.yml with `roles: - { role: 'sites/ckan' }`, include_vars gated by ckan_env, import_tasks
// gated by deploy_action, a hand-installed base venv cloned by virtualenv-clone, unpinned extensions,
// vault secrets), and Ansible's resolution rules on small projects made here.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { convertAnsible } from '../../src/ansible/convert.js';
import { invocationsIn } from '../../src/ansible/wrappers.js';
import { pin } from '../../src/builder/git.js';
import { loadConfig } from '../../src/config/load.js';
import { loadSecrets } from '../../src/config/secrets.js';
import type { Config } from '../../src/config/types.js';
import { renderServerFile, serverVars } from '../../src/deploy/server.js';
import { runCli } from '../support/project.js';

const FIXTURE = path.resolve('test/fixtures/ansible-ckan-deploys');
const VAULT_PASSWORD = 'ckan-release-fixture'; // the fixture's README.md / expected/regenerate.sh

const cli = runCli;

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'ckan-release-layout-'));
}

describe('init --from-ansible on a project that does not clone CKAN', () => {
  it('exits 2 naming --ckan-ref and the version the project suggests, writing nothing', async () => {
    const dir = tmp();
    const r = await cli('--config', path.join(dir, 'ckan-release.yml'), 'init', '--from-ansible', FIXTURE);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /the playbooks do not clone CKAN: releases are cloned from the hand-installed venv \/usr\/lib\/ckan\/default \(.*sites\/ckan\/tasks\/deploy\.yml:15\); pass --ckan-ref REF/,
    );
    expect(r.err).toMatch(/--ckan-source URL, default https:\/\/github\.com\/ckan\/ckan\.git/);
    expect(r.err).toMatch(/hint: the project suggests ckan-2\.9\.11 \(.*README\.md:5\)/);
    expect(existsSync(path.join(dir, 'ckan-release.yml'))).toBe(false);
    expect(existsSync(path.join(dir, 'templates'))).toBe(false);
  });

  it('without a version anywhere, the hint says how to find it on a host', async () => {
    const dir = tmp();
    const project = path.join(dir, 'p');
    cpSync(FIXTURE, project, { recursive: true });
    writeFileSync(path.join(project, 'README.md'), '# deploys\n');
    const r = await cli('--config', path.join(dir, 'ckan-release.yml'), 'init', '--from-ansible', project);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /hint: the project names no CKAN version: `\/usr\/lib\/ckan\/default\/bin\/pip show ckan`/,
    );
  });

  it('--ckan-ref goes with --from-ansible only', async () => {
    const dir = tmp();
    const r = await cli('--config', path.join(dir, 'ckan-release.yml'), 'init', '--ckan-ref', 'ckan-2.9.11');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--ckan-ref and --ckan-source go with --from-ansible/);
  });
});

describe('init --from-ansible --ckan-ref on the published layout', () => {
  let dir: string;
  let file: string;
  let out: string;
  let text: string;
  let config: Config;
  let passwordFile: string;

  beforeAll(async () => {
    dir = tmp();
    file = path.join(dir, 'ckan-release.yml');
    passwordFile = path.join(dir, 'vault-password');
    writeFileSync(passwordFile, `${VAULT_PASSWORD}\n`);
    const r = await cli('--config', file, 'init', '--from-ansible', FIXTURE, '--ckan-ref', 'ckan-2.9.11');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    out = r.out;
    text = readFileSync(file, 'utf8');
    config = loadConfig(file);
  });

  it('takes CKAN from --ckan-ref and the extensions at their default branch, said in the config', () => {
    expect(config.ckan).toMatchObject({ source: 'https://github.com/ckan/ckan.git', ref: 'ckan-2.9.11' });
    expect(config.extensions.map((x) => [x.name, x.source, x.ref, x.plugins])).toEqual([
      ['ckanext-showcase', 'https://github.com/ckan/ckanext-showcase.git', 'HEAD', ['showcase']],
      ['ckanext-scheming', 'https://github.com/ckan/ckanext-scheming.git', 'HEAD', ['scheming_datasets']],
    ]);
    expect(text).toMatch(
      /ref: HEAD # no version in the playbooks: the remote's default branch, pinned to a commit at each build\n/,
    );
    expect(out).toMatch(/deploy\.yml:29: task "Clone the extensions": ckanext-showcase has no version/);
  });

  it('finds the inventory the wrappers pass (-i inventory), their user (-u root) and ckan_env', () => {
    expect(out).toMatch(
      /inventory: .*ansible-ckan-deploys\/inventory \(.*bin\/production_deploy\.sh:3: -i inventory\)/,
    );
    expect(config.environments.staging).toMatchObject({ hosts: ['staging.data.example.org'], user: 'root' });
    expect(config.environments.production).toMatchObject({
      hosts: ['web1.data.example.org', 'web2.data.example.org'],
      user: 'root',
      requires: 'staging',
    });
    expect(config.environments.staging!.vars.ckan_env).toBe('staging');
    expect(config.environments.production!.vars.ckan_env).toBe('production');
    expect(config.environments.production!.vars).not.toHaveProperty('deploy_action');
    // an inventory host variable
    expect(config.environments.production!.hostVars).toEqual({
      'web2.data.example.org': { ckan_config_max_resource_size: 100 },
    });
    expect(out).toMatch(
      /staging_first_deploy\.sh:3: deploy_action=first_deploy -> `ckan-release setup staging`/,
    );
    expect(out).toMatch(/staging_rollback\.sh:3: deploy_action=rollback -> `ckan-release rollback staging`/);
  });

  it('follows the role by path, include_vars by ckan_env and import_tasks by deploy_action', () => {
    expect(out).toMatch(/ckan_staging\.yml: role sites\/ckan -> read from .*sites\/ckan/);
    expect(out).toMatch(
      /main\.yml:3: task include_vars: include_vars .*vars\/ckan_config\.yml -> vars of staging/,
    );
    expect(out).toMatch(
      /main\.yml:10: task include_vars: include_vars .*staging_secrets\.yml -> secrets of staging/,
    );
    expect(out).toMatch(
      /main\.yml:7: task include_vars: include_vars .*production_secrets\.yml -> secrets of production/,
    );
    expect(out).not.toMatch(/main\.yml:7: .* secrets of staging/);
    // vars of the included file, play vars, and the set_fact of the release path
    expect(config.environments.staging!.vars).toMatchObject({
      ckan_config_plugins: 'stats text_view showcase scheming_datasets',
      ckan_config_locales: ['en', 'es', 'fr'],
      current_release_path: '{{ release }}',
      deploy_base_venv_path: '{{ ckan_home }}/default',
    });
    // rollback.yml is not what ship does: its shell tasks are not listed as unconverted
    expect(out).not.toMatch(/rollback\.yml:\d+/);
  });

  it('maps the config template to a file per environment, the owner, prune and the restart', () => {
    expect(config.config.template).toBe(path.join(dir, 'templates/ckan_config.ini.j2'));
    expect(config.environments.staging!.configFile).toBe('staging.ini');
    expect(config.environments.production!.configFile).toBe('production.ini');
    expect(config.deploy).toMatchObject({
      keepReleases: 10,
      owner: 'ckan',
      group: 'apache',
      restart: 'apache-graceful',
    });
    expect(config.server.apache.processGroup).toBe('ckan_default');
    expect(out).toMatch(
      /deploy\.yml:108: task "Restart Apache": service httpd restart -> deploy\.restart apache-graceful \(graceful restart of the mod_wsgi daemon group ckan_default/,
    );
    expect(out).toMatch(
      /deploy\.yml:87: task "Link CKAN's repoze\.who config beside the config file": CKAN's who\.ini/,
    );
  });

  it('maps the WSGI script and the vhost to server.files, and the first deploy to the adoption', () => {
    expect(config.server.files.map((f) => [f.source, f.dest, f.mode.toString(8), f.group, f.reload])).toEqual(
      [
        ['templates/apache.wsgi.j2', '/etc/ckan/default/apache.wsgi', '644', 'apache', undefined],
        [
          'templates/ckan_default.conf.j2',
          '/etc/httpd/conf.d/ckan_default.conf',
          '644',
          'root',
          'apachectl graceful',
        ],
      ],
    );
    expect(out).toMatch(
      /first_deploy\.yml:39: task "Point 'current' at the default virtualenv .*": current -> \/usr\/lib\/ckan\/default: `ckan-release setup` adopts/,
    );
    expect(out).toMatch(/first_deploy\.yml:3: task "install base packages": not needed/);
  });

  it('copies the secrets still encrypted: a whole vault file and one with !vault values', () => {
    for (const env of ['production', 'staging'])
      expect(readFileSync(path.join(dir, `secrets/${env}.yml`), 'utf8')).toBe(
        readFileSync(path.join(FIXTURE, `sites/ckan/vars/${env}_secrets.yml`), 'utf8'),
      );
    expect(readFileSync(path.join(dir, 'secrets/production.yml'), 'utf8')).toMatch(
      /^\$ANSIBLE_VAULT;1\.1;AES256\n/,
    );
    expect(readFileSync(path.join(dir, 'secrets/staging.yml'), 'utf8')).toMatch(
      /db_user_password: !vault \|/,
    );
  });

  it('lists what it cannot map with the file and line, in the output and in the config', () => {
    const notConverted = out.slice(out.indexOf('not converted:'));
    expect(notConverted).toMatch(
      /first_deploy\.yml:61: task "Write the WSGI script": its task vars \(current_config_file_symlink_path\) are not used/,
    );
    expect(text).toMatch(/^# {3}- .*first_deploy\.yml:61: task "Write the WSGI script": its task vars/m);
  });

  // expected/: made by real ansible-core 2.14 from the project's own playbooks (expected/regenerate.sh).
  it.each([
    ['staging', 'staging.data.example.org'],
    ['production', 'web1.data.example.org'],
    ['production', 'web2.data.example.org'],
  ])('%s, %s: the config renders byte for byte as ansible-playbook renders it', async (env, host) => {
    const r = await cli(
      '--config',
      file,
      '--vault-password-file',
      passwordFile,
      'config',
      env,
      '--host',
      host,
      '--show-secrets',
    );
    expect(r.code).toBe(0);
    expect(r.out).toBe(readFileSync(path.join(FIXTURE, `expected/${env}.ini.${host}`), 'utf8'));
  });

  it.each([
    ['staging', 'staging.data.example.org'],
    ['production', 'web1.data.example.org'],
    ['production', 'web2.data.example.org'],
  ])(
    '%s, %s: the WSGI script and the vhost render byte for byte as ansible-playbook renders them',
    (env, host) => {
      const e = config.environments[env]!;
      const secrets = loadSecrets(e.secrets!, { vaultPasswordFile: passwordFile });
      const vars = serverVars({ config, env: e, secrets }, host, null);
      for (const f of config.server.files) {
        const name = path.posix.basename(f.dest);
        expect(renderServerFile(f, vars), name).toBe(
          readFileSync(path.join(FIXTURE, `expected/${name}.${host}`), 'utf8'),
        );
      }
    },
  );
});

/** A small project: a playbook per environment and the files given, relative to its directory. */
function project(files: Record<string, string>): string {
  const d = path.join(tmp(), 'site');
  for (const [f, t] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(d, f)), { recursive: true });
    writeFileSync(path.join(d, f), t);
  }
  return d;
}

const TEMPLATE_TASK = `- name: config
  template: src=ckan.ini.j2 dest={{ rel }}/ckan.ini
`;
const RELEASE_TASK = `- set_fact: rel=/srv/ckan/releases/x
- name: checkout
  git: repo=https://example.org/ckan.git dest={{ rel }}/src/ckan version=ckan-2.10.4
`;

describe("Ansible's resolution", () => {
  it('roles by name from roles/ and from roles_path, their defaults under play vars, their vars over them', () => {
    const d = project({
      'ansible.cfg': '[defaults]\ninventory = hosts.ini\nroles_path = shared-roles\n',
      'hosts.ini': '[ckan_staging]\ns1\n',
      'ckan_staging.yml': `- hosts: ckan_staging
  vars: { a: play, b: play, c: play }
  roles: [base, deploy]
`,
      'roles/base/defaults/main.yml': 'a: default\nd: default\n',
      'roles/base/tasks/main.yml': RELEASE_TASK,
      'shared-roles/deploy/vars/main.yml': 'b: rolevars\n',
      'shared-roles/deploy/tasks/main.yml': TEMPLATE_TASK,
      'shared-roles/deploy/templates/ckan.ini.j2': '[app:main]\n',
    });
    const c = convertAnsible(d);
    const env = (c.config.environments as Record<string, { vars: Record<string, unknown> }>).staging!;
    expect(env.vars).toMatchObject({ a: 'play', b: 'rolevars', c: 'play', d: 'default' });
    expect(c.config.ckan).toEqual({ source: 'https://example.org/ckan.git', ref: 'ckan-2.10.4' });
    expect(c.files.map((f) => f.from)).toContain(path.join(d, 'shared-roles/deploy/templates/ckan.ini.j2'));
    expect(c.mapped.join('\n')).toMatch(/inventory: .*hosts\.ini \(ansible\.cfg inventory = hosts\.ini\)/);
  });

  it('include_tasks, include_role with tasks_from, blocks, and when: that Ansible would skip', () => {
    const d = project({
      inventory: '[ckan_production]\np1\n',
      Makefile: 'deploy:\n\tansible-playbook -i inventory ckan_production.yml -e "mode=release"\n',
      'ckan_production.yml': `- hosts: ckan_production
  tasks:
    - include_tasks: steps/{{ mode }}.yml
    - include_role: { name: cfg, tasks_from: write }
      when: mode == "release"
    - block:
        - name: never
          git: repo=https://example.org/other.git dest=/x/src/ckan
      when: mode == "other"
`,
      'steps/release.yml': RELEASE_TASK,
      'roles/cfg/tasks/write.yml': TEMPLATE_TASK,
      'roles/cfg/templates/ckan.ini.j2': '[app:main]\n',
    });
    const c = convertAnsible(d);
    expect(c.config.ckan).toEqual({ source: 'https://example.org/ckan.git', ref: 'ckan-2.10.4' });
    expect(c.config.config).toEqual({ template: 'templates/ckan.ini.j2', file: 'ckan.ini' });
    expect(c.mapped.join('\n')).toMatch(/inventory: .*inventory \(.*Makefile:2: -i inventory\)/);
    expect(c.mapped.join('\n')).toMatch(/include_role cfg -> followed/);
    expect(
      (c.config.environments as Record<string, { vars: Record<string, unknown> }>).production!.vars.mode,
    ).toBe('release');
  });

  it('vars_files and include_vars: a later include wins, a plain file is vars, an encrypted one secrets', () => {
    const d = project({
      hosts: '[ckan_staging]\ns1\n',
      'ckan_staging.yml': `- hosts: ckan_staging
  vars_files: [vars/one.yml]
  tasks:
    - include_vars: vars/two.yml
    - include_vars: { file: vars/three.yml }
      when: missing_var is defined
${RELEASE_TASK.replace(/^/gm, '    ')}
${TEMPLATE_TASK.replace(/^/gm, '    ')}`,
      'vars/one.yml': 'x: one\ny: one\n',
      'vars/two.yml': 'y: two\n',
      'vars/three.yml': 'y: three\n',
      'templates/ckan.ini.j2': '[app:main]\n',
    });
    const c = convertAnsible(d);
    const vars = (c.config.environments as Record<string, { vars: Record<string, unknown> }>).staging!.vars;
    expect(vars).toMatchObject({ x: 'one', y: 'two' });
  });

  it('an inventory the wrappers name but git ignores is read from its .example, and said so', () => {
    const d = project({
      'bin/deploy.sh':
        '#!/bin/sh\nansible-playbook ckan_staging.yml -i inventory --extra-vars "ckan_env=staging"\n',
      'inventory.example': '[ckan_staging]\n1.2.3.4\n',
      'ckan_staging.yml': `- hosts: ckan_staging
  tasks:
${RELEASE_TASK.replace(/^/gm, '    ')}
${TEMPLATE_TASK.replace(/^/gm, '    ')}`,
      'templates/ckan.ini.j2': '[app:main]\n',
    });
    const c = convertAnsible(d);
    expect((c.config.environments as Record<string, { hosts: string[] }>).staging!.hosts).toEqual([
      '1.2.3.4',
    ]);
    expect(c.unmapped.join('\n')).toMatch(
      /inventory: .*inventory \(.*bin\/deploy\.sh:2: -i inventory\) is not there \(git-ignored\?\): read .*inventory\.example/,
    );
  });

  it('reads the ansible-playbook lines of wrapper scripts as a shell does', () => {
    const [a] = invocationsIn(
      'x.sh',
      'cd "$(dirname "$0")/.." && \\\n  ansible-playbook --ask-vault-pass ckan_production.yml -i inventory -vv -u root \\\n  --extra-vars "deploy_action=first_deploy ckan_env=production" --limit web1\n',
    );
    expect(a).toMatchObject({
      line: 1,
      playbook: 'ckan_production.yml',
      inventory: 'inventory',
      user: 'root',
      extraVars: { deploy_action: 'first_deploy', ckan_env: 'production' },
    });
    const [b] = invocationsIn(
      'y.sh',
      `ansible-playbook site.yml --inventory=hosts -e '{"ckan_env": "staging"}' -e @vars.yml\n`,
    );
    expect(b).toMatchObject({
      inventory: 'hosts',
      extraVars: { ckan_env: 'staging' },
      extraVarsFiles: ['vars.yml'],
    });
  });
});

describe('an extension without a version: ref HEAD', () => {
  it("the builder pins HEAD to the remote's default branch, not another branch", async () => {
    const d = tmp();
    const repo = path.join(d, 'ext');
    const git = (...a: string[]) =>
      execFileSync('git', ['-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@t', ...a], {
        encoding: 'utf8',
      }).trim();
    mkdirSync(repo);
    execFileSync('git', ['init', '-q', '-b', 'main', repo]);
    writeFileSync(path.join(repo, 'a'), '1');
    git('add', 'a');
    git('commit', '-qm', 'main');
    const main1 = git('rev-parse', 'HEAD');
    git('checkout', '-qb', 'feature');
    writeFileSync(path.join(repo, 'a'), '2');
    git('commit', '-qam', 'feature');
    git('checkout', '-q', 'main');
    const pinned = await pin(path.join(d, 'cache'), repo, 'HEAD', 'extensions[ext]');
    expect(pinned.commit).toBe(main1);
    rmSync(d, { recursive: true, force: true });
  });
});
