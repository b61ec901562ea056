// init: a commented ckan-release.yml (and a starter config template) for a new project.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import type { Io } from '../cli.js';
import { NotImplementedError, UsageError } from '../errors.js';
import { globals } from './common.js';

export const STARTER_CONFIG = `# ckan-release.yml: how this CKAN site is built and deployed. Reference: ckan-release's README.
project: my-portal
# releases/, current, shared/ and .ckan-release/ live here, on every host.
root: /usr/lib/ckan
# store: .ckan-release/artifacts        # the local artifact store (default)

ckan:
  source: https://github.com/ckan/ckan.git
  ref: ckan-2.9.11                      # tag, branch or commit: pinned to a commit at build

builder:
  os: centos7                           # docker/<os>/Dockerfile; must match the hosts (centos7, debian12)
  python: python3                       # centos7: python3 (3.6, CKAN <= 2.9) or python2 (CKAN 2.7/2.8)
  network: none                         # none | default | host: the release build's network
  pip:
    find_links: []                      # local directories of wheels (copied into the build)
    # index_url: https://pypi.org/simple  # needs network: default or host
    extra_args: []

extensions:
  - name: ckanext-scheming
    source: https://github.com/ckan/ckanext-scheming.git   # public, fork, or private (git@...) alike
    ref: release-3.0.0
    plugins: [scheming_datasets]

# patches: patches/                     # patches/<ckan or extension name>/*.patch, applied with -p1, sorted
                                        # (patches/ is used when it exists)

config:
  template: templates/ckan.ini.j2       # Jinja2, as the old Ansible templates
  file: ckan.ini                        # written into each release on each host, mode 0640

shared:
  - { path: storage, link: storage }    # <root>/shared/storage linked as <release>/storage

deploy:
  keep_releases: 5
  owner: ckan
  group: apache
  restart: sudo -n /usr/sbin/apachectl graceful
  healthcheck:
    url: http://127.0.0.1/api/3/action/status_show
    timeout: 60
  hooks:
    before_switch:
      - { run: "{{ release }}/bin/ckan -c {{ config_file }} db upgrade", once: true }
    after_switch: []

environments:
  staging:
    hosts: [ckan-staging.example.org]
    user: deploy
    vars:
      site_url: https://staging.example.org
    # secrets: secrets/staging.yml      # plain YAML or ansible-vault encrypted
  production:
    hosts: [web1.example.org, web2.example.org]
    user: deploy
    requires: staging                   # only artifacts healthy on staging may ship here
    vars:
      site_url: https://data.example.org
    # secrets: secrets/production.yml
`;

export const STARTER_TEMPLATE = `# Rendered by ckan-release for {{ environment }} / {{ host }}: release {{ release_id }}
[app:main]
use = egg:ckan
ckan.site_url = {{ site_url }}
ckan.storage_path = {{ release }}/storage
ckan.plugins = {{ plugins | join(' ') }}
`;

export function registerInit(program: Command, io: Io): void {
  program
    .command('init')
    .description('write a commented ckan-release.yml for a new project')
    .option('--from-ansible <dir>', 'convert an Ansible playbook project of the old kind')
    .option('--force', 'overwrite an existing ckan-release.yml')
    .action((opts: { fromAnsible?: string; force?: boolean }, c: Command) => {
      if (opts.fromAnsible) throw new NotImplementedError('init --from-ansible');
      const file = path.resolve(globals(c).config);
      if (existsSync(file) && !opts.force)
        throw new UsageError(`${file} exists`, 'pass --force to overwrite it');
      const template = path.join(path.dirname(file), 'templates', 'ckan.ini.j2');
      writeFileSync(file, STARTER_CONFIG);
      io.out(`wrote ${file}\n`);
      if (!existsSync(template)) {
        mkdirSync(path.dirname(template), { recursive: true });
        writeFileSync(template, STARTER_TEMPLATE);
        io.out(`wrote ${template}\n`);
      }
    });
}
