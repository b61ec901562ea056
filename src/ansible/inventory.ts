// Ansible's INI inventory and ansible.cfg, as the old playbook projects have them: [group] host lines
// with key=value variables, [group:vars], [group:children], numeric host ranges (web[1:3].example.org).
// Errors name the file and line.
import { ConfigError } from '../errors.js';

export interface InventoryGroup {
  name: string;
  hosts: string[];
  children: string[];
  vars: Record<string, unknown>;
}

export interface Inventory {
  file: string;
  groups: Map<string, InventoryGroup>;
  /** Variables given on host lines, per host. */
  hostVars: Map<string, Record<string, unknown>>;
}

/** Splits a line as Python's shlex.split does for the simple cases inventories use. */
export function shellWords(text: string): string[] | undefined {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === quote) quote = null;
      else if (c === '\\' && quote === '"' && i + 1 < text.length) cur += text[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else if (c === '\\' && i + 1 < text.length) {
      cur += text[++i];
      inWord = true;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) return undefined;
  if (inWord) words.push(cur);
  return words;
}

/** An INI value as Ansible reads it in an inventory: numbers and booleans as such, quotes removed. */
function iniValue(raw: string): unknown {
  if (/^-?\d+$/.test(raw)) return Number(raw);
  if (/^-?\d+\.\d+$/.test(raw)) return Number(raw);
  if (raw === 'True' || raw === 'true') return true;
  if (raw === 'False' || raw === 'false') return false;
  return raw;
}

function expandRange(pattern: string): string[] | undefined {
  const m = /^(.*)\[([0-9a-z]+):([0-9a-z]+)(?::(\d+))?\](.*)$/.exec(pattern);
  if (!m) return [pattern];
  const [, head, from, to, step, tail] = m;
  const out: string[] = [];
  if (/^\d+$/.test(from!) && /^\d+$/.test(to!)) {
    const width = from!.length;
    for (let i = Number(from); i <= Number(to); i += Number(step ?? 1)) {
      const n = String(i).padStart(width, '0');
      for (const rest of expandRange(`${head}${n}${tail}`) ?? []) out.push(rest);
    }
    return out;
  }
  if (/^[a-z]$/.test(from!) && /^[a-z]$/.test(to!)) {
    for (let c = from!.charCodeAt(0); c <= to!.charCodeAt(0); c += Number(step ?? 1))
      out.push(...(expandRange(`${head}${String.fromCharCode(c)}${tail}`) ?? []));
    return out;
  }
  return undefined;
}

function group(groups: Map<string, InventoryGroup>, name: string): InventoryGroup {
  let g = groups.get(name);
  if (!g) {
    g = { name, hosts: [], children: [], vars: {} };
    groups.set(name, g);
  }
  return g;
}

export function parseInventory(text: string, file: string): Inventory {
  const groups = new Map<string, InventoryGroup>();
  const hostVars = new Map<string, Record<string, unknown>>();
  group(groups, 'all');
  group(groups, 'ungrouped');
  const firstLine = text.split(/\r?\n/).findIndex((l) => l.trim() !== '' && !/^\s*[#;]/.test(l));
  if (firstLine >= 0 && /^(---|[A-Za-z_][\w.-]*:\s*$)/.test(text.split(/\r?\n/)[firstLine]!.trim())) {
    throw new ConfigError(
      file,
      firstLine + 1,
      undefined,
      'a YAML inventory: only INI inventories ([group] / host lines) are converted',
      'write the environments of ckan-release.yml by hand, or convert an INI copy of the inventory',
    );
  }
  let section = { group: 'ungrouped', kind: 'hosts' as 'hosts' | 'vars' | 'children' };
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    const n = i + 1;
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const head = /^\[([^\]:\s]+)(?::(vars|children))?\]$/.exec(line);
    if (line.startsWith('[')) {
      if (!head) {
        throw new ConfigError(
          file,
          n,
          undefined,
          `not an inventory section header: expected [group], [group:vars] or [group:children]`,
        );
      }
      section = { group: head[1]!, kind: (head[2] as 'vars' | 'children' | undefined) ?? 'hosts' };
      group(groups, section.group);
      return;
    }
    const g = group(groups, section.group);
    if (section.kind === 'children') {
      if (!/^[A-Za-z0-9_.-]+$/.test(line))
        throw new ConfigError(file, n, undefined, `expected a group name in [${g.name}:children]`);
      g.children.push(line);
      group(groups, line);
      return;
    }
    if (section.kind === 'vars') {
      const kv = /^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
      if (!kv) throw new ConfigError(file, n, undefined, `expected key=value in [${g.name}:vars]`);
      const words = shellWords(kv[2]!);
      g.vars[kv[1]!] = iniValue(words === undefined ? kv[2]! : words.join(' '));
      return;
    }
    const words = shellWords(line.replace(/\s+#.*$/, ''));
    if (!words || words.length === 0)
      throw new ConfigError(file, n, undefined, 'unclosed quote in a host line');
    const [pattern, ...assignments] = words;
    const hosts = expandRange(pattern!);
    if (!hosts || !/^[A-Za-z0-9_.:@[\]-]+$/.test(pattern!))
      throw new ConfigError(file, n, undefined, `not a host name or range: "${pattern}"`);
    const vars: Record<string, unknown> = {};
    for (const a of assignments) {
      const kv = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(a);
      if (!kv)
        throw new ConfigError(file, n, undefined, `expected key=value after the host name, got "${a}"`);
      vars[kv[1]!] = iniValue(kv[2]!);
    }
    for (const h of hosts) {
      if (!g.hosts.includes(h)) g.hosts.push(h);
      hostVars.set(h, { ...(hostVars.get(h) ?? {}), ...vars });
    }
  });
  return { file, groups, hostVars };
}

/** Every host of a group, its children's included, in inventory order. */
export function groupHosts(inv: Inventory, name: string, seen = new Set<string>()): string[] {
  const g = inv.groups.get(name);
  if (!g || seen.has(name)) return [];
  seen.add(name);
  if (name === 'all') return [...new Set([...inv.groups.values()].flatMap((x) => x.hosts))];
  const out = [...g.hosts];
  for (const c of g.children) for (const h of groupHosts(inv, c, seen)) if (!out.includes(h)) out.push(h);
  return out;
}

/** The groups a group is a child of, outermost first (for variable precedence). */
export function ancestors(inv: Inventory, name: string): string[] {
  const out: string[] = [];
  const visit = (n: string, depth: number) => {
    for (const g of inv.groups.values()) {
      if (g.children.includes(n) && !out.includes(g.name)) {
        visit(g.name, depth + 1);
        out.push(g.name);
      }
    }
  };
  visit(name, 0);
  return out.filter((g) => g !== 'all');
}

/** ansible.cfg: sections of key = value lines (only what the converter reads). */
export function parseIni(text: string, file: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let section: string | undefined;
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const head = /^\[([^\]]+)\]$/.exec(line);
    if (head) {
      section = head[1]!.trim();
      out[section] ??= {};
      return;
    }
    const kv = /^([^=:]+?)\s*[=:]\s*(.*)$/.exec(line);
    if (!kv || section === undefined)
      throw new ConfigError(
        file,
        i + 1,
        undefined,
        section === undefined ? 'a setting before any [section]' : 'expected key = value',
      );
    out[section]![kv[1]!] = kv[2]!.replace(/\s+[#;].*$/, '');
  });
  return out;
}
