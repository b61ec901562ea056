// init --from-ansible: reads an Ansible project of the old kind (ckan_<env>.yml playbooks, an INI
// inventory, group_vars / host_vars / vars files, vault-encrypted secrets, templates/*.j2) and works out
// the equivalent ckan-release.yml. Pure apart from reading the project: the command writes the result.
//
// What maps: each playbook is an environment (its play's hosts group -> hosts; the variables Ansible
// would give those hosts -> vars / host_vars; an encrypted vars file -> secrets); the git tasks -> ckan
// and extensions; the template task into the release -> config; file links -> root (the `current`
// link) and shared; a run_once command on the release -> a before_switch hook; the handler the switch
// notifies -> deploy.restart; the prune command -> keep_releases. What does not (roles, other modules,
// lookups...) is listed, never silently dropped.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { isSeq, LineCounter, parseDocument, type Node } from 'yaml';
import type { ScalarTag } from 'yaml';
import { isVaultText } from '../config/vault.js';
import { ConfigError, UsageError } from '../errors.js';
import { renderString } from '../render/template.js';
import { CKAN_UPSTREAM } from './upstream.js';
import { projectInvocations, type Invocation } from './wrappers.js';
import { ancestors, groupHosts, parseIni, parseInventory, type Inventory } from './inventory.js';

export interface CopiedFile {
  /** Absolute source path. */
  from: string;
  /** Path relative to the new config's directory. */
  to: string;
}

export interface Conversion {
  /** The config as a plain object (keys in ckan-release.yml order). */
  config: Record<string, unknown>;
  files: CopiedFile[];
  mapped: string[];
  unmapped: string[];
}

const RELEASE = '@@CKAN_RELEASE@@';

const TASK_KEYWORDS = new Set([
  'name',
  'when',
  'with_items',
  'with_list',
  'loop',
  'loop_control',
  'notify',
  'become',
  'become_user',
  'become_method',
  'run_once',
  'register',
  'ignore_errors',
  'tags',
  'args',
  'vars',
  'delegate_to',
  'changed_when',
  'failed_when',
  'environment',
  'no_log',
  'until',
  'retries',
  'delay',
  'check_mode',
  'diff',
  'listen',
  'any_errors_fatal',
  'remote_user',
  'connection',
  'throttle',
  'timeout',
  'debugger',
]);

/** Ansible's custom YAML tags: read as plain values (`!unsafe`) or kept as vault text (`!vault`). */
const ANSIBLE_TAGS: ScalarTag[] = ['!vault', '!vault-encrypted', '!unsafe'].map((tag) => ({
  tag,
  resolve: (value: string) => value,
}));

