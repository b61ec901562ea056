// Jinja2 templates (the old playbooks' .j2 files) rendered with nunjucks, configured as Ansible's
// template module configures Jinja2: trim_blocks on, lstrip_blocks off, trailing newlines kept, an
// undefined variable is an error; with Python's semantics for values (src/render/jinja.ts), and
// Ansible-only constructs refused with the line and the reason (src/render/ansible-only.ts).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import nunjucks from 'nunjucks';
import { ConfigError } from '../errors.js';
import { findAnsibleOnly } from './ansible-only.js';
import { FILTERS, GLOBALS, MandatoryError, TESTS, ansibleBool, patchNunjucks, preprocess } from './jinja.js';

export { ansibleBool };

/** What Ansible's template module defines for every template (its default `ansible_managed`). */
export const ANSIBLE_TEMPLATE_VARS: Readonly<Record<string, unknown>> = {
  ansible_managed: 'Ansible managed',
};

/**
 * Templates named by {% include %} / {% import %}: from the directory, preprocessed like the main one,
 * and without their last newline (Jinja2's keep_trailing_newline=False; Ansible keeps the trailing
 * newlines of the main template only).
 */
function includeLoader(searchDir: string): nunjucks.FileSystemLoader {
  const loader = new nunjucks.FileSystemLoader(searchDir, { noCache: true });
  const getSource = loader.getSource.bind(loader);
  loader.getSource = (name: string) => {
    const source = getSource(name);
    if (source) source.src = preprocess(source.src).replace(/\r?\n$/, '');
    return source;
  };
  return loader;
}

function environment(searchDir: string | null): nunjucks.Environment {
  patchNunjucks();
  const loader = searchDir ? includeLoader(searchDir) : null;
  const env = new nunjucks.Environment(loader, {
    autoescape: false,
    throwOnUndefined: true,
    trimBlocks: true,
    lstripBlocks: false,
  });
  for (const [name, fn] of Object.entries(FILTERS)) env.addFilter(name, fn);
  for (const [name, fn] of Object.entries(TESTS))
    (env as unknown as { addTest: (n: string, f: unknown) => void }).addTest(name, fn);
  for (const [name, value] of Object.entries(GLOBALS)) env.addGlobal(name, value);
  return env;
}

const environments = new Map<string | null, nunjucks.Environment>();
function environmentFor(searchDir: string | null): nunjucks.Environment {
  let env = environments.get(searchDir);
  if (!env) {
    env = environment(searchDir);
    environments.set(searchDir, env);
  }
  return env;
}

export interface RenderOptions {
  /** Directory for {% include %} / {% import %} (the template's own, as Ansible searches it). */
  searchDir?: string;
}

/** The `{{ ... }}` or `{% ... %}` around a position, to show which expression failed (never values). */
function expressionAt(text: string, line: number, column: number): string | undefined {
  const lines = text.split('\n');
  const src = lines[line - 1];
  if (src === undefined) return undefined;
  const re = /\{\{.*?\}\}|\{%.*?%\}/g;
  let best: string | undefined;
  for (let m = re.exec(src); m; m = re.exec(src)) {
    if (best === undefined) best = m[0];
    if (m.index <= column && column <= m.index + m[0].length + 1) return m[0];
  }
  return best;
}

