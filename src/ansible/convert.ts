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
    customTags: ANSIBLE_TAGS,
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
  keepReleases?: number;
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

function findInventory(ctx: Ctx, cfg: Record<string, Record<string, string>>): string {
  const named = cfg.defaults?.inventory ?? cfg.defaults?.hostfile;
  const candidates = named
    ? named
        .split(',')
        .map((p) => path.resolve(ctx.dir, p.trim().replace(/^~(?=\/)/, process.env.HOME ?? '~')))
    : ['hosts', 'inventory', 'inventory.ini', 'hosts.ini', 'inventory/hosts'].map((p) =>
        path.join(ctx.dir, p),
      );
  for (const c of candidates) if (existsSync(c) && statSync(c).isFile()) return c;
  throw new ConfigError(
    ctx.rel(named ? path.join(ctx.dir, 'ansible.cfg') : ctx.dir),
    undefined,
    undefined,
    named
      ? `the inventory it names (${named}) is not a file`
      : 'no INI inventory found (looked for hosts, inventory, inventory.ini, hosts.ini)',
    'ckan-release reads an INI inventory; name it in ansible.cfg ([defaults] inventory = FILE)',
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

function planEnvironment(
  ctx: Ctx,
  inv: Inventory,
  playbookFile: string,
  cfg: Record<string, Record<string, string>>,
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

  // Variables, in Ansible's precedence order (later wins).
  const vars: Record<string, unknown> = {};
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

  // Host variables: inventory host lines and host_vars/ (play variables still win, as in Ansible).
  let user: string | undefined =
    typeof play.remote_user === 'string' ? play.remote_user : (cfg.defaults?.remote_user ?? undefined);
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
  };

  if (Array.isArray(play.roles) && play.roles.length) {
    for (const r of play.roles) {
      const name = typeof r === 'string' ? r : isObject(r) ? String(r.role ?? r.name) : String(r);
      note(
        ctx.unmapped,
        `${display}: role ${name} (roles are not converted: what it sets up on the hosts stays yours)`,
      );
    }
  }

  // Tasks. Expressions are rendered with the environment's variables and the release directory as a
  // marker, so that commands and paths can be told apart and rewritten into ckan-release's variables.
  const context: Record<string, unknown> = { ...vars };
  const tasks = ([] as unknown[]).concat(play.pre_tasks ?? [], play.tasks ?? [], play.post_tasks ?? []);
  const handlers = Array.isArray(play.handlers) ? (play.handlers as unknown[]) : [];
  const notified = new Set<string>();
  const become = play.become === true || play.become === 'yes' || play.sudo === true || play.sudo === 'yes';
  const taskName = (t: Record<string, unknown>, m: string) =>
    typeof t.name === 'string' ? `"${t.name}"` : m;

  for (const raw of tasks) {
    if (!isObject(raw)) continue;
    const t = raw;
    if (t.block || t.include_tasks || t.import_tasks || t.include || t.include_role || t.import_role) {
      note(
        ctx.unmapped,
        `${display}: ${taskName(t, 'block/include')} (blocks and includes are not converted)`,
      );
      continue;
    }
    const m = moduleOf(t);
    if (!m) continue;
    const label = `${display}: task ${taskName(t, m.module)}`;
    const items = loopOf(t, context);
    const withItem = (item: unknown) => (item === undefined ? context : { ...context, item });
    const ev = (v: unknown, item?: unknown) => evaluate(v, withItem(item));
    switch (m.module) {
      case 'set_fact': {
        for (const [k, v] of Object.entries(m.args)) {
          if (typeof v === 'string' && /\/releases\//.test(v)) {
            context[k] = RELEASE;
            plan.vars[k] = '{{ release }}';
            note(ctx.mapped, `${label}: ${k} is the release directory -> vars.${k}: "{{ release }}"`);
          } else {
            note(ctx.unmapped, `${label}: set_fact ${k} (set it in vars)`);
          }
        }
        break;
      }
      case 'git': {
        const runs = items === undefined ? [undefined] : (items ?? []);
        if (items === null) {
          note(ctx.unmapped, `${label}: its loop could not be read`);
          break;
        }
        for (const item of runs) {
          const repo = ev(m.args.repo, item);
          const dest = ev(m.args.dest, item);
          const version = ev(m.args.version ?? 'HEAD', item) ?? 'HEAD';
          if (!repo || !dest) {
            note(ctx.unmapped, `${label}: repo or dest could not be worked out`);
            continue;
          }
          const name = path.posix.basename(dest);
          if (name === 'ckan' && plan.ckan === undefined) plan.ckan = { source: repo, ref: version };
          else {
            const plugins = isObject(item) && Array.isArray(item.plugins) ? item.plugins.map(String) : [];
            plan.extensions.push({ name, source: repo, ref: version, plugins });
          }
          if (version === 'HEAD' || version === 'master' || version === 'main')
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
        if (nameArg && !nameArg.includes('/')) {
          note(
            ctx.unmapped,
            `${label}: installs ${nameArg} from PyPI: add it to an extension's requirements.txt`,
          );
        } else
          note(
            ctx.mapped,
            `${label}: done by ckan-release build (CKAN, each extension editable, their requirements.txt)`,
          );
        break;
      }
      case 'template': {
        const dest = ev(m.args.dest);
        const src = typeof m.args.src === 'string' ? m.args.src : undefined;
        if (src && dest && dest.startsWith(`${RELEASE}/`) && !plan.template) {
          plan.template = {
            src,
            file: dest.slice(RELEASE.length + 1),
            owner: ev(m.args.owner),
            group: ev(m.args.group),
          };
          note(
            ctx.mapped,
            `${label} -> config.template ${src}, config.file ${plan.template.file} (rendered into each release at ship)`,
          );
        } else {
          note(
            ctx.unmapped,
            `${label}: ${src ?? '?'} -> ${dest ?? '?'} is not inside the release; it is copied to templates/ but ckan-release renders only the CKAN config: install it once on the hosts`,
          );
        }
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
        } else if (state === 'link' && src && dest?.startsWith(`${RELEASE}/`) && /\/shared\/./.test(src)) {
          plan.shared.push({ path: src.replace(/^.*\/shared\//, ''), link: dest.slice(RELEASE.length + 1) });
          note(
            ctx.mapped,
            `${label} -> shared: { path: ${src.replace(/^.*\/shared\//, '')}, link: ${dest.slice(RELEASE.length + 1)} }`,
          );
        } else note(ctx.unmapped, `${label} (file ${String(state ?? '')} is not converted)`);
        break;
      }
      case 'command':
      case 'shell': {
        const cmd = ev(m.free);
        if (cmd === undefined) {
          note(
            ctx.unmapped,
            `${label}: its command could not be rendered (a secret or an Ansible-only variable in it?)`,
          );
        } else if (/virtualenv-clone/.test(cmd)) {
          note(
            ctx.mapped,
            `${label}: done by ckan-release build (the release is built from a base venv in a container)`,
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

  // The restart: the handler the switch notifies, else the only handler.
  const handlerList = handlers.filter(isObject);
  const chosen =
    handlerList.find(
      (h) => notified.has(String(h.name)) || (typeof h.listen === 'string' && notified.has(h.listen)),
    ) ?? (handlerList.length === 1 ? handlerList[0] : undefined);
  for (const h of handlerList) {
    const m = moduleOf(h);
    if (!m) continue;
    const label = `${display}: handler ${taskName(h, m.module)}`;
    if (h !== chosen) {
      note(ctx.unmapped, `${label} (not notified by the switch; not converted)`);
      continue;
    }
    const ev = (v: unknown) => evaluate(v, context);
    let cmd: string | undefined;
    if (m.module === 'command' || m.module === 'shell') cmd = ev(m.free);
    else if (m.module === 'service' || m.module === 'systemd' || m.module === 'systemd_service') {
      const name = ev(m.args.name);
      const state = String(m.args.state ?? 'restarted');
      const verb = state === 'reloaded' ? 'reload' : 'restart';
      if (name) cmd = m.module === 'service' ? `service ${name} ${verb}` : `systemctl ${verb} ${name}`;
    }
    if (cmd) {
      plan.restart = become && !/^sudo\b/.test(cmd) ? `sudo -n ${cmd}` : cmd;
      note(ctx.mapped, `${label} -> deploy.restart: ${plan.restart}`);
    } else note(ctx.unmapped, `${label} (module ${m.module} is not converted)`);
  }

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

export function convertAnsible(dir: string, display: (file: string) => string = (f) => f): Conversion {
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
  const inventoryFile = findInventory(ctx, cfg);
  const inv = parseInventory(readText(inventoryFile), display(inventoryFile));

  // Staging first: it is what production requires, and its pins are the ones that were tested.
  const plans = playbooks.map((p) => planEnvironment(ctx, inv, p, cfg));
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
  const ckan = pick('CKAN source/ref', (p) => p.ckan);
  if (!ckan)
    throw new ConfigError(
      first.playbook,
      undefined,
      undefined,
      'no git task checks out CKAN (dest .../src/ckan): cannot tell ckan.source and ckan.ref',
    );
  const extensions = pick('the extensions', (p) => p.extensions) ?? [];
  const template = pick('the config template', (p) => p.template);
  if (!template)
    throw new ConfigError(
      first.playbook,
      undefined,
      undefined,
      'no template task writes into the release directory: cannot tell config.template',
    );
  const root = pick('the root', (p) => p.root) ?? '/usr/lib/ckan';
  const restart = pick('the restart handler', (p) => p.restart);
  const hooks = pick('the release commands', (p) => (p.hooks.length ? p.hooks : undefined)) ?? [];
  const shared = pick('the shared links', (p) => (p.shared.length ? p.shared : undefined)) ?? [];
  const keep = pick('keep_releases', (p) => p.keepReleases);
  if (!restart)
    note(
      ctx.unmapped,
      'no restart handler found: deploy.restart is set to "sudo -n apachectl graceful"; check it',
    );

  // Files: every template of templates/ (the config's and the others), and each environment's secrets.
  const files: CopiedFile[] = [];
  const templatesDir = path.join(abs, 'templates');
  if (existsSync(templatesDir)) {
    for (const f of readdirSync(templatesDir).sort()) {
      const from = path.join(templatesDir, f);
      if (statSync(from).isFile()) files.push({ from, to: `templates/${f}` });
    }
  }
  const templateSrc = path.resolve(
    abs,
    template.src.includes('/') ? template.src : path.join('templates', template.src),
  );
  let templateTo = files.find((f) => f.from === templateSrc)?.to;
  if (!templateTo) {
    if (!existsSync(templateSrc))
      throw new ConfigError(
        first.playbook,
        undefined,
        undefined,
        `the config template ${template.src} does not exist`,
      );
    templateTo = `templates/${path.basename(templateSrc)}`;
    files.push({ from: templateSrc, to: templateTo });
  }
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

  const environments: Record<string, unknown> = {};
  for (const p of plans) {
    const e: Record<string, unknown> = { hosts: p.hosts };
    if (p.user) e.user = p.user;
    if (p.port !== undefined) e.port = p.port;
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
      `${p.playbook} -> environments.${p.name} (${p.hosts.length} host${p.hosts.length === 1 ? '' : 's'})`,
    );
  }

  const deploy: Record<string, unknown> = {};
  if (keep !== undefined) deploy.keep_releases = keep;
  if (template.owner) deploy.owner = template.owner;
  if (template.group) deploy.group = template.group;
  deploy.restart = restart ?? 'sudo -n apachectl graceful';
  if (hooks.length) deploy.hooks = { before_switch: hooks, after_switch: [] };

  const config: Record<string, unknown> = {
    project: projectName(abs),
    root,
    ckan: { source: ckan.source, ref: ckan.ref },
    builder: { os: 'centos7', python: 'python3', network: 'none' },
    extensions: extensions.map((x) => ({ name: x.name, source: x.source, ref: x.ref, plugins: x.plugins })),
    config: { template: templateTo, file: template.file },
    ...(shared.length ? { shared } : {}),
    deploy,
    environments,
  };
  return { config, files, mapped: ctx.mapped, unmapped: ctx.unmapped };
}