const PY_BOOLS: ScalarTag[] = [
  {
    tag: 'tag:yaml.org,2002:bool',
    default: true,
    test: /^(?:[Yy]es|YES|[Tt]rue|TRUE|[Oo]n|ON)$/,
    resolve: () => true,
  },
  {
    tag: 'tag:yaml.org,2002:bool',
    default: true,
    test: /^(?:[Nn]o|NO|[Ff]alse|FALSE|[Oo]ff|OFF)$/,
    resolve: () => false,
  },
];

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(
      file,
      undefined,
      undefined,
      `cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
}

/** Parses a YAML file of the Ansible project; a syntax error names the file and line. */
export function readYaml(
  file: string,
  display: string,
): {
  value: unknown;
  lineOf: (n: Node | null | undefined) => number | undefined;
  doc: ReturnType<typeof parseDocument>;
} {
  const lc = new LineCounter();
  // YAML 1.1, as Ansible reads it (yes/no/on/off are booleans).
  const doc = parseDocument(readText(file), {
    version: '1.1',
    lineCounter: lc,
    // PyYAML's booleans (what Ansible reads): YAML 1.1's, less y/Y/n/N, which stay strings.
    customTags: (tags) => [
      ...tags.filter((t) => (typeof t === 'string' ? true : t.tag !== 'tag:yaml.org,2002:bool')),
      ...PY_BOOLS,
      ...ANSIBLE_TAGS,
    ],
    prettyErrors: false,
    uniqueKeys: false,
  });
  const err = doc.errors[0];
  if (err) {
    const line = lc.linePos(err.pos[0]).line;
    throw new ConfigError(display, line, undefined, `invalid YAML: ${err.message.split('\n')[0]}`);
  }
  const warn = doc.warnings.find((w) => w.code === 'TAG_RESOLVE_FAILED');
  if (warn)
    throw new ConfigError(
      display,
      lc.linePos(warn.pos[0]).line,
      undefined,
      `invalid YAML: ${warn.message.split('\n')[0]}`,
    );
  return {
    value: doc.toJS({ maxAliasCount: 1000 }) as unknown,
    lineOf: (n) => (n?.range ? lc.linePos(n.range[0]).line : undefined),
    doc,
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function hasVaultTag(doc: ReturnType<typeof parseDocument>): boolean {
  let found = false;
  const visit = (n: unknown): void => {
    if (found || n === null || typeof n !== 'object') return;
    const node = n as { tag?: string; items?: unknown[]; key?: unknown; value?: unknown };
    if (node.tag === '!vault' || node.tag === '!vault-encrypted') found = true;
    if (Array.isArray(node.items)) node.items.forEach(visit);
    if ('key' in node) visit(node.key);
    if ('value' in node) visit(node.value);
  };
  visit(doc.contents);
  return found;
}

/** Files of a group_vars/<name> or host_vars/<name> entry: <name>, <name>.yml/.yaml, or <name>/ (sorted). */
function varsFilesFor(dir: string, name: string): string[] {
  const out: string[] = [];
  for (const ext of ['', '.yml', '.yaml', '.json']) {
    const f = path.join(dir, name + ext);
    if (existsSync(f) && statSync(f).isFile()) out.push(f);
  }
  const d = path.join(dir, name);
  if (existsSync(d) && statSync(d).isDirectory()) {
    for (const f of readdirSync(d).sort())
      if (/\.(ya?ml|json)$/.test(f) || !f.includes('.')) out.push(path.join(d, f));
  }
  return out;
}

interface Ctx {
  dir: string;
  rel: (file: string) => string;
  mapped: string[];
  unmapped: string[];
  /** Encrypted (or !vault-holding) vars files met, per environment. */
}

function note(list: string[], text: string): void {
  if (!list.includes(text)) list.push(text);
}

/** Reads a vars file: plain mappings merge into vars; encrypted files are secrets (returned apart). */
function loadVarsFile(ctx: Ctx, file: string): { vars: Record<string, unknown>; secret: boolean } {
  const text = readText(file);
  if (isVaultText(text)) return { vars: {}, secret: true };
  const y = readYaml(file, ctx.rel(file));
  if (hasVaultTag(y.doc)) return { vars: {}, secret: true };
  if (y.value === null || y.value === undefined) return { vars: {}, secret: false };
  if (!isObject(y.value))
    throw new ConfigError(
      ctx.rel(file),
      1,
      undefined,
      'a vars file must be a mapping of variable names to values',
    );
  return { vars: y.value, secret: false };
}

/** Splits `k=v k2="a b" k3={{ x | f }}` as Ansible's split_args: on spaces outside quotes and {{ }}. */
export function argWords(text: string): string[] {
  const words: string[] = [];
  let cur = '';
  let quote: string | null = null;
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    const two = text.slice(i, i + 2);
    if (!quote && (two === '{{' || two === '{%')) {
      depth++;
      cur += two;
      i++;
    } else if (!quote && depth > 0 && (two === '}}' || two === '%}')) {
      depth--;
      cur += two;
      i++;
    } else if (depth === 0 && (c === '"' || c === "'") && (quote === null || quote === c)) {
      quote = quote ? null : c;
    } else if (depth === 0 && !quote && /\s/.test(c)) {
      if (cur !== '') words.push(cur);
      cur = '';
    } else cur += c;
  }
  if (cur !== '') words.push(cur);
  return words;
}

/** Module name and arguments of a task (`git: repo=... dest=...` or a mapping, plus `args:`). */
function moduleOf(
  task: Record<string, unknown>,
): { module: string; args: Record<string, unknown>; free: string } | undefined {
  const key = Object.keys(task).find((k) => !TASK_KEYWORDS.has(k) && !k.startsWith('with_'));
  if (!key) return undefined;
  const module = key.replace(/^ansible\.(builtin|legacy)\./, '');
  const raw = task[key];
  let args: Record<string, unknown> = {};
  let free = '';
  if (typeof raw === 'string') {
    const words = argWords(raw);
    const rest: string[] = [];
    // Free-form modules keep their text; k=v pairs are arguments (Ansible's parse_kv).
    const freeForm = ['command', 'shell', 'raw', 'script'].includes(module);
    for (const w of words) {
      const kv = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(w);
      if (kv && (!freeForm || ['chdir', 'creates', 'removes', 'executable'].includes(kv[1]!)))
        args[kv[1]!] = kv[2];
      else rest.push(w);
    }
    free = freeForm ? raw.replace(/\s*\b(chdir|creates|removes|executable)=\S+/g, '').trim() : rest.join(' ');
  } else if (isObject(raw)) {
    args = { ...raw };
    if (typeof raw.cmd === 'string') free = raw.cmd;
    if (typeof raw._raw_params === 'string') free = raw._raw_params;
  }
  if (isObject(task.args)) args = { ...args, ...task.args };
  return { module, args, free };
}

function loopOf(task: Record<string, unknown>, vars: Record<string, unknown>): unknown[] | undefined | null {
  const spec = task.loop ?? task.with_items ?? task.with_list;
  if (spec === undefined) return undefined;
  if (Array.isArray(spec)) return spec;
  if (typeof spec === 'string') {
    const m = /^\s*(?:\{\{\s*)?([A-Za-z_][\w.]*)\s*(?:\}\})?\s*$/.exec(spec);
    if (m) {
      let v: unknown = vars;
      for (const part of m[1]!.split('.')) v = isObject(v) ? v[part] : undefined;
      if (Array.isArray(v)) return v;
    }
  }
  return null;
}

export interface EnvironmentPlan {
  name: string;
  playbook: string;
  hosts: string[];
  user: string | undefined;
  port: number | undefined;
  vars: Record<string, unknown>;
  hostVars: Record<string, Record<string, unknown>>;
  secrets: string | undefined;
  ckan?: { source: string; ref: string };
  extensions: { name: string; source: string; ref: string; plugins: string[] }[];
  template?: { src: string; file: string; owner?: string; group?: string };
  root?: string;
  shared: { path: string; link: string }[];
  hooks: { run: string; once: boolean }[];
  restart?: string;
  restartLabel?: string;
  restartService?: string;
  keepReleases?: number;
  serverFiles: ServerFilePlan[];
  notes: string[];
  /** The hand-installed venv releases were cloned from (virtualenv-clone), when CKAN is not cloned. */
  baseVenv?: { path: string; label: string };
  /** The first deploy's `current` -> venv link. */
  adopts?: { venv: string; label: string };
  whoIni?: boolean;
  owner?: { owner?: string; group?: string };
  requirements: Record<string, string>;
  become?: boolean;
}

const BUILTIN_VARS = [
  'release',
  'release_id',
  'root',
  'current',
  'config_file',
  'environment',
  'host',
  'extensions',
  'plugins',
  'project',
];

/**
 * The inventory, as the project gives it to Ansible: ansible.cfg's `inventory`, else `-i` in its
 * wrapper scripts, else the usual names. A git-ignored inventory that is not there is read from its
 * `.example` beside it, and said so (its hosts are placeholders to check).
 */
function findInventory(
  ctx: Ctx,
  cfg: Record<string, Record<string, string>>,
  invocations: Invocation[],
): string {
  const named = cfg.defaults?.inventory ?? cfg.defaults?.hostfile;
  const fromScripts = invocations.filter((i) => i.inventory !== undefined);
  const isFile = (p: string) => existsSync(p) && statSync(p).isFile();
  let candidates: string[];
  let said: string;
  if (named) {
    candidates = named
      .split(',')
      .map((p) => path.resolve(ctx.dir, p.trim().replace(/^~(?=\/)/, process.env.HOME ?? '~')));
    said = `ansible.cfg inventory = ${named}`;
  } else if (fromScripts.length) {
    const i = fromScripts[0]!;
    candidates = [path.resolve(ctx.dir, i.inventory!)];
    said = `${ctx.rel(i.file)}:${i.line}: -i ${i.inventory}`;
    const others = [...new Set(fromScripts.map((x) => x.inventory))].filter((x) => x !== i.inventory);
    if (others.length)
      note(
        ctx.unmapped,
        `the wrapper scripts pass other inventories too (${others.join(', ')}): ${i.inventory} is read`,
      );
  } else {
    candidates = ['hosts', 'inventory', 'inventory.ini', 'hosts.ini', 'inventory/hosts'].map((p) =>
      path.join(ctx.dir, p),
    );
    said = 'the usual names';
  }
  for (const c of candidates)
    if (isFile(c)) {
      note(ctx.mapped, `inventory: ${ctx.rel(c)} (${said})`);
      return c;
    }
  for (const c of candidates)
    if (isFile(`${c}.example`)) {
      note(
        ctx.unmapped,
        `inventory: ${ctx.rel(c)} (${said}) is not there (git-ignored?): read ${ctx.rel(`${c}.example`)}; check environments.*.hosts, or run init again with ${path.basename(c)} in place`,
      );
      return `${c}.example`;
    }
  throw new ConfigError(
    ctx.rel(named ? path.join(ctx.dir, 'ansible.cfg') : ctx.dir),
    undefined,
    undefined,
    named
      ? `the inventory it names (${named}) is not a file`
      : fromScripts.length
        ? `the inventory the wrapper scripts pass (${said}) is not a file, nor is its .example`
        : 'no INI inventory found (looked for ansible.cfg, -i in bin/*.sh and Makefile, hosts, inventory, inventory.ini, hosts.ini)',
    'ckan-release reads an INI inventory; put it where the project names it',
  );
}

/** Renders an Ansible expression with the environment's variables, or undefined when it cannot. */
function evaluate(text: unknown, vars: Record<string, unknown>): string | undefined {
  if (typeof text !== 'string') return text === undefined || text === null ? undefined : String(text);
  try {
    return renderString(text, vars, 'task');
  } catch {
    return undefined;
  }
}

/** Turns a rendered command that names the release into one for ckan-release's hook templates. */
function releaseTemplate(cmd: string, configFile: string | undefined): string {
  let out = cmd;
  if (configFile) out = out.split(`${RELEASE}/${configFile}`).join('{{ config_file }}');
  return out.split(RELEASE).join('{{ release }}');
}

const RELEASE_ID = '@@CKAN_RELEASE_ID@@';

/** A run of the playbook: the deploy (ship), the first deploy (setup) or the rollback. */
interface Pass {
  name: 'deploy' | 'setup' | 'rollback';
  /** The extra vars of the wrapper that runs this action (deploy_action=...). */
  extra: Record<string, unknown>;
}

interface Located {
  task: Record<string, unknown>;
  file: string;
  line: number | undefined;
}

export interface ServerFilePlan {
  src: string;
  dest: string;
  mode: string | undefined;
  owner: string | undefined;
  group: string | undefined;
  label: string;
  /** Written by the first deploy only (the vhost), which restarted the server after it. */
  reload?: 'vhost';
}

function located(list: unknown[], file: string, line: number | undefined): Located[] {
  // Block items: the block's line (their own lines are not tracked)
  return list.filter(isObject).map((task) => ({ task, file, line }));
}

/** The tasks of a tasks file, each with its line. */
function readTasks(ctx: Ctx, file: string): Located[] {
  const y = readYaml(file, ctx.rel(file));
  if (y.value === null || y.value === undefined) return [];
  if (!Array.isArray(y.value))
    throw new ConfigError(ctx.rel(file), 1, undefined, 'a tasks file must be a list of tasks');
  const nodes = isSeq(y.doc.contents) ? y.doc.contents.items : [];
  return (y.value as unknown[]).flatMap((task, i) =>
    isObject(task) ? [{ task, file, line: y.lineOf(nodes[i] as Node) }] : [],
  );
}

/** `when:` as Ansible evaluates it (a list is an "and"); undefined when it cannot be evaluated here. */
function whenOf(conds: unknown[], vars: Record<string, unknown>): boolean | undefined {
  let unknown = false;
  for (const c of conds) {
    if (typeof c === 'boolean') {
      if (!c) return false;
      continue;
    }
    const text = String(c).replace(/^\s*\{\{(.*)\}\}\s*$/s, '$1');
    // A variable the condition names that is not defined (Ansible would fail): cannot tell.
    const words = new Set([
      'and',
      'or',
      'not',
      'is',
      'in',
      'defined',
      'undefined',
      'none',
      'true',
      'false',
      'True',
      'False',
      'None',
      'int',
      'bool',
      'string',
      'length',
      'lower',
      'upper',
      'trim',
      'default',
      'succeeded',
      'failed',
      'changed',
      'skipped',
      'version',
      'match',
      'search',
      'regex',
      'equalto',
      'sameas',
      'number',
      'mapping',
      'iterable',
      'sequence',
    ]);
    const strings = text.replace(/(["'])(?:(?!\1).)*\1/g, '""');
    const missing = (strings.match(/(?<![.\w])[A-Za-z_][A-Za-z0-9_]*\b/g) ?? []).filter(
      (n) => !words.has(n) && !Object.hasOwn(vars, n),
    );
    if (missing.length && !/\bis\s+(not\s+)?(defined|undefined)\b/.test(text)) {
      unknown = true;
      continue;
    }
    try {
      const r = renderString(`{% if (${text}) %}1{% else %}0{% endif %}`, vars, 'when');
      if (r === '0') return false;
    } catch {
      unknown = true;
    }
  }
  return unknown ? undefined : true;
}

/** tasks/<name>, tasks/<name>.yml or .yaml. */
function taskFile(dir: string, name: string): string | undefined {
  return [name, `${name}.yml`, `${name}.yaml`]
    .map((n) => path.join(dir, n))
    .find((p) => existsSync(p) && statSync(p).isFile());
}

/** A role as Ansible finds it: a path relative to the playbook, roles/ beside it, then roles_path. */
function findRole(
  ctx: Ctx,
  name: string,
  playbookDir: string,
  cfg: Record<string, Record<string, string>>,
  where: string,
): string {
  const searched = [path.join(playbookDir, 'roles'), playbookDir];
  for (const p of (cfg.defaults?.roles_path ?? '').split(':').filter(Boolean))
    searched.push(path.resolve(ctx.dir, p.replace(/^~(?=\/)/, process.env.HOME ?? '~')));
  const candidates = path.isAbsolute(name) ? [name] : searched.map((d) => path.resolve(d, name));
  const found = candidates.find((d) => existsSync(d) && statSync(d).isDirectory());
  if (!found)
    throw new UsageError(
      `${where}: the role "${name}" was not found`,
      `Ansible looks in ${searched.map((d) => ctx.rel(d)).join(', ')} (roles_path of ansible.cfg)`,
    );
  return found;
}

interface RoleData {
  defaults: Record<string, unknown>;
  vars: Record<string, unknown>;
  handlers: { h: Record<string, unknown>; file: string; line: number | undefined }[];
}

function loadRole(ctx: Ctx, dir: string): RoleData {
  const mapping = (sub: string): Record<string, unknown> => {
    const f = taskFile(path.join(dir, sub), 'main');
    return f ? loadVarsFile(ctx, f).vars : {};
  };
  const hf = taskFile(path.join(dir, 'handlers'), 'main');
  return {
    defaults: mapping('defaults'),
    vars: mapping('vars'),
    handlers: hf ? readTasks(ctx, hf).map((l) => ({ h: l.task, file: l.file, line: l.line })) : [],
  };
}

/** The play's roles: `- name`, `- role: name`, `- { role: 'sites/ckan', when: ... }`. */
function roleRoots(
  ctx: Ctx,
  play: Record<string, unknown>,
  playbookFile: string,
  cfg: Record<string, Record<string, string>>,
  display: string,
  playLine: number | undefined,
): { dir: string; role: RoleData; when: unknown[] }[] {
  if (!Array.isArray(play.roles)) return [];
  return play.roles.map((r) => {
    const name = typeof r === 'string' ? r : isObject(r) ? String(r.role ?? r.name) : String(r);
    const dir = findRole(ctx, name, path.dirname(playbookFile), cfg, `${display}:${playLine ?? '?'}`);
    note(
      ctx.mapped,
      `${display}: role ${name} -> read from ${ctx.rel(dir)} (its tasks, vars, defaults, handlers, templates)`,
    );
    return {
      dir,
      role: loadRole(ctx, dir),
      when: isObject(r) && r.when !== undefined ? [r.when].flat() : [],
    };
  });
}

/** An Ansible mode (`u=rw,g=r,o=r`, `0644`, `644`) as the octal string server.files takes. */
function modeOf(mode: unknown): string | undefined {
  if (mode === undefined || mode === null) return undefined;
  const s = String(mode);
  if (/^0?[0-7]{3,4}$/.test(s)) return s.padStart(4, '0').slice(-4);
  let bits = 0;
  for (const part of s.split(',')) {
    const m = /^([ugoa]*)=([rwx]*)$/.exec(part.trim());
    if (!m) return undefined;
    const v = (m[2]!.includes('r') ? 4 : 0) + (m[2]!.includes('w') ? 2 : 0) + (m[2]!.includes('x') ? 1 : 0);
    for (const who of m[1] === '' || m[1] === 'a' ? 'ugo' : m[1]!)
      bits |= v << (who === 'u' ? 6 : who === 'g' ? 3 : 0);
  }
  return `0${bits.toString(8).padStart(3, '0')}`;
}

/** The extra vars of the wrapper that runs an action; the action itself when no wrapper says. */
function pickAction(invocations: Invocation[], action: string): { vars: Record<string, unknown> } {
  const inv = invocations.find((i) => i.extraVars.deploy_action === action);
  return { vars: inv ? { ...inv.extraVars } : { deploy_action: action } };
}

function planEnvironment(
  ctx: Ctx,
  inv: Inventory,
  playbookFile: string,
  cfg: Record<string, Record<string, string>>,
  allInvocations: Invocation[],
): EnvironmentPlan {
  const display = ctx.rel(playbookFile);
  const envName = path
    .basename(playbookFile)
    .replace(/^ckan_/, '')
    .replace(/\.ya?ml$/, '')
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, '-');
  const y = readYaml(playbookFile, display);
  const plays = y.value;
  if (!Array.isArray(plays) || plays.length === 0 || !plays.every(isObject)) {
    throw new ConfigError(display, 1, undefined, 'a playbook must be a list of plays (- hosts: ...)');
  }
  const playNodes = isSeq(y.doc.contents) ? y.doc.contents.items : [];
  const index = plays.findIndex((p) => typeof p.hosts === 'string' && (p.tasks || p.roles));
  if (index < 0) throw new ConfigError(display, 1, undefined, 'no play with hosts and tasks');
  const play = plays[index] as Record<string, unknown>;
  const playLine = y.lineOf(playNodes[index] as Node);
  plays.forEach((p, i) => {
    if (i !== index)
      note(
        ctx.unmapped,
        `${display}: play ${i + 1} (hosts: ${String((p as Record<string, unknown>).hosts)}): only the first play that deploys is converted`,
      );
  });

  // Hosts: the play's pattern, as groups and host names joined by ":" or ",".
  const pattern = String(play.hosts);
  const hosts: string[] = [];
  const groupsOfPlay: string[] = [];
  for (const part of pattern
    .split(/[:,]/)
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (part.startsWith('!') || part.startsWith('&')) {
      note(
        ctx.unmapped,
        `${display}: host pattern "${part}" (exclusions and intersections are not converted)`,
      );
      continue;
    }
    if (inv.groups.has(part)) {
      groupsOfPlay.push(part);
      for (const h of groupHosts(inv, part)) if (!hosts.includes(h)) hosts.push(h);
    } else if (inv.hostVars.has(part)) {
      if (!hosts.includes(part)) hosts.push(part);
    } else {
      throw new ConfigError(
        display,
        playLine,
        `[${index}].hosts`,
        `"${part}" is neither a group nor a host of ${ctx.rel(inv.file)}`,
      );
    }
  }
  if (hosts.length === 0)
    throw new ConfigError(
      display,
      playLine,
      `[${index}].hosts`,
      `"${pattern}" has no hosts in ${ctx.rel(inv.file)}`,
    );

  // The wrapper scripts that run this playbook: their extra vars (ckan_env=...) win over everything.
  const invocations = allInvocations.filter(
    (i) => i.playbook !== undefined && path.basename(i.playbook) === path.basename(playbookFile),
  );
  const deployRun = invocations.find((i) => i.extraVars.deploy_action === 'deploy') ?? invocations[0];
  const extra: Record<string, unknown> = { ...(deployRun?.extraVars ?? {}) };
  delete extra.deploy_action;
  for (const i of invocations)
    for (const f of i.extraVarsFiles)
      note(
        ctx.unmapped,
        `${ctx.rel(i.file)}:${i.line}: -e @${f} (extra vars files are not read; set them in vars)`,
      );
  const taskName = (t: Record<string, unknown>, m: string) =>
    typeof t.name === 'string' ? `"${t.name}"` : m;
  const earlyRoots = roleRoots(ctx, play, playbookFile, cfg, display, playLine);

  // Variables, in Ansible's precedence order (later wins).
  const vars: Record<string, unknown> = {};
  for (const r of earlyRoots) Object.assign(vars, r.role.defaults);
  const secretsFiles: string[] = [];
  const merge = (v: Record<string, unknown>) => Object.assign(vars, v);
  const groupVarsDir = path.join(ctx.dir, 'group_vars');
  const hostVarsDir = path.join(ctx.dir, 'host_vars');
  const readVars = (file: string) => {
    const r = loadVarsFile(ctx, file);
    if (r.secret) secretsFiles.push(file);
    return r.vars;
  };
  merge(inv.groups.get('all')?.vars ?? {});
  for (const f of varsFilesFor(groupVarsDir, 'all')) merge(readVars(f));
  const groupChain: string[] = [];
  for (const g of groupsOfPlay)
    for (const a of [...ancestors(inv, g), g]) if (!groupChain.includes(a)) groupChain.push(a);
  for (const g of groupChain) merge(inv.groups.get(g)?.vars ?? {});
  for (const g of groupChain) for (const f of varsFilesFor(groupVarsDir, g)) merge(readVars(f));
  const playVars: Record<string, unknown> = {};
  if (isObject(play.vars)) Object.assign(playVars, play.vars);
  const varsFiles = Array.isArray(play.vars_files)
    ? play.vars_files
    : play.vars_files
      ? [play.vars_files]
      : [];
  for (const vf of varsFiles) {
    const name = typeof vf === 'string' ? vf : undefined;
    if (!name || name.includes('{{')) {
      note(
        ctx.unmapped,
        `${display}: vars_files entry ${JSON.stringify(vf)} (templated or alternative file names are not converted)`,
      );
      continue;
    }
    const file = path.resolve(path.dirname(playbookFile), name);
    if (!existsSync(file))
      throw new ConfigError(display, playLine, `[${index}].vars_files`, `no such file: ${name}`);
    Object.assign(playVars, readVars(file));
  }
  merge(playVars);
  for (const r of earlyRoots) merge(r.role.vars);

  // Host variables: inventory host lines and host_vars/ (play variables still win, as in Ansible).
  let user: string | undefined =
    typeof play.remote_user === 'string'
      ? play.remote_user
      : (deployRun?.user ?? cfg.defaults?.remote_user ?? undefined);
  if (deployRun?.user && typeof play.remote_user !== 'string')
    note(
      ctx.mapped,
      `${ctx.rel(deployRun.file)}:${deployRun.line}: -u ${deployRun.user} -> environments.${envName}.user`,
    );
  const hostVars: Record<string, Record<string, unknown>> = {};
  const entries: string[] = [];
  const ports = new Set<number | undefined>();
  for (const h of hosts) {
    const hv: Record<string, unknown> = { ...(inv.hostVars.get(h) ?? {}) };
    for (const f of varsFilesFor(hostVarsDir, h)) Object.assign(hv, readVars(f));
    const address =
      typeof hv.ansible_host === 'string'
        ? hv.ansible_host
        : typeof hv.ansible_ssh_host === 'string'
          ? hv.ansible_ssh_host
          : h;
    if (address !== h)
      note(
        ctx.mapped,
        `${envName}: host ${h} -> ${address} (its ansible_host; add a Host ${h} alias to ~/.ssh/config to keep the name)`,
      );
    ports.add(
      typeof hv.ansible_port === 'number'
        ? hv.ansible_port
        : typeof hv.ansible_ssh_port === 'number'
          ? hv.ansible_ssh_port
          : undefined,
    );
    const own: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(hv)) {
      if (k.startsWith('ansible_')) continue;
      if (Object.hasOwn(playVars, k)) {
        note(ctx.unmapped, `${envName}: host variable ${k} of ${h} (play variables win in Ansible; dropped)`);
        continue;
      }
      if (!Object.hasOwn(vars, k) || JSON.stringify(vars[k]) !== JSON.stringify(v)) own[k] = v;
    }
    entries.push(address);
    if (Object.keys(own).length) hostVars[address] = own;
  }
  const groupUser = vars.ansible_user ?? vars.ansible_ssh_user;
  if (typeof groupUser === 'string') user = groupUser;
  for (const k of Object.keys(vars)) {
    if (k.startsWith('ansible_')) {
      note(
        ctx.unmapped,
        `${envName}: ${k} (Ansible connection setting)${k === 'ansible_user' || k === 'ansible_ssh_user' ? ' -> user' : ''}`,
      );
      delete vars[k];
    }
  }
  const port = ports.size === 1 ? [...ports][0] : undefined;
  if (ports.size > 1) {
    entries.forEach((e, i) => {
      const hv = inv.hostVars.get(hosts[i]!) ?? {};
      const p = hv.ansible_port ?? hv.ansible_ssh_port;
      if (typeof p === 'number') entries[i] = `${e}:${p}`;
    });
  }
  if (secretsFiles.length > 1) {
    note(
      ctx.unmapped,
      `${envName}: more than one encrypted vars file (${secretsFiles.map(ctx.rel).join(', ')}): only the first is the secrets file; merge them with ansible-vault`,
    );
  }

  const plan: EnvironmentPlan = {
    name: envName,
    playbook: display,
    hosts: entries,
    user,
    port,
    vars,
    hostVars,
    secrets: secretsFiles[0],
    extensions: [],
    shared: [],
    hooks: [],
    serverFiles: [],
    notes: [],
    requirements: {},
  };

  // Tasks, as Ansible runs them: pre_tasks, the roles' tasks, tasks, post_tasks; imports and includes
  // followed, `when:` evaluated with the environment's variables (and the deploy action of the run).
  // Expressions are rendered with the release directory as a marker, so that commands and paths can be
  // told apart and rewritten into ckan-release's variables.
  const become = play.become === true || play.become === 'yes' || play.sudo === true || play.sudo === 'yes';
  const sudo = (cmd: string) => (become && user !== 'root' && !/^sudo\b/.test(cmd) ? `sudo -n ${cmd}` : cmd);
  const handlers: { h: Record<string, unknown>; file: string; line: number | undefined }[] = [];
  const notified = new Set<string>();
  const baseVenvs: { path: string; label: string }[] = [];
  let restartTask: { cmd: string; label: string; service?: string } | undefined;
  const included: Record<string, unknown> = {};
  const roots = earlyRoots;

  let byAction = invocations.some((i) => i.extraVars.deploy_action !== undefined);
  let facts: Record<string, unknown> = {};
  const walk = (pass: Pass) => {
    facts = {};
    const context: Record<string, unknown> = { ...vars, ...extra, ...pass.extra };
    const visit = (list: Located[], inherited: unknown[], roleDir: string | undefined) => {
      for (const { task: t, file, line } of list) {
        const where = `${ctx.rel(file)}:${line ?? '?'}`;
        const conds = [...inherited, ...[t.when].flat().filter((c) => c !== undefined)];
        if (conds.some((c) => /\bdeploy_action\b/.test(String(c)))) byAction = true;
        const include =
          t.import_tasks ?? t.include_tasks ?? t.include ?? t.include_role ?? t.import_role ?? t.block;
        if (include !== undefined) {
          const on = whenOf(conds, context);
          if (on === false) continue;
          if (on === undefined)
            note(ctx.unmapped, `${where}: when: ${conds.join(' and ')} could not be evaluated; followed`);
          if (t.block !== undefined) {
            const items = (['block', 'rescue', 'always'] as const).flatMap((k) =>
              Array.isArray(t[k]) ? located(t[k] as unknown[], file, line) : [],
            );
            visit(items, conds, roleDir);
            if (t.rescue || t.always)
              note(ctx.unmapped, `${where}: rescue/always of a block (followed as plain tasks)`);
            continue;
          }
          if (t.include_role !== undefined || t.import_role !== undefined) {
            const spec = (t.include_role ?? t.import_role) as unknown;
            const name = isObject(spec) ? spec.name : spec;
            const from = isObject(spec) && typeof spec.tasks_from === 'string' ? spec.tasks_from : 'main';
            const dir = findRole(ctx, String(name), path.dirname(playbookFile), cfg, where);
            const r = loadRole(ctx, dir);
            Object.assign(context, r.defaults, vars, r.vars, included, facts, extra, pass.extra);
            const f = taskFile(path.join(dir, 'tasks'), from);
            if (f) visit(readTasks(ctx, f), conds, dir);
            handlers.push(...r.handlers);
            note(ctx.mapped, `${where}: include_role ${String(name)} -> followed (${ctx.rel(dir)})`);
            continue;
          }
          const rendered = evaluate(isObject(include) ? include.file : include, context);
          if (!rendered) {
            note(
              ctx.unmapped,
              `${where}: ${String(include)} (a templated file name that could not be rendered)`,
            );
            continue;
          }
          const f = [
            roleDir ? path.join(roleDir, 'tasks') : undefined,
            path.dirname(file),
            path.dirname(playbookFile),
          ]
            .filter((d): d is string => !!d)
            .map((d) => path.resolve(d, rendered))
            .find((p) => existsSync(p));
          if (!f) throw new ConfigError(ctx.rel(file), line, undefined, `no such tasks file: ${rendered}`);
          visit(readTasks(ctx, f), conds, roleDir);
          continue;
        }
        const m = moduleOf(t);
        if (!m) continue;
        const label = `${where}: task ${taskName(t, m.module)}`;
        const on = whenOf(conds, context);
        if (on === false) continue;
        if (on === undefined)
          note(
            ctx.unmapped,
            `${label}: when: ${conds.join(' and ')} could not be evaluated; converted as if true`,
          );
        if (m.module === 'include_vars') {
          const name = evaluate(m.args.file ?? m.args.name ?? m.free, context);
          const f = name
            ? [
                roleDir ? path.join(roleDir, 'vars') : undefined,
                path.dirname(file),
                path.dirname(playbookFile),
              ]
                .filter((d): d is string => !!d)
                .map((d) => path.resolve(d, name))
                .find((p) => existsSync(p))
            : undefined;
          if (!f) {
            note(ctx.unmapped, `${label}: include_vars ${String(name)}: no such file`);
            continue;
          }
          const r = loadVarsFile(ctx, f);
          if (r.secret) {
            if (pass.name === 'deploy' && !secretsFiles.includes(f)) secretsFiles.push(f);
          } else {
            if (pass.name === 'deploy') Object.assign(included, r.vars);
            Object.assign(context, r.vars, facts, extra, pass.extra);
          }
          if (pass.name === 'deploy')
            note(
              ctx.mapped,
              `${label}: include_vars ${ctx.rel(f)} -> ${r.secret ? 'secrets' : 'vars'} of ${envName}`,
            );
          continue;
        }
        visitTask(pass, t, m, label, context, roleDir, file);
      }
    };
    const tasks: Located[] = [];
    const playTasks = (key: string): Located[] => {
      const list = play[key];
      if (!Array.isArray(list)) return [];
      const node = y.doc.getIn([index, key], true) as unknown;
      const items = isSeq(node) ? node.items : [];
      return list.flatMap((task, i) =>
        isObject(task) ? [{ task, file: playbookFile, line: y.lineOf(items[i] as Node) ?? playLine }] : [],
      );
    };
    const pre = playTasks('pre_tasks');
    visit(pre, [], undefined);
    for (const r of roots) {
      Object.assign(context, r.role.defaults, vars, r.role.vars, included, facts, extra, pass.extra);
      const f = taskFile(path.join(r.dir, 'tasks'), 'main');
      if (f) visit(readTasks(ctx, f), r.when, r.dir);
      if (pass.name === 'deploy') handlers.push(...r.role.handlers);
    }
    tasks.push(...playTasks('tasks'), ...playTasks('post_tasks'));
    visit(tasks, [], undefined);
    if (pass.name === 'deploy' && Array.isArray(play.handlers))
      handlers.push(...playTasks('handlers').map((l) => ({ h: l.task, file: l.file, line: l.line })));
    return context;
  };

  const templatePath = (src: string, roleDir: string | undefined, file: string): string | undefined =>
    [
      roleDir ? path.join(roleDir, 'templates') : undefined,
      roleDir,
      path.join(path.dirname(file), '..', 'templates'),
      path.join(path.dirname(playbookFile), 'templates'),
      path.dirname(playbookFile),
    ]
      .filter((d): d is string => !!d)
      .map((d) => path.resolve(d, src))
      .find((p) => existsSync(p) && statSync(p).isFile());

  const addServerFile = (sf: ServerFilePlan) => {
    const had = plan.serverFiles.find((f) => f.dest === sf.dest);
    if (had) {
      had.reload ??= sf.reload;
      return;
    }
    plan.serverFiles.push(sf);
  };

  function visitTask(
    pass: Pass,
    t: Record<string, unknown>,
    m: { module: string; args: Record<string, unknown>; free: string },
    label: string,
    context: Record<string, unknown>,
    roleDir: string | undefined,
    file: string,
  ): void {
    const items = loopOf(t, context);
    const withItem = (item: unknown) => {
      const base = isObject(t.vars) ? { ...context, ...t.vars } : context;
      return item === undefined ? base : { ...base, item };
    };
    const ev = (v: unknown, item?: unknown) => evaluate(v, withItem(item));
    const inRelease = (p: string | undefined): string | undefined => {
      if (!p) return undefined;
      if (p.startsWith(`${RELEASE}/`)) return p.slice(RELEASE.length + 1);
      // <root>/current/X right after the switch of current is X in the release
      if (plan.root && p.startsWith(`${plan.root}/current/`)) return p.slice(plan.root.length + 9);
      return undefined;
    };
    if (pass.name === 'rollback') return;
    if (pass.name === 'setup') {
      switch (m.module) {
        case 'template': {
          const dest = ev(m.args.dest);
          const src = typeof m.args.src === 'string' ? m.args.src : undefined;
          if (!src || !dest) return;
          if (
            dest.startsWith('/') &&
            !dest.startsWith(`${plan.root ?? '/usr/lib/ckan'}/`) &&
            !dest.includes(RELEASE)
          ) {
            const abs = templatePath(src, roleDir, file);
            if (!abs)
              throw new ConfigError(
                label.split(': task')[0]!,
                undefined,
                undefined,
                `no such template: ${src}`,
              );
            addServerFile({
              src: abs,
              dest,
              mode: modeOf(m.args.mode),
              owner: ev(m.args.owner),
              group: ev(m.args.group),
              label,
              reload: 'vhost',
            });
            if (isObject(t.vars))
              note(
                ctx.unmapped,
                `${label}: its task vars (${Object.keys(t.vars).join(', ')}) are not used: server.files are rendered with the environment's variables, the same for setup and ship (the adopted venv keeps the config the first deploy wrote into it)`,
              );
          } else
            note(
              ctx.mapped,
              `${label}: the config in the adopted venv stays as it is (setup adopts the venv; ship renders the config into each release)`,
            );
          return;
        }
        case 'file': {
          const src = ev(m.args.src);
          const dest = ev(m.args.dest ?? m.args.path);
          if (m.args.state === 'link' && dest && /\/current$/.test(dest) && src) {
            plan.adopts = { venv: src, label };
            note(
              ctx.mapped,
              `${label}: current -> ${src}: \`ckan-release setup\` adopts ${src} as the first release (it stays where it is, current points at it through releases/)`,
            );
          } else if (m.args.state === 'directory')
            note(
              ctx.mapped,
              `${label}: directories: \`ckan-release setup\` makes <root>, releases/ and shared/; make others (${String(m.args.path ?? '')}) once by hand if they are not there`,
            );
          else
            note(
              ctx.unmapped,
              `${label} (file ${String(m.args.state ?? '')} in the first deploy is not converted)`,
            );
          return;
        }
        case 'service':
        case 'systemd':
          note(
            ctx.mapped,
            `${label}: the restart of the first deploy -> the reload of the vhost in server.files (run by setup when it installs it)`,
          );
          return;
        case 'yum':
        case 'apt':
        case 'package':
          note(
            ctx.mapped,
            `${label}: not needed (the releases are built by \`ckan-release build\`, not on the hosts)`,
          );
          return;
        default:
          note(ctx.unmapped, `${label} (module ${m.module} in the first deploy is not converted)`);
          return;
      }
    }
    switch (m.module) {
      case 'set_fact': {
        for (const [k, v] of Object.entries(m.args)) {
          if (typeof v === 'string' && /lookup\(\s*['"]pipe['"]\s*,\s*['"]date\b/.test(v)) {
            context[k] = facts[k] = RELEASE_ID;
            note(ctx.mapped, `${label}: ${k} is the release's name -> {{ release_id }}`);
            continue;
          }
          const r = evaluate(v, withItem(undefined));
          if (/\/releases\//.test(String(v)) || (r !== undefined && r.includes(RELEASE_ID))) {
            context[k] = facts[k] = RELEASE;
            plan.vars[k] = '{{ release }}';
            note(ctx.mapped, `${label}: ${k} is the release directory -> vars.${k}: "{{ release }}"`);
          } else if (r !== undefined) {
            context[k] = facts[k] = r;
            note(ctx.unmapped, `${label}: set_fact ${k} (set it in vars)`);
          } else note(ctx.unmapped, `${label}: set_fact ${k} could not be rendered (set it in vars)`);
        }
        break;
      }
      case 'git': {
        if (items === null) {
          note(ctx.unmapped, `${label}: its loop could not be read`);
          break;
        }
        const runs = items === undefined ? [undefined] : items;
        for (const item of runs) {
          const repo = ev(m.args.repo, item);
          const dest = ev(m.args.dest, item);
          const pinned = m.args.version !== undefined ? ev(m.args.version, item) : undefined;
          if (!repo || !dest) {
            note(ctx.unmapped, `${label}: repo or dest could not be worked out`);
            continue;
          }
          const version = pinned ?? 'HEAD';
          const name = path.posix.basename(dest);
          if (name === 'ckan' && plan.ckan === undefined) plan.ckan = { source: repo, ref: version };
          else {
            const plugins = isObject(item) && Array.isArray(item.plugins) ? item.plugins.map(String) : [];
            plan.extensions.push({ name, source: repo, ref: version, plugins });
          }
          if (pinned === undefined)
            note(
              ctx.mapped,
              `${label}: ${name} has no version: ref HEAD (its default branch), pinned to a commit at each build`,
            );
          else if (version === 'HEAD' || version === 'master' || version === 'main')
            note(
              ctx.mapped,
              `${label}: ${name} follows ${version}: ckan-release pins it to a commit at each build`,
            );
        }
        note(
          ctx.mapped,
          `${label} -> ckan.source/ref and extensions[] (fetched once, on the build machine, pinned)`,
        );
        break;
      }
      case 'pip': {
        const nameArg =
          typeof m.args.name === 'string' ? ev(m.args.name, items ? items[0] : undefined) : undefined;
        const req =
          typeof m.args.requirements === 'string'
            ? ev(m.args.requirements, items ? items[0] : undefined)
            : undefined;
        if (req) requirementsFrom(req, items, (item) => ev(m.args.requirements, item), label);
        else if (nameArg && !nameArg.includes('/'))
          note(
            ctx.unmapped,
            `${label}: installs ${nameArg} from PyPI: add it to an extension's requirements.txt`,
          );
        else
          note(
            ctx.mapped,
            `${label}: done by ckan-release build (CKAN, each extension editable, their requirements.txt)`,
          );
        break;
      }
      case 'template': {
        const dest = ev(m.args.dest);
        const src = typeof m.args.src === 'string' ? m.args.src : undefined;
        const abs = src ? templatePath(src, roleDir, file) : undefined;
        if (src && !abs)
          throw new ConfigError(label.split(': task')[0]!, undefined, undefined, `no such template: ${src}`);
        const file0 = inRelease(dest);
        if (abs && dest && file0 && !plan.template) {
          plan.template = { src: abs, file: file0, owner: ev(m.args.owner), group: ev(m.args.group) };
          note(
            ctx.mapped,
            `${label} -> config.template ${src}, file ${file0} (rendered into each release at ship)`,
          );
        } else if (abs && dest && dest.startsWith('/') && !dest.includes(RELEASE)) {
          addServerFile({
            src: abs,
            dest,
            mode: modeOf(m.args.mode),
            owner: ev(m.args.owner),
            group: ev(m.args.group),
            label,
          });
        } else note(ctx.unmapped, `${label}: ${src ?? '?'} -> ${dest ?? '?'} is not converted`);
        break;
      }
      case 'file': {
        const state = m.args.state;
        const src = ev(m.args.src);
        const dest = ev(m.args.dest ?? m.args.path);
        if (state === 'link' && dest && src === RELEASE && /\/current$/.test(dest)) {
          plan.root = path.posix.dirname(dest);
          if (t.notify) for (const n of [t.notify].flat()) notified.add(String(n));
          note(ctx.mapped, `${label} -> root ${plan.root}; the switch of current (atomic, by rename)`);
        } else if (
          state === 'link' &&
          src &&
          /\/src\/ckan\/ckan\/config\/who\.ini$/.test(src) &&
          dest &&
          inRelease(dest) === 'who.ini'
        ) {
          plan.whoIni = true;
          note(
            ctx.mapped,
            `${label}: CKAN's who.ini linked into the release -> done by ckan-release build for CKAN <= 2.9 (the release's who.ini)`,
          );
        } else if (state === 'link' && src && inRelease(dest) && /\/shared\/./.test(src)) {
          plan.shared.push({ path: src.replace(/^.*\/shared\//, ''), link: inRelease(dest)! });
          note(
            ctx.mapped,
            `${label} -> shared: { path: ${src.replace(/^.*\/shared\//, '')}, link: ${inRelease(dest)} }`,
          );
        } else if (
          (state === 'directory' || state === undefined) &&
          dest === RELEASE &&
          (m.args.owner || m.args.group)
        ) {
          plan.owner = { owner: ev(m.args.owner), group: ev(m.args.group) };
          note(
            ctx.mapped,
            `${label} -> deploy.owner ${plan.owner.owner ?? '-'}, deploy.group ${plan.owner.group ?? '-'} (set on every release file)`,
          );
        } else note(ctx.unmapped, `${label} (file ${String(state ?? '')} is not converted)`);
        break;
      }
      case 'service':
      case 'systemd':
      case 'systemd_service': {
        const name = ev(m.args.name);
        const state = String(m.args.state ?? 'restarted');
        const verb = state === 'reloaded' ? 'reload' : 'restart';
        if (name) {
          const cmd = m.module === 'service' ? `service ${name} ${verb}` : `systemctl ${verb} ${name}`;
          restartTask = { cmd: sudo(cmd), label, service: name };
        } else note(ctx.unmapped, `${label} (the service name could not be rendered)`);
        break;
      }
      case 'command':
      case 'shell': {
        const cmd = items ? ev(m.free, items[0]) : ev(m.free);
        const chdir = items ? ev(m.args.chdir, items[0]) : ev(m.args.chdir);
        if (cmd === undefined) {
          note(
            ctx.unmapped,
            `${label}: its command could not be rendered (a secret or an Ansible-only variable in it?)`,
          );
        } else if (/virtualenv-clone/.test(cmd)) {
          const base = cmd.split(/\s+/)[1];
          if (base) baseVenvs.push({ path: base, label });
          note(
            ctx.mapped,
            `${label}: done by ckan-release build (each release is a new venv, built in a container; the hand-installed ${base ?? 'venv'} is adopted by setup)`,
          );
        } else if (/setup\.py\s+develop|pip\s+install\s+(-e|--editable)/.test(cmd)) {
          note(
            ctx.mapped,
            `${label}: done by ckan-release build (${chdir && /\/src\/ckan\/?$/.test(chdir) ? 'CKAN' : 'each extension'} installed editable)`,
          );
        } else if (/pip\s+install\s+.*-r\s+\S+/.test(cmd)) {
          requirementsFrom(
            /-r\s+(\S+)/.exec(cmd)![1]!,
            items,
            (item) => {
              const c = ev(m.free, item);
              return c ? /-r\s+(\S+)/.exec(c)?.[1] : undefined;
            },
            label,
          );
        } else if (/ls\s+-1?d?t/.test(cmd) && /rm\s+-rf/.test(cmd)) {
          const keep = /tail\s+-n\s+\+(\d+)/.exec(cmd);
          if (keep) plan.keepReleases = Math.max(1, Number(keep[1]) - 1);
          note(
            ctx.mapped,
            `${label} -> deploy.keep_releases${keep ? ` ${plan.keepReleases}` : ''} (prune by the ledger, never by mtime)`,
          );
        } else if (cmd.includes(RELEASE)) {
          plan.hooks.push({
            run: releaseTemplate(cmd, plan.template?.file),
            once: t.run_once === true || t.run_once === 'yes',
          });
          note(ctx.mapped, `${label} -> deploy.hooks.before_switch${t.run_once ? ' (once)' : ''}`);
        } else
          note(ctx.unmapped, `${label}: command "${m.free}" does not work on the release; not converted`);
        break;
      }
      default:
        note(ctx.unmapped, `${label} (module ${m.module} is not converted)`);
    }
  }

  /** `pip install -r <release>/src/<ext>/<file>` per extension -> extensions[].requirements when not requirements.txt. */
  function requirementsFrom(
    first: string,
    items: unknown[] | undefined | null,
    render: (item: unknown) => string | undefined,
    label: string,
  ): void {
    const runs = items ?? [undefined];
    for (const item of runs) {
      const p = render(item) ?? first;
      const mm = new RegExp(`^${RELEASE}/src/([^/]+)/(.+)$`).exec(p);
      if (!mm) {
        note(ctx.unmapped, `${label}: ${p} is not a file of an extension in the release; not converted`);
        continue;
      }
      plan.requirements[mm[1]!] = mm[2]!;
    }
    note(
      ctx.mapped,
      `${label}: done by ckan-release build (each extension's requirements file, with the wheelhouse)`,
    );
  }

  const deployPass: Pass = { name: 'deploy', extra: pickAction(invocations, 'deploy').vars };
  walk(deployPass);
  // The first deploy, when the project has one (tasks gated by deploy_action): what setup does.
  if (byAction) walk({ name: 'setup', extra: pickAction(invocations, 'first_deploy').vars });
  for (const inv2 of invocations) {
    const action = inv2.extraVars.deploy_action;
    if (typeof action === 'string')
      note(
        ctx.mapped,
        `${ctx.rel(inv2.file)}:${inv2.line}: deploy_action=${action} -> \`ckan-release ${action === 'first_deploy' ? 'setup' : action === 'rollback' ? 'rollback' : 'build && ckan-release ship'} ${envName}\``,
      );
  }
  plan.baseVenv = baseVenvs[0];
  Object.assign(plan.vars, included);
  for (const [k, v] of Object.entries(extra)) if (k !== 'deploy_action') plan.vars[k] = v;
  // Host variables lose to include_vars, role vars and extra vars, as in Ansible.
  for (const [h, hv] of Object.entries(plan.hostVars)) {
    for (const k of Object.keys(hv))
      if (
        Object.hasOwn(included, k) ||
        Object.hasOwn(extra, k) ||
        roots.some((r) => Object.hasOwn(r.role.vars, k))
      ) {
        note(
          ctx.unmapped,
          `${envName}: host variable ${k} of ${h} (include_vars, role vars and extra vars win in Ansible; dropped)`,
        );
        delete hv[k];
      }
    if (Object.keys(hv).length === 0) delete plan.hostVars[h];
  }
  plan.secrets = secretsFiles[0];
  if (secretsFiles.length > 1)
    note(
      ctx.unmapped,
      `${envName}: more than one encrypted vars file (${secretsFiles.map(ctx.rel).join(', ')}): only the first is the secrets file; merge them with ansible-vault`,
    );

  // The restart: the handler the switch notifies, else the only handler, else a restart task.
  const chosen =
    handlers.find(
      ({ h }) => notified.has(String(h.name)) || (typeof h.listen === 'string' && notified.has(h.listen)),
    ) ?? (handlers.length === 1 ? handlers[0] : undefined);
  const context = { ...vars, ...extra };
  for (const { h, file, line } of handlers) {
    const m = moduleOf(h);
    if (!m) continue;
    const label = `${ctx.rel(file)}:${line ?? '?'}: handler ${taskName(h, m.module)}`;
    if (h !== chosen?.h) {
      note(ctx.unmapped, `${label} (not notified by the switch; not converted)`);
      continue;
    }
    let cmd: string | undefined;
    if (m.module === 'command' || m.module === 'shell') cmd = evaluate(m.free, context);
    else if (m.module === 'service' || m.module === 'systemd' || m.module === 'systemd_service') {
      const name = evaluate(m.args.name, context);
      const state = String(m.args.state ?? 'restarted');
      const verb = state === 'reloaded' ? 'reload' : 'restart';
      if (name) cmd = m.module === 'service' ? `service ${name} ${verb}` : `systemctl ${verb} ${name}`;
    }
    if (cmd) {
      plan.restart = sudo(cmd);
      note(ctx.mapped, `${label} -> deploy.restart: ${plan.restart}`);
    } else note(ctx.unmapped, `${label} (module ${m.module} is not converted)`);
  }
  if (!plan.restart && restartTask) {
    plan.restart = restartTask.cmd;
    plan.restartLabel = restartTask.label;
    plan.restartService = restartTask.service;
  }
  plan.become = become;

  // Variables that ckan-release sets itself win over the project's.
  for (const k of BUILTIN_VARS) {
    if (Object.hasOwn(plan.vars, k)) {
      note(
        ctx.unmapped,
        `${envName}: variable ${k} is ckan-release's own (${k === 'root' ? 'the root' : 'set at ship'}); the project's value is not used`,
      );
      delete plan.vars[k];
    }
  }
  delete plan.vars.deploy_action;
  return plan;
}

/** Plugin names of a CKAN config var (`ckan_plugins: "stats showcase"`), to give extensions their plugins. */
function guessPlugins(plan: EnvironmentPlan, ctx: Ctx): void {
  const words = Object.entries(plan.vars)
    .filter(([k]) => /plugins$/.test(k))
    .flatMap(([, v]) => (typeof v === 'string' ? v.split(/\s+/) : Array.isArray(v) ? v.map(String) : []))
    .filter(Boolean);
  for (const ext of plan.extensions) {
    if (ext.plugins.length) continue;
    const short = ext.name.replace(/^ckanext-/, '').replace(/-/g, '_');
    ext.plugins = words.filter((w) => w === short || w.startsWith(`${short}_`) || w.startsWith(short));
    note(
      ctx.mapped,
      ext.plugins.length
        ? `extensions[${ext.name}].plugins: [${ext.plugins.join(', ')}] (guessed from the plugin names; the build and the health check verify them)`
        : `extensions[${ext.name}].plugins: [] (none of the configured plugins looks like it; list them: the health check verifies them)`,
    );
  }
}

function projectName(dir: string): string {
  const n = path
    .basename(path.resolve(dir))
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[^a-z0-9]+/, '');
  return n || 'ckan-site';
}

export interface ConvertOptions {
  /** CKAN's ref when the project does not clone CKAN (its venv was installed by hand). */
  ckanRef?: string;
  ckanSource?: string;
}

export { CKAN_UPSTREAM };

/** A CKAN version the project names (README, vars): `ckan-2.9.11`, `CKAN 2.9`. */
function suggestedCkan(ctx: Ctx): string | undefined {
  const files: string[] = [];
  const walkDir = (d: string, depth: number) => {
    if (depth > 4 || !existsSync(d)) return;
    for (const f of readdirSync(d).sort()) {
      if (f.startsWith('.') || f === 'node_modules') continue;
      const p = path.join(d, f);
      const st = statSync(p);
      if (st.isDirectory()) walkDir(p, depth + 1);
      else if (/^README|\.(ya?ml|md|rst|txt|sh)$/i.test(f) && st.size < 200_000) files.push(p);
    }
  };
  walkDir(ctx.dir, 0);
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (isVaultText(text)) continue;
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const m =
        /\bckan-(2\.\d+\.\d+)\b/.exec(lines[i]!) ?? /\bCKAN[ _-]?v?(2\.\d+(?:\.\d+)?)\b/i.exec(lines[i]!);
      if (m)
        return `${m[0].startsWith('ckan-') ? m[0] : `ckan-${m[1]}${/^2\.\d+$/.test(m[1]!) ? '.x' : ''}`} (${ctx.rel(f)}:${i + 1})`;
    }
  }
  return undefined;
}

