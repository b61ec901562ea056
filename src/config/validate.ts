// A small validator over YAML nodes. It keeps each node's position so that every error can say
// "file:line key.path: what was expected", and it knows the allowed keys of every mapping so that an
// unknown key gets a "did you mean". Values are converted to plain TypeScript values as they are checked.
import { isMap, isScalar, isSeq, LineCounter, type Node, type Pair, type YAMLMap } from 'yaml';
import { ConfigError } from '../errors.js';
import { closest } from './suggest.js';

export interface Ctx {
  file: string;
  lines: LineCounter;
  path: string;
  env: NodeJS.ProcessEnv;
}

export type Validator<T> = (node: Node, ctx: Ctx) => T;

export function lineOf(ctx: Ctx, node: Node | null | undefined): number | undefined {
  const offset = node?.range?.[0];
  return offset === undefined ? undefined : ctx.lines.linePos(offset).line;
}

export function fail(ctx: Ctx, node: Node | null | undefined, what: string, hint?: string): never {
  throw new ConfigError(ctx.file, lineOf(ctx, node), ctx.path || undefined, what, hint);
}

function child(ctx: Ctx, key: string | number): Ctx {
  const path = typeof key === 'number' ? `${ctx.path}[${key}]` : ctx.path ? `${ctx.path}.${key}` : key;
  return { ...ctx, path };
}

function describe(node: Node): string {
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const v = node.value;
    if (v === null) return 'nothing';
    if (typeof v === 'string') return `"${v}"`;
    if (typeof v === 'boolean') return `a boolean (${v})`;
    if (typeof v === 'number') return `a number (${v})`;
  }
  return 'something else';
}

const ENV_REF = /\$\{env:([^}]*)\}/g;

/** Replaces ${env:NAME} with the environment's value; an unset variable is an error. */
export function interpolate(value: string, node: Node, ctx: Ctx): string {
  return value.replace(ENV_REF, (_m, name: string) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      fail(ctx, node, `"\${env:${name}}" is not a valid variable name`);
    const v = ctx.env[name];
    if (v === undefined) fail(ctx, node, `environment variable ${name} is not set (used as \${env:${name}})`);
    return v;
  });
}

export interface StrOpts {
  /** What a valid value looks like, for the error message. */
  expected?: string;
  pattern?: RegExp;
  check?: (v: string) => string | undefined;
}

export function str(opts: StrOpts = {}): Validator<string> {
  const expected = opts.expected ?? 'a string';
  return (node, ctx) => {
    if (!isScalar(node) || node.value === null || typeof node.value === 'object') {
      fail(ctx, node, `expected ${expected}, got ${describe(node)}`);
    }
    if (typeof node.value !== 'string') {
      fail(ctx, node, `expected ${expected}, got ${describe(node)}`, 'quote the value to make it a string');
    }
    const value = interpolate(node.value, node, ctx);
    if (value === '') fail(ctx, node, `expected ${expected}, got an empty string`);
    if (opts.pattern && !opts.pattern.test(value)) fail(ctx, node, `expected ${expected}, got "${value}"`);
    const problem = opts.check?.(value);
    if (problem) fail(ctx, node, problem);
    return value;
  };
}

export function int(min: number, max = Number.MAX_SAFE_INTEGER): Validator<number> {
  return (node, ctx) => {
    let v: unknown = isScalar(node) ? node.value : undefined;
    if (typeof v === 'string' && /^\$\{env:[^}]*\}$/.test(v)) v = Number(interpolate(v, node, ctx));
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
      fail(ctx, node, `expected a whole number ${range}, got ${describe(node)}`);
    }
    return v;
  };
}

export function bool(): Validator<boolean> {
  return (node, ctx) => {
    if (!isScalar(node) || typeof node.value !== 'boolean') {
      fail(ctx, node, `expected true or false, got ${describe(node)}`);
    }
    return node.value;
  };
}

export function oneOf<T extends string>(values: readonly T[]): Validator<T> {
  return (node, ctx) => {
    const v = isScalar(node) ? node.value : undefined;
    if (typeof v !== 'string' || !values.includes(v as T)) {
      const guess = typeof v === 'string' ? closest(v, values) : undefined;
      fail(
        ctx,
        node,
        `expected one of ${values.join(', ')}, got ${describe(node)}` +
          (guess ? `; did you mean "${guess}"?` : ''),
      );
    }
    return v as T;
  };
}

export function list<T>(item: Validator<T>, opts: { min?: number; what?: string } = {}): Validator<T[]> {
  return (node, ctx) => {
    if (!isSeq(node))
      fail(ctx, node, `expected a list${opts.what ? ` of ${opts.what}` : ''}, got ${describe(node)}`);
    const min = opts.min ?? 0;
    if (node.items.length < min)
      fail(ctx, node, `expected at least ${min} item${min === 1 ? '' : 's'}, got none`);
    return node.items.map((n, i) => item(n as Node, child(ctx, i)));
  };
}

