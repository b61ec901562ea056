// The project's own ways of running ansible-playbook: wrapper scripts (bin/*.sh, *.sh) and Makefile
// recipes. The old playbook projects pass the inventory (`-i inventory`), the SSH user (`-u root`) and
// the environment and action (`--extra-vars "deploy_action=deploy ckan_env=production"`) there, not in
// ansible.cfg, so these lines say what Ansible is given when the site is deployed.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { shellWords } from './inventory.js';

export interface Invocation {
  /** Absolute path of the script or Makefile. */
  file: string;
  line: number;
  playbook: string | undefined;
  inventory: string | undefined;
  user: string | undefined;
  /** -e / --extra-vars key=value words and inline YAML/JSON, merged in order (later wins). */
  extraVars: Record<string, unknown>;
  /** -e @file arguments (relative to the project), not read here. */
  extraVarsFiles: string[];
}

/** Reads `k=v k2=v2` as Ansible's parse_kv does for --extra-vars (values stay strings). */
function extraVarsOf(text: string): Record<string, unknown> | undefined {
  const t = text.trim();
  if (t.startsWith('{') || t.startsWith('[')) {
    try {
      const v: unknown = parse(t);
      return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
    } catch {
      return undefined;
    }
  }
  const out: Record<string, unknown> = {};
  for (const w of shellWords(t) ?? []) {
    const kv = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(w);
    if (kv) out[kv[1]!] = kv[2]!;
  }
  return out;
}

/** The ansible-playbook command lines of one file (backslash continuations joined). */
export function invocationsIn(file: string, text: string): Invocation[] {
  const out: Invocation[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const first = i;
    let line = lines[i]!;
    while (/\\$/.test(line) && i + 1 < lines.length) line = line.slice(0, -1) + ' ' + lines[++i];
    const at = line.search(/(^|[\s;&|(`])ansible-playbook(\s|$)/);
    if (at < 0 || /^\s*#/.test(line)) continue;
    const words =
      shellWords(
        line
          .slice(at)
          .replace(/^[\s;&|(`]/, '')
          .replace(/\s[;&|].*$/, ''),
      ) ?? [];
    const inv: Invocation = {
      file,
      line: first + 1,
      playbook: undefined,
      inventory: undefined,
      user: undefined,
      extraVars: {},
      extraVarsFiles: [],
    };
    for (let j = 1; j < words.length; j++) {
      const w = words[j]!;
      const value = (long: string, short?: string): string | undefined => {
        if (w === long || (short && w === short)) return words[++j];
        if (w.startsWith(`${long}=`)) return w.slice(long.length + 1);
        if (short && w.startsWith(short) && w.length > short.length && !w.startsWith('--'))
          return w.slice(short.length);
        return undefined;
      };
      let v: string | undefined;
      if ((v = value('--inventory', '-i')) !== undefined || (v = value('--inventory-file')) !== undefined)
        inv.inventory = v;
      else if ((v = value('--user', '-u')) !== undefined) inv.user = v;
      else if ((v = value('--extra-vars', '-e')) !== undefined) {
        if (v.startsWith('@')) inv.extraVarsFiles.push(v.slice(1));
        else Object.assign(inv.extraVars, extraVarsOf(v) ?? {});
      } else if (!w.startsWith('-') && /\.ya?ml$/.test(w) && inv.playbook === undefined) inv.playbook = w;
      else if (/^-(l|t|f|M|c|k|b|K|v+|C|D)$/.test(w) || w.startsWith('--')) {
        // options with a value that say nothing about the deploy: skip the value
        if (
          /^(-l|-t|-f|-M|-c|--limit|--tags|--skip-tags|--forks|--module-path|--connection|--vault-password-file|--vault-id|--private-key|--become-user|--become-method|--timeout|--ssh-common-args|--start-at-task)$/.test(
            w,
          )
        )
          j++;
      }
    }
    if (inv.playbook) out.push(inv);
  }
  return out;
}

/** Every ansible-playbook invocation in bin/*.sh, scripts/*.sh, *.sh and Makefile of the project. */
export function projectInvocations(dir: string): Invocation[] {
  const files: string[] = [];
  for (const sub of ['bin', 'scripts', '.']) {
    const d = path.join(dir, sub);
    if (!existsSync(d) || !statSync(d).isDirectory()) continue;
    for (const f of readdirSync(d).sort()) {
      const p = path.join(d, f);
      if (!statSync(p).isFile()) continue;
      if (
        /\.(sh|bash)$/.test(f) ||
        (sub === 'bin' && !f.includes('.')) ||
        (sub === '.' && /^(GNU)?[Mm]akefile$/.test(f))
      )
        files.push(p);
    }
  }
  return files.flatMap((f) => invocationsIn(f, readFileSync(f, 'utf8')));
}
