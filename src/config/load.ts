// Loads ckan-release.yml: YAML syntax, then the schema, then the checks that relate keys to each other
// and to the files they name. Nothing runs before this has passed.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node, type Pair } from 'yaml';
import { parseS3Url, type S3Location } from '../artifact/location.js';
import { ConfigError, UsageError } from '../errors.js';
import { configSchema } from './schema.js';
import { closest } from './suggest.js';
import type { Config, Environment, GitSource } from './types.js';
import { lineOf, type Ctx } from './validate.js';

export const DEFAULT_CONFIG_FILE = 'ckan-release.yml';

/** The tool's own docker/ directory (builder images shipped with ckan-release). */
export const TOOL_DOCKER_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docker');
/** The web server templates shipped with the tool, named in server.files as builtin:NAME. */
export const BUILTIN_TEMPLATES_DIR = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../assets/server',
);

export function builtinTemplates(): string[] {
  return isDir(BUILTIN_TEMPLATES_DIR)
    ? readdirSync(BUILTIN_TEMPLATES_DIR)
        .filter((f) => f.endsWith('.j2'))
        .map((f) => f.slice(0, -3))
        .sort()
    : [];
}

export function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv;
}

export function loadConfig(file: string, opts: LoadOptions = {}): Config {
  const abs = path.resolve(file);
  const display = displayPath(abs);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ConfigError(
      display,
      undefined,
      undefined,
      code === 'ENOENT' ? 'no such file' : `cannot read: ${(e as Error).message}`,
      code === 'ENOENT' ? 'run `ckan-release init` to write one, or pass --config FILE' : undefined,
    );
  }
  return parseConfig(text, abs, opts);
}

/** Validates config text as if it were the file `file` (which need not exist; relative paths use its directory). */
export function parseConfig(text: string, file: string, opts: LoadOptions = {}): Config {
  const abs = path.resolve(file);
  const display = displayPath(abs);
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
  const syntax = doc.errors[0];
  if (syntax) {
    const line = lines.linePos(syntax.pos[0]).line;
    throw new ConfigError(display, line, undefined, `invalid YAML: ${syntax.message.split('\n')[0]}`);
  }
  const ctx: Ctx = { file: display, lines, path: '', env: opts.env ?? process.env };
  const root = doc.contents as Node | null;
  if (!root || (isScalar(root) && root.value === null)) {
    throw new ConfigError(
      display,
      undefined,
      undefined,
      'the file is empty',
      'run `ckan-release init` for a starter',
    );
  }
  const raw = configSchema(root, ctx);
  return resolve(raw, abs, display, root, ctx);
}

type Raw = ReturnType<typeof configSchema>;

/** Finds the YAML node at a key path, so that cross-key errors can name a line. */
function nodeAt(root: Node, keys: (string | number)[]): Node | undefined {
  let node: Node | undefined = root;
  for (const key of keys) {
    if (isMap(node)) {
      const pair: Pair | undefined = node.items.find(
        (p) => isScalar(p.key) && String(p.key.value) === String(key),
      );
      node = (pair?.value as Node | undefined) ?? (pair?.key as Node | undefined);
    } else if (isSeq(node) && typeof key === 'number') {
      node = node.items[key] as Node | undefined;
    } else {
      return node;
    }
  }
  return node;
}