/** Any YAML value, as plain data (strings interpolated). For free-form template variables. */
export function anyValue(): Validator<unknown> {
  const walk = (node: Node, ctx: Ctx): unknown => {
    if (isMap(node)) {
      const out: Record<string, unknown> = {};
      for (const pair of node.items) {
        const key = keyOf(pair, ctx);
        out[key] = pair.value ? walk(pair.value as Node, child(ctx, key)) : null;
      }
      return out;
    }
    if (isSeq(node)) return node.items.map((n, i) => walk(n as Node, child(ctx, i)));
    if (isScalar(node))
      return typeof node.value === 'string' ? interpolate(node.value, node, ctx) : node.value;
    fail(ctx, node, `unsupported YAML value (aliases and tags other than plain values are not allowed)`);
  };
  return walk;
}

function keyOf(pair: Pair, ctx: Ctx): string {
  const k = pair.key as Node | null;
  if (!isScalar(k) || (typeof k.value !== 'string' && typeof k.value !== 'number')) {
    fail(ctx, k, `expected a plain string key, got ${k ? describe(k) : 'nothing'}`);
  }
  return String(k.value);
}

/** A mapping whose keys are names chosen by the user (environments, vars). */
export function mapOf<T>(
  value: Validator<T>,
  opts: { keyPattern?: RegExp; keyExpected?: string; min?: number } = {},
): Validator<Record<string, T>> {
  return (node, ctx) => {
    if (!isMap(node)) fail(ctx, node, `expected a mapping, got ${describe(node)}`);
    if (node.items.length < (opts.min ?? 0)) fail(ctx, node, `expected at least ${opts.min} entry, got none`);
    const out: Record<string, T> = {};
    for (const pair of node.items) {
      const key = keyOf(pair, ctx);
      const k = pair.key as Node;
      if (opts.keyPattern && !opts.keyPattern.test(key)) {
        fail(child(ctx, key), k, `invalid name: expected ${opts.keyExpected ?? String(opts.keyPattern)}`);
      }
      if (Object.hasOwn(out, key)) fail(child(ctx, key), k, 'duplicate key');
      out[key] = value(valueNode(pair, k), child(ctx, key));
    }
    return out;
  };
}

/** A key with no value (`key:`) is a null scalar positioned at the key, so errors still get a line. */
function valueNode(pair: Pair, key: Node): Node {
  return (pair.value as Node | null) ?? ({ ...key, value: null } as unknown as Node);
}

export interface Field<T> {
  v: Validator<T>;
  /** Required when there is no default. */
  required?: boolean;
  /** The value when the key is absent (or null). */
  default?: () => T;
}

type Out<F> = { [K in keyof F]: F[K] extends Field<infer T> ? T : never };

/** A mapping with a fixed set of keys; unknown keys are errors with a "did you mean". */
export function obj<F extends Record<string, Field<unknown>>>(fields: F): Validator<Out<F>> {
  return (node, ctx) => {
    if (!isMap(node))
      fail(
        ctx,
        node,
        `expected a mapping with keys ${Object.keys(fields).join(', ')}, got ${describe(node)}`,
      );
    const seen = new Map<string, Node>();
    for (const pair of (node as YAMLMap).items) {
      const key = keyOf(pair, ctx);
      const k = pair.key as Node;
      if (!Object.hasOwn(fields, key)) {
        const guess = closest(key, Object.keys(fields));
        fail(
          child(ctx, key),
          k,
          'unknown key' +
            (guess ? `; did you mean "${guess}"?` : `; expected one of ${Object.keys(fields).join(', ')}`),
        );
      }
      if (seen.has(key)) fail(child(ctx, key), k, 'duplicate key');
      seen.set(key, valueNode(pair, k));
    }
    const out: Record<string, unknown> = {};
    for (const [key, field] of Object.entries(fields)) {
      const v = seen.get(key);
      const absent = v === undefined || (isScalar(v) && v.value === null);
      if (absent) {
        if (field.default) out[key] = field.default();
        else if (field.required) fail(ctx, node, `missing required key "${key}"`);
        else out[key] = undefined;
      } else {
        out[key] = field.v(v, child(ctx, key));
      }
    }
    return out as Out<F>;
  };
}

export function required<T>(v: Validator<T>): Field<T> {
  return { v, required: true };
}
export function optional<T>(v: Validator<T>): Field<T | undefined> {
  return { v };
}
export function withDefault<T>(v: Validator<T>, d: () => T): Field<T> {
  return { v, default: d };
}
