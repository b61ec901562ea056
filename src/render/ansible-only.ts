// Constructs of Ansible templates that only make sense inside an Ansible run (lookups on the controller,
// the inventory, gathered facts, vault filters). ckan-release has none of them: a template using one
// fails before rendering, with the line and the reason, instead of rendering something else.

export interface AnsibleOnlyUse {
  line: number;
  construct: string;
  why: string;
}

const CALLS: Record<string, string> = {
  lookup: 'a lookup plugin runs on the Ansible controller; ckan-release has no lookups',
  query: 'a lookup plugin (query) runs on the Ansible controller; ckan-release has no lookups',
  q: 'a lookup plugin (q) runs on the Ansible controller; ckan-release has no lookups',
};

const FILTERS: Record<string, string> = {
  vault: 'the vault filter encrypts with an Ansible vault secret; put the value in the secrets file',
  unvault: 'the unvault filter decrypts with an Ansible vault secret; put the value in the secrets file',
};

const NAMES: Record<string, string> = {
  hostvars: 'hostvars is the Ansible inventory of every host; ckan-release renders for one host',
  groups: 'groups is the Ansible inventory; ckan-release has environments instead',
  group_names: 'group_names comes from the Ansible inventory',
  inventory_hostname: 'inventory_hostname is Ansible\'s; ckan-release calls it "host"',
  inventory_hostname_short: 'inventory_hostname_short is Ansible\'s; use host.split(".")[0]',
  inventory_dir: "inventory_dir is Ansible's",
  inventory_file: "inventory_file is Ansible's",
  play_hosts: "play_hosts is Ansible's; ckan-release has environments instead",
  playbook_dir: "playbook_dir is Ansible's",
  role_path: "role_path is Ansible's",
  omit: 'omit only means something to Ansible modules',
  vars: "vars is Ansible's variable dictionary; name the variable directly",
};

const FACT_WHY =
  "is an Ansible fact or magic variable; ckan-release gathers no facts: set it in the environment's vars or host_vars";

/** Blanks string literals inside a tag (same length), so that names in strings are not matched. */
function blankStrings(code: string): string {
  return code.replace(/'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"/g, (m) => m.replace(/[^\n]/g, ' '));
}

/**
 * Finds uses of Ansible-only constructs in a template. A name that the template's variables define is
 * not reported (a project may set its own `ansible_fqdn`, say).
 */
export function findAnsibleOnly(text: string, defined: (name: string) => boolean): AnsibleOnlyUse[] {
  const found: AnsibleOnlyUse[] = [];
  const lineAt = (offset: number) => text.slice(0, offset).split('\n').length;
  const tag =
    /\{%-?\s*raw\s*-?%\}[\s\S]*?\{%-?\s*endraw\s*-?%\}|\{#[\s\S]*?#\}|\{\{([\s\S]*?)\}\}|\{%([\s\S]*?)%\}/g;
  for (let m = tag.exec(text); m; m = tag.exec(text)) {
    const inner = m[1] ?? m[2];
    if (inner === undefined) continue; // raw block or comment
    const base = m.index + 2;
    const code = blankStrings(inner);
    const ident = /(\|\s*)?(?<![.\w])([A-Za-z_]\w*)(\s*\()?/g;
    for (let t = ident.exec(code); t; t = ident.exec(code)) {
      const [, pipe, name, call] = t;
      const at = base + t.index + (pipe?.length ?? 0);
      if (pipe) {
        if (Object.hasOwn(FILTERS, name!))
          found.push({ line: lineAt(at), construct: `| ${name}`, why: FILTERS[name!]! });
        continue;
      }
      if (call && Object.hasOwn(CALLS, name!)) {
        found.push({ line: lineAt(at), construct: `${name}(...)`, why: CALLS[name!]! });
        continue;
      }
      if (defined(name!)) continue;
      if (Object.hasOwn(NAMES, name!)) {
        found.push({ line: lineAt(at), construct: name!, why: NAMES[name!]! });
      } else if (/^ansible_\w+$/.test(name!)) {
        found.push({ line: lineAt(at), construct: name!, why: `${name} ${FACT_WHY}` });
      }
    }
  }
  return found;
}
