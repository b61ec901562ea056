// The INI inventory and task-argument readers of init --from-ansible.
import { describe, expect, it } from 'vitest';
import { argWords } from '../../src/ansible/convert.js';
import { ancestors, groupHosts, parseIni, parseInventory } from '../../src/ansible/inventory.js';
import { ConfigError } from '../../src/errors.js';

const INVENTORY = `# comment
[web]
web[01:03].example.org
db.example.org ansible_host=10.0.0.5 ansible_port=2222 note="two words"

[staging]
staging.example.org

[ckan:children]
web
staging

[ckan:vars]
ansible_user=deploy
workers=4
debug=False
`;

describe('parseInventory', () => {
  const inv = parseInventory(INVENTORY, 'hosts');
  it('expands ranges and keeps inventory order', () => {
    expect(groupHosts(inv, 'web')).toEqual([
      'web01.example.org',
      'web02.example.org',
      'web03.example.org',
      'db.example.org',
    ]);
  });
  it('follows children and knows the parents of a group', () => {
    expect(groupHosts(inv, 'ckan')).toHaveLength(5);
    expect(groupHosts(inv, 'all')).toHaveLength(5);
    expect(ancestors(inv, 'web')).toEqual(['ckan']);
  });
  it('reads host and group variables with their types', () => {
    expect(inv.hostVars.get('db.example.org')).toEqual({
      ansible_host: '10.0.0.5',
      ansible_port: 2222,
      note: 'two words',
    });
    expect(inv.groups.get('ckan')!.vars).toEqual({ ansible_user: 'deploy', workers: 4, debug: false });
  });
  it.each([
    ['[web\nhost\n', 1, /not an inventory section header/],
    ['[web]\nhost a=1 b\n', 2, /expected key=value after the host name, got "b"/],
    ['[web:vars]\n\nnot a var\n', 3, /expected key=value in \[web:vars\]/],
    ['[web:children]\nbad group!\n', 2, /expected a group name/],
    ['---\nall:\n  hosts: {}\n', 1, /a YAML inventory: only INI inventories/],
    ['all:\n  children:\n', 1, /a YAML inventory/],
  ])('refuses %j at line %i', (text, line, message) => {
    let error: unknown;
    try {
      parseInventory(text, 'inv');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).line).toBe(line);
    expect((error as ConfigError).message).toMatch(message);
  });
});

describe('parseIni (ansible.cfg)', () => {
  it('reads sections, strips comments', () => {
    expect(
      parseIni('[defaults]\ninventory = hosts ; the inventory\nremote_user: deploy\n', 'ansible.cfg'),
    ).toEqual({
      defaults: { inventory: 'hosts', remote_user: 'deploy' },
    });
  });
});

describe('argWords (k=v task arguments)', () => {
  it('keeps {{ }} expressions and quoted values whole', () => {
    expect(
      argWords(`repo={{ item.repo }} dest="{{ release_dir }}/src/{{ item.name | lower }}" version=v1`),
    ).toEqual(['repo={{ item.repo }}', 'dest={{ release_dir }}/src/{{ item.name | lower }}', 'version=v1']);
  });
});
