// Old-style Ansible templates rendered by ckan-release equal, byte for byte, what REAL Ansible renders.
//
// The expected outputs under test/fixtures/ansible-render/expected/ were produced with ansible-core 2.14
// (Debian 12's ansible-core) by test/fixtures/ansible-render/regenerate.sh, which runs exactly:
//
//   cd test/fixtures/ansible-render && \
//     ansible-playbook -i localhost, -c local regenerate.yml -e @vars.yml
//
// (regenerate.yml: one ansible.builtin.template task over templates/*.j2, gather_facts: false).
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ConfigError } from '../../src/errors.js';
import { renderFile, renderString } from '../../src/render/template.js';

const DIR = path.resolve('test/fixtures/ansible-render');
const vars = parse(readFileSync(path.join(DIR, 'vars.yml'), 'utf8')) as Record<string, unknown>;
const templates = readdirSync(path.join(DIR, 'templates'))
  .filter((f) => f.endsWith('.j2'))
  .sort();

describe('templates render as Ansible renders them', () => {
  it('has the fixtures', () => {
    expect(templates.length).toBeGreaterThanOrEqual(8);
  });
  for (const t of templates) {
    it(t, () => {
      const expected = readFileSync(path.join(DIR, 'expected', t.replace(/\.j2$/, '')), 'utf8');
      const got = renderFile(path.join(DIR, 'templates', t), vars, t);
      expect(got).toBe(expected);
    });
  }
});

function renderError(text: string, v: Record<string, unknown> = {}): ConfigError {
  try {
    renderString(text, v, 'templates/ckan.ini.j2');
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('rendered without an error');
}

describe('Ansible-only constructs fail naming the file, line and why', () => {
  it.each([
    [
      'a\nb = {{ lookup("env", "HOME") }}',
      2,
      /lookup\(\.\.\.\) is Ansible-only: a lookup plugin runs on the Ansible controller/,
    ],
    ['a\n\n{% for x in query("fileglob", "*") %}{% endfor %}', 3, /query\(\.\.\.\) is Ansible-only/],
    ['{{ hostvars["web1"].ansible_host }}', 1, /hostvars is Ansible-only: hostvars is the Ansible inventory/],
    [
      'x\n{{ ansible_default_ipv4.address }}',
      2,
      /ansible_default_ipv4 is Ansible-only: .*gathers no facts: set it in the environment's vars/,
    ],
    ['x\n{% if ansible_os_family == "RedHat" %}y{% endif %}', 2, /ansible_os_family is Ansible-only/],
    ['{{ groups["web"] | length }}', 1, /groups is Ansible-only/],
    ['\n{{ inventory_hostname }}', 2, /inventory_hostname is Ansible-only: .*calls it "host"/],
    ['{{ "x" | vault("secret") }}', 1, /\| vault is Ansible-only: the vault filter/],
    ['{{ x | default(omit) }}', 1, /omit is Ansible-only/],
  ])('%j', (text, line, message) => {
    const e = renderError(text);
    expect(e.message).toMatch(/^templates\/ckan\.ini\.j2:\d+: cannot render: /);
    expect(e.line).toBe(line);
    expect(e.message).toMatch(message);
  });

  it('a name the project defines is not Ansible-only', () => {
    expect(renderString('{{ ansible_fqdn }}', { ansible_fqdn: 'web1' }, 't')).toBe('web1');
  });
  it('names inside strings and comments are not constructs', () => {
    expect(renderString('{# lookup(x) #}{{ "lookup(hostvars)" }}', {}, 't')).toBe('lookup(hostvars)');
  });
});

describe('errors name the line and the expression, never a value', () => {
  it('an undefined variable', () => {
    const e = renderError('a = 1\nb = {{ db_pasword }}\n', { db_password: 'hunter2' });
    expect(e.message).toBe(
      'templates/ckan.ini.j2:2: cannot render: {{ db_pasword }}: undefined variable (or attribute)',
    );
  });
  it('an unknown filter', () => {
    const e = renderError('\n\n{{ x | to_yaml }}', { x: 1 });
    expect(e.line).toBe(3);
    expect(e.message).toMatch(/filter not found: to_yaml/);
  });
  it('a syntax error', () => {
    const e = renderError('a\n{% if x %}\nb\n', { x: 1 });
    expect(e.message).toMatch(/^templates\/ckan\.ini\.j2(:\d+)?: cannot render: /);
  });
  it('a variable whose value refers to an undefined one names the variable, not its value', () => {
    const e = renderError('{{ dsn }}', { dsn: 'postgresql://u:hunter2@{{ db_hots }}/ckan' });
    expect(e.message).toMatch(/variable "dsn"/);
    expect(e.message).not.toMatch(/hunter2/);
  });
  it('mandatory', () => {
    expect(renderError('{{ nope | mandatory }}').message).toMatch(/Mandatory variable not defined/);
  });
});

describe('variables that refer to other variables are templated, as Ansible does', () => {
  it('nested references', () => {
    expect(renderString('{{ c }}', { a: 'x', b: '{{ a }}/b', c: ['{{ b }}/c'] }, 't')).toBe("['x/b/c']");
  });
  it('a loop is an error', () => {
    expect(() => renderString('{{ a }}', { a: '{{ b }}', b: '{{ a }}' }, 't')).toThrow(/loop: a, b/);
  });
});
