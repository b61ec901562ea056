// init: a commented ckan-release.yml (and a starter config template) for a new project.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { convertAnsible, type Conversion, type ConvertOptions } from '../ansible/convert.js';
import type { Io } from '../io.js';
import { displayPath, parseConfig } from '../config/load.js';
import { ConfigError, UsageError } from '../errors.js';
import { globals } from './common.js';

export const STARTER_CONFIG = `# ckan-release.yml: how this CKAN site is built and deployed. Reference: ckan-release's README.
# As written it builds CKAN 2.11 on Debian 12 from PyPI and GitHub: \`ckan-release build\`.
project: my-portal
# releases/, current, shared/ and .ckan-release/ live here, on every host.
root: /usr/lib/ckan
# store: .ckan-release/artifacts        # the local artifact store (default)

ckan:
  source: https://github.com/ckan/ckan.git
  # Tag, branch or commit: pinned to a commit at build. CKAN supports 2.10 and 2.11; for another
  # version change the tag (ckan-2.10.x; ckan-2.9.x on centos7 or debian11) and the migration hook
  # below, and see README "Builder images" for which builder runs which CKAN.
  ref: ckan-2.11.5

builder:
  # docker/<os>/Dockerfile; it must match the hosts' OS and Python: debian12 (Python 3.11) here.
  # Others: README "Builder images" (centos7 is for CKAN <= 2.9 sites only).
  os: debian12
  python: python3
  # The build's network: host (the machine's own network, as pip on it would use), default (Docker's
  # bridge) or none (offline: pip.find_links with local wheel directories only).
  network: host
  pip:
    index_url: https://pypi.org/simple  # needs network: default or host
    find_links: []                      # local directories of wheels (copied into the build)
    extra_args: []
    # constraints: []                   # pip -c lines for every install, CKAN's requirements too
    # overrides: []                     # replace a pin in CKAN's or an extension's requirements,
                                        # e.g. [markdown==3.3.7] for CKAN 2.9.6-2.9.11 on Python 3.6
  # extra_requirements: [uwsgi]         # installed into every release (uwsgi for the uwsgi recipes)

extensions:
  - name: ckanext-scheming
    source: https://github.com/ckan/ckanext-scheming.git   # public, fork, or private (git@...) alike
    ref: release-3.1.0
    plugins: [scheming_datasets]
    # requirements: requirements.txt    # default: found (requirements.txt, pip-requirements.txt);
                                        # a name, a list, or none (only setup.py / pyproject.toml)

# patches: patches/                     # patches/<ckan or extension name>/*.patch, applied with -p1, sorted
                                        # (patches/ is used when it exists; ckan's before its requirements)

config:
  template: templates/ckan.ini.j2       # Jinja2, as the old Ansible templates
  file: ckan.ini                        # written into each release on each host, mode 0640

shared:
  - { path: storage, link: storage }    # <root>/shared/storage linked as <release>/storage

deploy:
  keep_releases: 5
  owner: ckan
  group: www-data
  restart: sudo -n /usr/sbin/apachectl graceful
  healthcheck:
    url: http://127.0.0.1/api/3/action/status_show
    timeout: 60
  hooks:
    before_switch:
      # The database migration, once per ship, for CKAN 2.11 (core and every enabled plugin). Others:
      #   2.9, 2.10: core only; each plugin with migrations needs its own -p, e.g.
      #     "{{ release }}/bin/ckan -c {{ config_file }} db upgrade && {{ release }}/bin/ckan -c {{ config_file }} db upgrade -p harvest"
      #   2.7, 2.8:  "{{ release }}/bin/paster --plugin=ckan db upgrade -c {{ config_file }}"
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

export function initCommand(
  io: Io,
  opts: { fromAnsible?: string; force?: boolean; ckanRef?: string; ckanSource?: string },
  c: Command,
): void {
  const file = path.resolve(globals(c).config);
  if (existsSync(file) && !opts.force) throw new UsageError(`${file} exists`, 'pass --force to overwrite it');
  if ((opts.ckanRef || opts.ckanSource) && !opts.fromAnsible)
    throw new UsageError('--ckan-ref and --ckan-source go with --from-ansible');
  if (opts.fromAnsible) {
    fromAnsible(opts.fromAnsible, file, !!opts.force, io, {
      ckanRef: opts.ckanRef,
      ckanSource: opts.ckanSource,
    });
    return;
  }
  const template = path.join(path.dirname(file), 'templates', 'ckan.ini.j2');
  writeFileSync(file, STARTER_CONFIG);
  io.out(`wrote ${file}\n`);
  if (!existsSync(template)) {
    mkdirSync(path.dirname(template), { recursive: true });
    writeFileSync(template, STARTER_TEMPLATE);
    io.out(`wrote ${template}\n`);
  }
}

/** The converted config as commented YAML: what was mapped and what was not, then the config. */
export function conversionText(conv: Conversion, dir: string): string {
  const lines = [
    `# ckan-release.yml converted by \`ckan-release init --from-ansible ${dir}\`.`,
    '# Check the builder (it must match the hosts: centos7 or debian12, and pip find_links / index_url),',
    '# then: ckan-release build && ckan-release setup staging && ckan-release ship staging.',
    '#',
    '# Not converted (see README "Migrating from the old Ansible playbooks"):',
    ...(conv.unmapped.length ? conv.unmapped.map((u) => `#   - ${u}`) : ['#   (nothing)']),
    '',
  ];
  const body = stringify(conv.config, { lineWidth: 0 })
    .replace(
      /^builder:\n/m,
      'builder:                # not in the playbooks: the hosts built their own release. Set it to match the hosts\n',
    )
    .replace(
      /^(\s+ref: HEAD)$/gm,
      "$1 # no version in the playbooks: the remote's default branch, pinned to a commit at each build",
    );
  return `${lines.join('\n')}${body}`;
}