function resolve(raw: Raw, file: string, display: string, root: Node, ctx: Ctx): Config {
  const dir = path.dirname(file);
  const err = (keys: (string | number)[], what: string, hint?: string): never => {
    const keyPath = keys.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');
    throw new ConfigError(display, lineOf(ctx, nodeAt(root, keys)), keyPath, what, hint);
  };
  const local = (p: string) => path.resolve(dir, p);
  const gitSource = (source: string, ref: string): GitSource => ({
    source,
    ref,
    // scp-like (git@host:path) and URL sources go to git as they are; anything else is a local path.
    url: /^[a-z][a-z0-9+.-]*:\/\//i.test(source) || /^[^/]+@[^/]+:/.test(source) ? source : local(source),
  });

  // builder.os names docker/<os>/Dockerfile: the project's own first, then the ones shipped with the tool.
  const projectDockerfile = path.join(dir, 'docker', raw.builder.os, 'Dockerfile');
  const toolDockerfile = path.join(TOOL_DOCKER_DIR, raw.builder.os, 'Dockerfile');
  const dockerfile = existsSync(projectDockerfile) ? projectDockerfile : toolDockerfile;
  if (!existsSync(dockerfile)) {
    const known = builderOses(dir);
    const guess = closest(raw.builder.os, known);
    err(
      ['builder', 'os'],
      `no builder image "${raw.builder.os}": expected one of ${known.join(', ')}` +
        (guess ? `; did you mean "${guess}"?` : ''),
      `a builder is a docker/<os>/Dockerfile, in the project or shipped with ckan-release`,
    );
  }
  if (raw.builder.pip.index_url && raw.builder.network === 'none') {
    err(
      ['builder', 'pip', 'index_url'],
      'a package index needs a network, but builder.network is "none"',
      'set builder.network to "default" or "host", or use find_links with local directories',
    );
  }

  const names = new Set<string>(['ckan']);
  const plugins = new Map<string, string>();
  raw.extensions.forEach((ext, i) => {
    if (names.has(ext.name)) err(['extensions', i, 'name'], `"${ext.name}" is listed twice (or is "ckan")`);
    names.add(ext.name);
    ext.plugins.forEach((p, j) => {
      const other = plugins.get(p);
      if (other) err(['extensions', i, 'plugins', j], `plugin "${p}" is already declared by ${other}`);
      plugins.set(p, ext.name);
    });
  });

  let patches: string | undefined;
  if (raw.patches !== undefined) {
    patches = local(raw.patches);
    if (!isDir(patches)) err(['patches'], `no such directory: ${raw.patches}`);
  } else if (isDir(local('patches'))) {
    patches = local('patches');
  }
  if (patches) {
    for (const target of readdirSync(patches)) {
      if (!isDir(path.join(patches, target))) continue;
      if (!names.has(target)) {
        const guess = closest(target, [...names]);
        err(
          ['patches'],
          `patches/${target}/ names no package: expected ckan or an extension name` +
            (guess ? `; did you mean "${guess}"?` : ''),
        );
      }
    }
  }

  const template = local(raw.config.template);
  if (!isFile(template)) err(['config', 'template'], `no such file: ${raw.config.template}`);

  const dests = new Set<string>();
  const serverFiles = raw.server.files.map((f, i) => {
    let tpl: string;
    if (f.template.startsWith('builtin:')) {
      const name = f.template.slice('builtin:'.length);
      const known = builtinTemplates();
      if (!known.includes(name)) {
        const guess = closest(name, known);
        err(
          ['server', 'files', i, 'template'],
          `no built-in template "${name}": expected one of ${known.map((k) => `builtin:${k}`).join(', ')}` +
            (guess ? `; did you mean "builtin:${guess}"?` : ''),
        );
      }
      tpl = path.join(BUILTIN_TEMPLATES_DIR, `${name}.j2`);
    } else {
      tpl = local(f.template);
      if (!isFile(tpl)) err(['server', 'files', i, 'template'], `no such file: ${f.template}`);
    }
    if (dests.has(f.dest)) err(['server', 'files', i, 'dest'], `"${f.dest}" is installed twice`);
    if (f.dest === raw.root || f.dest.startsWith(`${raw.root}/`))
      err(
        ['server', 'files', i, 'dest'],
        `"${f.dest}" is inside root (${raw.root}), which ckan-release manages: install server files elsewhere, e.g. /etc/ckan/default/`,
      );
    dests.add(f.dest);
    return {
      source: f.template,
      template: tpl,
      dest: f.dest,
      mode: parseInt(f.mode, 8),
      owner: f.owner,
      group: f.group,
      reload: f.reload,
    };
  });

  const links = new Set<string>();
  raw.shared.forEach((s, i) => {
    if (links.has(s.link)) err(['shared', i, 'link'], `"${s.link}" is linked twice`);
    links.add(s.link);
  });

  const s3url = raw.store === undefined ? undefined : parseS3Url(raw.store);
  if (raw.s3 && !s3url)
    err(['s3'], 'settings for an S3 store, but `store:` is not an s3://BUCKET/PREFIX URL');
  const s3: S3Location | undefined = s3url && {
    ...s3url,
    endpoint: raw.s3?.endpoint,
    region: raw.s3?.region,
    profile: raw.s3?.profile,
    forcePathStyle: raw.s3?.force_path_style,
  };

  if (raw.deploy.fetch === 'direct' && !s3)
    err(
      ['deploy', 'fetch'],
      'direct: hosts download the artifact from an S3 store, but `store:` is not an s3://BUCKET/PREFIX URL',
    );

  const environments: Record<string, Environment> = {};
  const envNames = Object.keys(raw.environments);
  for (const [name, e] of Object.entries(raw.environments)) {
    if (e.requires !== undefined) {
      if (e.requires === name)
        err(['environments', name, 'requires'], 'an environment cannot require itself');
      if (!envNames.includes(e.requires)) {
        const guess = closest(e.requires, envNames);
        err(
          ['environments', name, 'requires'],
          `no environment "${e.requires}": expected one of ${envNames.join(', ')}` +
            (guess ? `; did you mean "${guess}"?` : ''),
        );
      }
    }
    const secrets = e.secrets === undefined ? undefined : local(e.secrets);
    if (secrets && !isFile(secrets)) err(['environments', name, 'secrets'], `no such file: ${e.secrets}`);
    const sshConfig = e.ssh_config === undefined ? undefined : local(e.ssh_config);
    const seen = new Set<string>();
    e.hosts.forEach((h, i) => {
      if (seen.has(h)) err(['environments', name, 'hosts', i], `"${h}" is listed twice`);
      seen.add(h);
    });
    for (const h of Object.keys(e.host_vars)) {
      if (!e.hosts.includes(h)) {
        const guess = closest(h, e.hosts);
        err(
          ['environments', name, 'host_vars', h],
          `"${h}" is not a host of this environment` + (guess ? `; did you mean "${guess}"?` : ''),
        );
      }
    }
    environments[name] = {
      name,
      hosts: e.hosts,
      user: e.user,
      port: e.port,
      sshConfig,
      configFile: e.config_file ?? raw.config.file,
      vars: e.vars,
      hostVars: e.host_vars,
      secrets,
      requires: e.requires,
      become: e.become,
      becomeUser: e.become_user,
      parallel: e.parallel,
      sandboxOs: e.sandbox_os,
    };
  }

  return {
    file,
    displayFile: display,
    dir,
    project: raw.project,
    root: raw.root,
    store: local((s3 ? raw.s3?.cache : raw.store) ?? '.ckan-release/artifacts'),
    s3,
    notify: raw.notify,
    ckan: gitSource(raw.ckan.source, raw.ckan.ref),
    builder: {
      os: raw.builder.os,
      dockerfile,
      python: raw.builder.python,
      network: raw.builder.network,
      pip: {
        indexUrl: raw.builder.pip.index_url,
        findLinks: raw.builder.pip.find_links.map((l) => (/^[a-z]+:\/\//i.test(l) ? l : local(l))),
        extraArgs: raw.builder.pip.extra_args,
        constraints: raw.builder.pip.constraints,
        overrides: raw.builder.pip.overrides,
      },
      extraRequirements: raw.builder.extra_requirements,
    },
    extensions: raw.extensions.map((x) => ({
      name: x.name,
      plugins: x.plugins,
      requirements: x.requirements,
      ...gitSource(x.source, x.ref),
    })),
    patches,
    config: { template, file: raw.config.file },
    shared: raw.shared,
    deploy: {
      keepReleases: raw.deploy.keep_releases,
      link: raw.deploy.link,
      fetch: raw.deploy.fetch,
      owner: raw.deploy.owner,
      group: raw.deploy.group,
      become: raw.deploy.become,
      becomeUser: raw.deploy.become_user,
      restart: raw.deploy.restart,
      healthcheck: raw.deploy.healthcheck,
      hooks: { beforeSwitch: raw.deploy.hooks.before_switch, afterSwitch: raw.deploy.hooks.after_switch },
    },
    server: {
      files: serverFiles,
      apache: { processGroup: raw.server.apache.process_group, command: raw.server.apache.command },
      uwsgi: {
        pidfile: raw.server.uwsgi.pidfile,
        start: raw.server.uwsgi.start,
      },
      timeout: raw.server.timeout,
    },
    environments,
  };
}

/** The builder OSes available to a project: docker/<os>/Dockerfile in the project and in the tool. */
export function builderOses(projectDir: string): string[] {
  const found = new Set<string>();
  for (const base of [path.join(projectDir, 'docker'), TOOL_DOCKER_DIR]) {
    if (!isDir(base)) continue;
    for (const os of readdirSync(base))
      // docker/sandbox-*: the sandbox's host and service images, never builders.
      if (isFile(path.join(base, os, 'Dockerfile')) && !os.startsWith('sandbox-')) found.add(os);
  }
  return [...found].sort();
}

/** Looks an environment up by name; an unknown one is bad input that lists the known ones. */
export function environment(config: Config, name: string): Environment {
  const env = config.environments[name];
  if (env) return env;
  const known = Object.keys(config.environments);
  const guess = closest(name, known);
  throw new UsageError(
    `no environment "${name}" in ${config.displayFile}: expected one of ${known.join(', ')}` +
      (guess ? `; did you mean "${guess}"?` : ''),
  );
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}
