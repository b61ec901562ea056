// Jinja2 templates (the old playbooks' .j2 files) rendered with nunjucks, configured as Ansible's
// template module configures Jinja2: blocks trimmed, an undefined variable is an error.
import { readFileSync } from 'node:fs';
import nunjucks from 'nunjucks';
import { ConfigError } from '../errors.js';

function ansibleBool(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'number') return value === 1;
  return ['yes', 'on', '1', 'true', 'y', 't'].includes(String(value).toLowerCase());
}

function environment(): nunjucks.Environment {
  const env = new nunjucks.Environment(null, { autoescape: false, throwOnUndefined: true, trimBlocks: true });
  env.addFilter('bool', ansibleBool);
  return env;
}

const shared = environment();

/** Renders template text; `name` is used in errors, which never quote variable values (secrets). */
export function renderString(text: string, vars: Record<string, unknown>, name: string): string {
  try {
    return shared.renderString(text, vars);
  } catch (e) {
    const msg = (e as Error).message;
    const line = /\[Line (\d+), Column \d+\]/.exec(msg)?.[1];
    const what = msg.split('\n').pop()?.trim() ?? msg;
    throw new ConfigError(
      name,
      line ? Number(line) : undefined,
      undefined,
      `cannot render: ${what.replace(/^Error: /, '')}`,
    );
  }
}

export function renderFile(file: string, vars: Record<string, unknown>, displayName = file): string {
  return renderString(readFileSync(file, 'utf8'), vars, displayName);
}