export function convertAnsible(
  dir: string,
  display: (file: string) => string = (f) => f,
  options: ConvertOptions = {},
): Conversion {
  const abs = path.resolve(dir);
  if (!existsSync(abs)) throw new UsageError(`--from-ansible ${dir}: no such directory`);
  if (!statSync(abs).isDirectory()) throw new UsageError(`--from-ansible ${dir}: not a directory`);
  const ctx: Ctx = { dir: abs, rel: (f) => display(f), mapped: [], unmapped: [] };
  const playbooks = readdirSync(abs)
    .filter((f) => /^ckan_[A-Za-z0-9_-]+\.ya?ml$/.test(f))
    .sort()
    .map((f) => path.join(abs, f));
  if (playbooks.length === 0) {
    throw new ConfigError(
      display(abs),
      undefined,
      undefined,
      'no playbook: expected ckan_production.yml, ckan_staging.yml (ckan_<environment>.yml)',
      'point --from-ansible at the directory that holds the deploy playbooks',
    );
  }
  const cfgFile = path.join(abs, 'ansible.cfg');
  const cfg = existsSync(cfgFile) ? parseIni(readText(cfgFile), display(cfgFile)) : {};
  if (cfg.defaults?.vault_password_file)
    note(
      ctx.mapped,
      `ansible.cfg vault_password_file -> pass --vault-password-file ${cfg.defaults.vault_password_file} (or set CKAN_RELEASE_VAULT_PASSWORD_FILE)`,
    );
  const invocations = projectInvocations(abs);
  for (const i of invocations)
    if (
      /--ask-vault-pass|--ask-vault-password/.test(readFileSync(i.file, 'utf8').split('\n')[i.line - 1] ?? '')
    )
      note(
        ctx.mapped,
        `${display(i.file)}:${i.line}: --ask-vault-pass -> --vault-password-file FILE (or CKAN_RELEASE_VAULT_PASSWORD_FILE)`,
      );
  const inventoryFile = findInventory(ctx, cfg, invocations);
  const inv = parseInventory(readText(inventoryFile), display(inventoryFile));

  // Staging first: it is what production requires, and its pins are the ones that were tested.
  const plans = playbooks.map((p) => planEnvironment(ctx, inv, p, cfg, invocations));
  plans.sort((a, b) => (a.name === 'staging' ? -1 : b.name === 'staging' ? 1 : a.name < b.name ? -1 : 1));
  for (const p of plans) guessPlugins(p, ctx);
  const first = plans[0]!;
  const pick = <T>(what: string, get: (p: EnvironmentPlan) => T | undefined): T | undefined => {
    const values = plans.map(get);
    const chosen = values.find((v) => v !== undefined);
    if (new Set(values.map((v) => JSON.stringify(v))).size > 1)
      note(
        ctx.unmapped,
        `${what} differs between playbooks: ckan-release builds one artifact for every environment; the ${plans[values.indexOf(chosen)]!.name} value is used`,
      );
    return chosen;
  };
  let ckan = pick('CKAN source/ref', (p) => p.ckan);
  if (!ckan) {
    const base = first.baseVenv;
    const how = base
      ? `releases are cloned from the hand-installed venv ${base.path} (${base.label.split(': task')[0]})`
      : 'no git task checks out CKAN (dest .../src/ckan)';
    if (!options.ckanRef) {
      const hint = suggestedCkan(ctx);
      throw new UsageError(
        `${display(first.playbook === display(first.playbook) ? playbooks[0]! : first.playbook)}: the playbooks do not clone CKAN: ${how}; pass --ckan-ref REF (the CKAN tag or branch that venv runs; --ckan-source URL, default ${CKAN_UPSTREAM})`,
        hint
          ? `the project suggests ${hint}`
          : `the project names no CKAN version: \`${base?.path ?? '<venv>'}/bin/pip show ckan\` on a host says which`,
      );
    }
    ckan = { source: options.ckanSource ?? CKAN_UPSTREAM, ref: options.ckanRef };
    note(
      ctx.mapped,
      `CKAN: ${how} -> ckan.source ${ckan.source}, ckan.ref ${ckan.ref} (--ckan-ref${options.ckanSource ? ', --ckan-source' : ''})`,
    );
  } else if (options.ckanRef) {
    note(ctx.unmapped, `--ckan-ref ${options.ckanRef} is not used: the playbooks clone CKAN at ${ckan.ref}`);
  }
  const extensions = pick('the extensions', (p) => p.extensions) ?? [];
  const template = pick('the config template', (p) =>
    p.template ? { ...p.template, file: undefined } : undefined,
  );
  if (!template)
    throw new ConfigError(
      first.playbook,
      undefined,
      undefined,
      'no template task writes into the release directory: cannot tell config.template',
    );
  const configFiles = plans.map((p) => p.template?.file ?? 'ckan.ini');
  const sameFile = new Set(configFiles).size === 1;
  const root = pick('the root', (p) => p.root) ?? '/usr/lib/ckan';
  const hooks = pick('the release commands', (p) => (p.hooks.length ? p.hooks : undefined)) ?? [];
  const shared = pick('the shared links', (p) => (p.shared.length ? p.shared : undefined)) ?? [];
  const keep = pick('keep_releases', (p) => p.keepReleases);
  const owner = pick('the owner of the release', (p) => p.owner);
  const requirements =
    pick('the requirements files', (p) =>
      Object.keys(p.requirements).length ? p.requirements : undefined,
    ) ?? {};

  // Files: the templates the tasks use (the config's and the server files'), and each environment's secrets.
  const files: CopiedFile[] = [];
  const copyTemplate = (from: string): string => {
    const had = files.find((f) => f.from === from);
    if (had) return had.to;
    let to = `templates/${path.basename(from)}`;
    for (let n = 2; files.some((f) => f.to === to); n++) to = `templates/${n}-${path.basename(from)}`;
    files.push({ from, to });
    return to;
  };
  const templatesDir = path.join(abs, 'templates');
  if (existsSync(templatesDir))
    for (const f of readdirSync(templatesDir).sort()) {
      const from = path.join(templatesDir, f);
      if (statSync(from).isFile()) copyTemplate(from);
    }
  const templateTo = copyTemplate(template.src);
  for (const p of plans) {
    if (p.secrets) {
      const to = `secrets/${p.name}.yml`;
      files.push({ from: p.secrets, to });
      note(
        ctx.mapped,
        `${p.name}: ${display(p.secrets)} (ansible-vault) -> secrets: ${to} (copied as it is, still encrypted)`,
      );
    }
  }

  // Server files: the WSGI script and the vhost the tasks write outside the release.
  const serverPlans =
    pick('the web server files', (p) =>
      p.serverFiles.length ? p.serverFiles.map(({ label: _l, ...f }) => f) : undefined,
    ) ?? [];
  const labels = new Map(first.serverFiles.map((f) => [f.dest, f.label]));
  const become = first.become ?? false;
  const sudoPrefix = become && first.user !== 'root' ? 'sudo -n ' : '';
  let processGroup: string | undefined;
  const serverFiles = serverPlans.map((f) => {
    const text = readFileSync(f.src, 'utf8');
    const group = /WSGIDaemonProcess\s+([A-Za-z0-9_.-]+)/.exec(text)?.[1];
    if (group) processGroup ??= group;
    const vhost = /<VirtualHost\b|^\s*Listen\s/m.test(text);
    const out: Record<string, unknown> = { template: copyTemplate(f.src), dest: f.dest };
    if (f.mode) out.mode = f.mode;
    if (f.owner) out.owner = f.owner;
    if (f.group) out.group = f.group;
    if (vhost) out.reload = `${sudoPrefix}apachectl graceful`;
    note(
      ctx.mapped,
      `${labels.get(f.dest) ?? f.dest} -> server.files ${out.template as string} -> ${f.dest}${vhost ? ` (reload: ${out.reload as string})` : ''}: installed by setup and ship, before the switch`,
    );
    return out;
  });

  // The restart: the old tasks restarted Apache outright, which drops requests in flight; with the WSGI
  // app in a mod_wsgi daemon group, apache-graceful restarts just that group, without a failed request.
  let restart = pick('the restart', (p) => p.restart);
  const restartFrom = first.restartLabel;
  if (restart && processGroup && first.restartService && /^(httpd|apache2)$/.test(first.restartService)) {
    note(
      ctx.mapped,
      `${restartFrom ?? 'the restart'}: ${restart} -> deploy.restart apache-graceful (graceful restart of the mod_wsgi daemon group ${processGroup}, found in the vhost; a full restart fails requests in flight)`,
    );
    restart = 'apache-graceful';
    for (const f of serverPlans) {
      const lines = readFileSync(f.src, 'utf8').split('\n');
      const at = lines.findIndex((l) => /^\s*WSGIDaemonProcess\s/.test(l));
      if (at >= 0 && !/graceful-timeout=/.test(lines[at]!))
        note(
          ctx.unmapped,
          `${display(f.src)}:${at + 1}: WSGIDaemonProcess ${processGroup} has no graceful-timeout: add graceful-timeout=15 (mod_wsgi >= 4.1), so that apache-graceful lets requests in flight finish instead of dropping them`,
        );
    }
  } else if (restart && restartFrom) note(ctx.mapped, `${restartFrom} -> deploy.restart: ${restart}`);
  if (!restart) {
    note(
      ctx.unmapped,
      'no restart handler or task found: deploy.restart is set to "sudo -n apachectl graceful"; check it',
    );
    restart = 'sudo -n apachectl graceful';
  }

  // The first deploy's adoption of the hand-installed venv.
  const adopts = pick('the venv the first deploy links as current', (p) => p.adopts?.venv);
  if (adopts && adopts !== `${root}/default`)
    note(
      ctx.unmapped,
      `${first.adopts?.label ?? 'the first deploy'}: current -> ${adopts}: setup adopts only ${root}/default; link or move the venv there first`,
    );

  const environments: Record<string, unknown> = {};
  plans.forEach((p, i) => {
    const e: Record<string, unknown> = { hosts: p.hosts };
    if (p.user) e.user = p.user;
    if (p.port !== undefined) e.port = p.port;
    if (!sameFile) e.config_file = configFiles[i];
    if (p.name !== 'staging' && plans.some((q) => q.name === 'staging')) {
      e.requires = 'staging';
      note(ctx.mapped, `${p.name}: requires staging (only artifacts healthy on staging ship here)`);
    }
    e.vars = p.vars;
    if (Object.keys(p.hostVars).length) e.host_vars = p.hostVars;
    if (p.secrets) e.secrets = `secrets/${p.name}.yml`;
    environments[p.name] = e;
    note(
      ctx.mapped,
      `${p.playbook} -> environments.${p.name} (${p.hosts.length} host${p.hosts.length === 1 ? '' : 's'}${sameFile ? '' : `, config_file ${configFiles[i]}`})`,
    );
  });

  const deploy: Record<string, unknown> = {};
  if (keep !== undefined) deploy.keep_releases = keep;
  const ownerName = owner?.owner ?? template.owner;
  const groupName = owner?.group ?? template.group;
  if (ownerName) deploy.owner = ownerName;
  if (groupName) deploy.group = groupName;
  deploy.restart = restart;
  if (hooks.length) deploy.hooks = { before_switch: hooks, after_switch: [] };

  const config: Record<string, unknown> = {
    project: projectName(abs),
    root,
    ckan: { source: ckan.source, ref: ckan.ref },
    builder: { os: 'centos7', python: 'python3', network: 'none' },
    extensions: extensions.map((x) => ({
      name: x.name,
      source: x.source,
      ref: x.ref,
      plugins: x.plugins,
      ...(requirements[x.name] && requirements[x.name] !== 'requirements.txt'
        ? { requirements: requirements[x.name] }
        : {}),
    })),
    config: { template: templateTo, file: sameFile ? configFiles[0] : 'ckan.ini' },
    ...(shared.length ? { shared } : {}),
    deploy,
    ...(serverFiles.length || processGroup
      ? {
          server: {
            ...(processGroup && processGroup !== 'ckan' ? { apache: { process_group: processGroup } } : {}),
            ...(serverFiles.length ? { files: serverFiles } : {}),
          },
        }
      : {}),
    environments,
  };
  return { config, files, mapped: ctx.mapped, unmapped: ctx.unmapped };
}