function fromAnsible(dir: string, file: string, force: boolean, io: Io, options: ConvertOptions): void {
  const root = path.resolve(dir);
  // Files of the Ansible project are named as the user named the project: DIR/ckan_staging.yml.
  const conv = convertAnsible(
    dir,
    (f) => {
      const rel = path.relative(root, f);
      return rel.startsWith('..') || path.isAbsolute(rel)
        ? displayPath(f)
        : rel === ''
          ? dir
          : path.join(dir, rel);
    },
    options,
  );
  const outDir = path.dirname(file);
  // Nothing is written until everything is known to fit: no file of another content is overwritten
  // without --force, and the config validates.
  for (const f of conv.files) {
    const to = path.join(outDir, f.to);
    if (path.resolve(f.from) === path.resolve(to)) continue;
    if (existsSync(to) && !force && !readFileSync(to).equals(readFileSync(f.from)))
      throw new UsageError(
        `${displayPath(to)} exists and differs from ${displayPath(f.from)}`,
        'pass --force to overwrite it',
      );
  }
  const text = conversionText(conv, dir);
  // Validated first in a scratch directory with the same files, so that a failure writes nothing.
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-init-'));
  try {
    for (const f of conv.files) {
      mkdirSync(path.dirname(path.join(scratch, f.to)), { recursive: true });
      copyFileSync(f.from, path.join(scratch, f.to));
    }
    parseConfig(text, path.join(scratch, path.basename(file)));
  } catch (e) {
    if (e instanceof ConfigError)
      throw new ConfigError(
        displayPath(path.resolve(dir)),
        undefined,
        undefined,
        `the converted config does not validate, so nothing was written: ${e.message.replace(scratch + path.sep, '')}`,
      );
    throw e;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const copied: string[] = [];
  for (const f of conv.files) {
    const to = path.join(outDir, f.to);
    if (path.resolve(f.from) === path.resolve(to)) continue;
    mkdirSync(path.dirname(to), { recursive: true });
    copyFileSync(f.from, to);
    copied.push(`${displayPath(f.from)} -> ${displayPath(to)}`);
  }
  writeFileSync(file, text);
  io.out(`wrote ${displayPath(file)} from the Ansible project ${dir}\n`);
  for (const c of copied) io.out(`copied ${c}\n`);
  io.out('mapped:\n');
  for (const m of conv.mapped) io.out(`  ${m}\n`);
  io.out('not converted:\n');
  for (const u of conv.unmapped.length ? conv.unmapped : ['(nothing)']) io.out(`  ${u}\n`);
}