const TEMPLATED = /\{\{|\{%/;

function hasTemplate(v: unknown): boolean {
  if (typeof v === 'string') return TEMPLATED.test(v);
  if (Array.isArray(v)) return v.some(hasTemplate);
  if (v !== null && typeof v === 'object') return Object.values(v).some(hasTemplate);
  return false;
}

/**
 * Ansible templates variables that refer to other variables (`ckan_ini: "{{ ckan_root }}/ckan.ini"`)
 * when they are used; this does it before rendering, as often as references nest (at most 10 levels).
 * Errors name the variable, never its value (it may be a secret).
 */
function resolveVars(
  context: Record<string, unknown>,
  name: string,
  env: nunjucks.Environment,
): { vars: Record<string, unknown>; broken: Set<string> } {
  // A variable whose value does not render is left out; using it is then the error (as in Ansible,
  // where an unused broken variable is harmless).
  const broken = new Set<string>();
  let current = context;
  for (let pass = 0; pass < 10; pass++) {
    const pending = Object.keys(current).filter((k) => hasTemplate(current[k]));
    if (pending.length === 0) return { vars: current, broken };
    const next = { ...current };
    for (const key of pending) {
      const render = (v: unknown): unknown => {
        if (typeof v === 'string') {
          if (!TEMPLATED.test(v)) return v;
          return env.renderString(preprocess(v), current);
        }
        if (Array.isArray(v)) return v.map(render);
        if (v !== null && typeof v === 'object')
          return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, render(x)]));
        return v;
      };
      try {
        next[key] = render(current[key]);
      } catch {
        broken.add(key);
        delete next[key];
      }
    }
    current = next;
  }
  const loop = Object.keys(current).filter((k) => hasTemplate(current[k]));
  throw new ConfigError(
    name,
    undefined,
    undefined,
    `cannot render: variables refer to each other in a loop: ${loop.join(', ')}`,
  );
}

/** Renders template text; `name` is used in errors, which never quote variable values (secrets). */
export function renderString(
  text: string,
  vars: Record<string, unknown>,
  name: string,
  opts: RenderOptions = {},
): string {
  const context = { ...ANSIBLE_TEMPLATE_VARS, ...vars };
  const ansibleOnly = findAnsibleOnly(text, (n) => Object.hasOwn(context, n) || Object.hasOwn(GLOBALS, n))[0];
  if (ansibleOnly) {
    throw new ConfigError(
      name,
      ansibleOnly.line,
      undefined,
      `cannot render: ${ansibleOnly.construct} is Ansible-only: ${ansibleOnly.why}`,
    );
  }
  const env = environmentFor(opts.searchDir ?? null);
  const { vars: resolved, broken } = resolveVars(context, name, env);
  try {
    return env.renderString(preprocess(text), resolved);
  } catch (e) {
    const msg = (e as Error).message;
    const pos = /\[Line (\d+), Column (\d+)\]/.exec(msg);
    const line = pos ? Number(pos[1]) : undefined;
    let what = (msg.split('\n').pop()?.trim() ?? msg).replace(/^Error: /, '');
    if (e instanceof MandatoryError || what.includes('Mandatory variable')) what = `mandatory: ${what}`;
    const expr = pos ? expressionAt(text, Number(pos[1]), Number(pos[2])) : undefined;
    const brokenVar = expr ? [...broken].find((b) => new RegExp(`(?<![\\w.])${b}\\b`).test(expr)) : undefined;
    if (/undefined value/.test(what) && brokenVar)
      what = `${expr}: the value of variable "${brokenVar}" is a template that does not render (an undefined variable in it?)`;
    else if (/undefined value/.test(what) && expr) what = `${expr}: undefined variable (or attribute)`;
    else if (/filter not found: (\w+)/.test(what)) {
      what = `${what} (an Ansible filter that ckan-release does not have; see README "Templates")`;
      if (line === undefined) {
        const filter = /filter not found: (\w+)/.exec(what)![1]!;
        const at = new RegExp(`\\|\\s*${filter}\\b`).exec(text);
        if (at) return fail(text.slice(0, at.index).split('\n').length);
      }
    } else if (expr && !what.includes(expr)) what = `${expr}: ${what}`;
    return fail(line);
    function fail(at: number | undefined): never {
      throw new ConfigError(name, at, undefined, `cannot render: ${what}`);
    }
  }
}

export function renderFile(file: string, vars: Record<string, unknown>, displayName = file): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(
      displayName,
      undefined,
      undefined,
      `cannot read the template: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  return renderString(text, vars, displayName, { searchDir: path.dirname(path.resolve(file)) });
}
