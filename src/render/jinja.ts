// Jinja2 as Ansible's template module has it, on top of nunjucks.
//
// nunjucks parses Jinja2 syntax, but its runtime is JavaScript's. What differs, and what this module
// changes so that a template of the old playbooks renders byte for byte as Ansible renders it:
//
// - printing: Python's str() of a value: True / False, lists and mappings as Python repr
//   (['a', 'b'], {'k': 'v'}); None prints as the empty string (Ansible's finalize). nunjucks printed
//   true / false, "a,b", "[object Object]", and refused null under throwOnUndefined.
// - truthiness: an empty list or mapping is false in Python (`{% if extensions %}`, `not`, `and`, `or`,
//   `x if c else y`); JavaScript finds them true.
// - literals True / False / None (nunjucks knows only true / false / none).
// - filters with Python semantics: default/d (default ''), join (items as str()), lower, upper,
//   capitalize, replace (all occurrences, optional count), string, int, float, indent (blank lines
//   left alone), bool (Ansible's), ternary, mandatory, to_json, to_nice_json, quote, b64encode,
//   b64decode, regex_replace, basename, dirname, items, unique, flatten.
// - tests: none, boolean, true, false, sequence, string, match, search.
// - methods of str and dict that templates call: .upper(), .lower(), .strip(), .split(), .replace(),
//   .startswith(), .endswith(), .join(), .items(), .keys(), .values(), .get().
//
// nunjucks is a single module instance; these changes apply to every nunjucks template of the process,
// which in ckan-release are all Jinja2 templates (config files, hooks, health check URLs).
import nunjucks from 'nunjucks';

type Fn = (...args: unknown[]) => unknown;

/** Marks a value as Python's None where JavaScript's null would be ambiguous. */
function isPlainObject(v: unknown): v is Record<string, unknown> {
  return (
    v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof nunjucks.runtime.SafeString)
  );
}

function pyReprString(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = '';
  for (const ch of s) {
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)
      out += `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return quote + out + quote;
}

function pyNumber(n: number): string {
  if (Number.isNaN(n)) return 'nan';
  if (!Number.isFinite(n)) return n > 0 ? 'inf' : '-inf';
  return String(n);
}

/** Python's repr(), for values inside lists and mappings. */
export function pyRepr(v: unknown): string {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'number') return pyNumber(v);
  if (typeof v === 'string') return pyReprString(v);
  if (v instanceof nunjucks.runtime.SafeString) return pyReprString(v.toString());
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(', ')}]`;
  if (v instanceof Date) return pyReprString(v.toISOString());
  if (typeof v === 'object')
    return `{${Object.entries(v as object)
      .map(([k, x]) => `${pyReprString(k)}: ${pyRepr(x)}`)
      .join(', ')}}`;
  return String(v);
}

/** Python's str(). */
export function pyStr(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v instanceof nunjucks.runtime.SafeString) return v.toString();
  return pyRepr(v);
}

/** Python's truth value. */
export function pyTruthy(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0;
  if (isPlainObject(v)) return Object.keys(v).length > 0;
  if (v instanceof nunjucks.runtime.SafeString) return v.length > 0;
  return Boolean(v);
}

/** Ansible's bool filter. */
export function ansibleBool(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (value === null || value === undefined) return false;
  if (typeof value === 'number') return value === 1;
  return ['yes', 'on', '1', 'true', 'y', 't'].includes(pyStr(value).toLowerCase());
}

function pySplit(s: string, sep?: unknown, maxsplit?: unknown): string[] {
  const max = typeof maxsplit === 'number' && maxsplit >= 0 ? maxsplit : Infinity;
  if (sep === undefined || sep === null) {
    const out: string[] = [];
    let rest = s.replace(/^\s+/, '');
    while (rest !== '') {
      if (out.length >= max) {
        out.push(rest.replace(/\s+$/, ''));
        return out;
      }
      const m = /\s+/.exec(rest);
      if (!m) {
        out.push(rest);
        break;
      }
      out.push(rest.slice(0, m.index));
      rest = rest.slice(m.index + m[0].length);
    }
    return out;
  }
  const parts = s.split(pyStr(sep));
  if (parts.length - 1 <= max) return parts;
  return [...parts.slice(0, max), parts.slice(max).join(pyStr(sep))];
}

function pyReplace(s: string, old: unknown, replacement: unknown, count?: unknown): string {
  const o = pyStr(old);
  const n = pyStr(replacement);
  const parts = o === '' ? ['', ...Array.from(s), ''] : s.split(o);
  const limit = typeof count === 'number' && count >= 0 ? count : Infinity;
  if (parts.length - 1 <= limit) return parts.join(n);
  return parts.slice(0, limit + 1).join(n) + o + parts.slice(limit + 1).join(o);
}

function stripChars(s: string, chars: unknown, left: boolean, right: boolean): string {
  if (chars === undefined || chars === null) {
    let out = s;
    if (left) out = out.replace(/^\s+/, '');
    if (right) out = out.replace(/\s+$/, '');
    return out;
  }
  const set = new Set(Array.from(pyStr(chars)));
  let a = 0;
  let b = s.length;
  if (left) while (a < b && set.has(s[a]!)) a++;
  if (right) while (b > a && set.has(s[b - 1]!)) b--;
  return s.slice(a, b);
}

const STR_METHODS: Record<string, (s: string, ...args: unknown[]) => unknown> = {
  upper: (s) => s.toUpperCase(),
  lower: (s) => s.toLowerCase(),
  strip: (s, c) => stripChars(s, c, true, true),
  lstrip: (s, c) => stripChars(s, c, true, false),
  rstrip: (s, c) => stripChars(s, c, false, true),
  split: (s, sep, max) => pySplit(s, sep, max),
  replace: (s, o, n, c) => pyReplace(s, o, n, c),
  startswith: (s, p) => (Array.isArray(p) ? p.some((x) => s.startsWith(pyStr(x))) : s.startsWith(pyStr(p))),
  endswith: (s, p) => (Array.isArray(p) ? p.some((x) => s.endsWith(pyStr(x))) : s.endsWith(pyStr(p))),
  join: (s, items) => (Array.isArray(items) ? items.map(pyStr).join(s) : ''),
  capitalize: (s) => s.charAt(0).toUpperCase() + s.slice(1).toLowerCase(),
  title: (s) => s.replace(/[A-Za-z]+/g, (w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase()),
  isdigit: (s) => /^[0-9]+$/.test(s),
  count: (s, sub) => (pyStr(sub) === '' ? s.length + 1 : s.split(pyStr(sub)).length - 1),
  find: (s, sub) => s.indexOf(pyStr(sub)),
};

const DICT_METHODS: Record<string, (d: Record<string, unknown>, ...args: unknown[]) => unknown> = {
  items: (d) => Object.entries(d),
  keys: (d) => Object.keys(d),
  values: (d) => Object.values(d),
  get: (d, k, def) => (Object.prototype.hasOwnProperty.call(d, pyStr(k)) ? d[pyStr(k)] : (def ?? null)),
};

function jsonDumps(v: unknown, indent?: number, level = 0): string {
  const pad = (n: number) => (indent === undefined ? '' : '\n' + ' '.repeat(indent * n));
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'string') {
    // Python's json.dumps(ensure_ascii=True).
    return JSON.stringify(v).replace(
      /[\u007f-\uffff]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
    );
  }
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    const sep = indent === undefined ? ', ' : ',';
    return `[${v.map((x) => pad(level + 1) + jsonDumps(x, indent, level + 1)).join(sep)}${pad(level)}]`;
  }
  const entries = Object.entries(v as object);
  if (entries.length === 0) return '{}';
  const sep = indent === undefined ? ', ' : ',';
  return `{${entries
    .map(([k, x]) => `${pad(level + 1)}${jsonDumps(k)}: ${jsonDumps(x, indent, level + 1)}`)
    .join(sep)}${pad(level)}}`;
}

function pyRegex(pattern: unknown, flags = ''): RegExp {
  let p = pyStr(pattern);
  // Python's named groups and inline flags at the start.
  p = p.replace(/\(\?P</g, '(?<').replace(/\(\?P=(\w+)\)/g, '\\k<$1>');
  const inline = /^\(\?([aiLmsux]+)\)/.exec(p);
  if (inline) {
    p = p.slice(inline[0].length);
    for (const f of inline[1]!) if ('ims'.includes(f) && !flags.includes(f)) flags += f;
  }
  return new RegExp(p, flags);
}

function filterDefault(value: unknown, def: unknown = '', boolean: unknown = false): unknown {
  if (value === undefined) return def;
  if (pyTruthy(boolean) && !pyTruthy(value)) return def;
  return value;
}

function toInt(value: unknown, def: unknown = 0, base: unknown = 10): unknown {
  if (typeof value === 'number') return Math.trunc(value);
  if (typeof value === 'boolean') return value ? 1 : 0;
  const s = pyStr(value).trim().replace(/_/g, '');
  const b = typeof base === 'number' ? base : 10;
  const intRe = b === 16 ? /^[+-]?(0x)?[0-9a-f]+$/i : b === 8 ? /^[+-]?(0o)?[0-7]+$/i : /^[+-]?[0-9]+$/;
  if (intRe.test(s)) return parseInt(s.replace(/^([+-]?)0[xo]/i, '$1'), b);
  if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) return Math.trunc(parseFloat(s));
  return def;
}

function toFloat(value: unknown, def: unknown = 0.0): unknown {
  if (typeof value === 'number') return value;
  if (typeof value === 'boolean') return value ? 1 : 0;
  const s = pyStr(value).trim();
  return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s) ? parseFloat(s) : def;
}

function indent(value: unknown, width: unknown = 4, first: unknown = false, blank: unknown = false): string {
  const pad = typeof width === 'string' ? width : ' '.repeat(Number(width));
  const s = pyStr(value);
  const lines = s.split('\n');
  const out = lines.map((line, i) => {
    if (i === 0) return pyTruthy(first) && (pyTruthy(blank) || line.trim() !== '') ? pad + line : line;
    return pyTruthy(blank) || line.trim() !== '' ? pad + line : line;
  });
  return out.join('\n');
}

function shellQuote(value: unknown): string {
  const s = pyStr(value);
  if (s === '') return "''";
  if (/^[\w@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'"'"'`)}'`;
}

function posixBasename(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

function posixDirname(p: string): string {
  const i = p.lastIndexOf('/') + 1;
  let head = p.slice(0, i);
  if (head && head !== '/'.repeat(head.length)) head = head.replace(/\/+$/, '');
  return head;
}

class MandatoryError extends Error {}

export const FILTERS: Record<string, Fn> = {
  default: filterDefault as Fn,
  d: filterDefault as Fn,
  bool: ansibleBool as Fn,
  join: (value, d = '', attribute) => {
    let items: unknown[] = Array.isArray(value)
      ? value
      : typeof value === 'string'
        ? Array.from(value)
        : isPlainObject(value)
          ? Object.keys(value)
          : [];
    if (attribute !== undefined && attribute !== null)
      items = items.map((x) => (x as Record<string, unknown>)[pyStr(attribute)]);
    return items.map(pyStr).join(pyStr(d));
  },
  lower: (v) => pyStr(v).toLowerCase(),
  upper: (v) => pyStr(v).toUpperCase(),
  capitalize: (v) => STR_METHODS.capitalize!(pyStr(v)),
  title: (v) => STR_METHODS.title!(pyStr(v)),
  replace: (v, o, n, c) => pyReplace(pyStr(v), o, n, c),
  string: (v) => pyStr(v),
  int: toInt as Fn,
  float: toFloat as Fn,
  indent: indent as Fn,
  trim: (v, chars) => stripChars(pyStr(v), chars, true, true),
  ternary: (v, yes, no, none) => (v === null && none !== undefined ? none : pyTruthy(v) ? yes : no),
  mandatory: (v, msg) => {
    if (v === undefined) throw new MandatoryError(msg ? pyStr(msg) : 'Mandatory variable not defined.');
    return v;
  },
  to_json: (v) => jsonDumps(v),
  to_nice_json: (v, i = 4) => jsonDumps(sortKeys(v), Number(i)),
  quote: shellQuote as Fn,
  b64encode: (v) => Buffer.from(pyStr(v), 'utf8').toString('base64'),
  b64decode: (v) => Buffer.from(pyStr(v), 'base64').toString('utf8'),
  regex_replace: (v, pattern = '', replacement = '', ignorecase = false, multiline = false) => {
    const flags = 'g' + (pyTruthy(ignorecase) ? 'i' : '') + (pyTruthy(multiline) ? 'm' : '');
    const repl = pyStr(replacement)
      .replace(/\$/g, '$$$$')
      .replace(/\\g<(\w+)>/g, (_m, g: string) => (/^\d+$/.test(g) ? `$${g}` : `$<${g}>`))
      .replace(/\\(\d)/g, '$$$1');
    return pyStr(v).replace(pyRegex(pattern, flags), repl);
  },
  basename: (v) => posixBasename(pyStr(v)),
  dirname: (v) => posixDirname(pyStr(v)),
  items: (v) => (isPlainObject(v) ? Object.entries(v) : []),
  dict2items: (v) => (isPlainObject(v) ? Object.entries(v).map(([key, value]) => ({ key, value })) : []),
  unique: (v) =>
    Array.isArray(v) ? v.filter((x, i) => v.findIndex((y) => pyRepr(y) === pyRepr(x)) === i) : v,
  pyslice: (v, a, b) => {
    const seq: unknown[] | string = Array.isArray(v) ? v : pyStr(v);
    const n = seq.length;
    const norm = (x: unknown, dflt: number) =>
      typeof x !== 'number' ? dflt : x < 0 ? Math.max(0, n + x) : Math.min(n, x);
    return seq.slice(norm(a, 0), norm(b, n));
  },
  max: (v) =>
    Array.isArray(v) && v.length ? v.reduce((x, y) => ((y as number) > (x as number) ? y : x)) : undefined,
  min: (v) =>
    Array.isArray(v) && v.length ? v.reduce((x, y) => ((y as number) < (x as number) ? y : x)) : undefined,
  sum: (v, attribute, start = 0) =>
    Array.isArray(v)
      ? v.reduce(
          (acc: number, x) => acc + Number(attribute ? (x as Record<string, unknown>)[pyStr(attribute)] : x),
          Number(start),
        )
      : start,
  abs: (v) => Math.abs(Number(v)),
  flatten: (v) => (Array.isArray(v) ? (v as unknown[]).flat(Infinity) : v),
};

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (isPlainObject(v))
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, sortKeys(v[k])]),
    );
  return v;
}

export const TESTS: Record<string, Fn> = {
  none: (v) => v === null,
  boolean: (v) => typeof v === 'boolean',
  true: (v) => v === true,
  false: (v) => v === false,
  sequence: (v) => Array.isArray(v) || typeof v === 'string' || isPlainObject(v),
  string: (v) => typeof v === 'string' || v instanceof nunjucks.runtime.SafeString,
  match: (v, p, ignorecase = false) =>
    pyRegex(`^(?:${pyStr(p)})`, pyTruthy(ignorecase) ? 'i' : '').test(pyStr(v)),
  search: (v, p, ignorecase = false) => pyRegex(p, pyTruthy(ignorecase) ? 'i' : '').test(pyStr(v)),
};

/**
 * Source changes that keep every line where it is (errors name lines of the original):
 * - Jinja2's trim_blocks also removes the newline after a comment `#}`; nunjucks' only after `%}`.
 *   The newline is moved inside the comment, which is dropped anyway.
 */
export function preprocess(text: string): string {
  return text.replace(
    /(\{%-?\s*raw\s*-?%\}[\s\S]*?\{%-?\s*endraw\s*)(-?)%\}(\r?\n)?|\{#([\s\S]*?)(-?)#\}(\r?\n)?|(\{\{|\{%)([\s\S]*?)(\}\}|%\})/g,
    (
      m,
      raw: string | undefined,
      rawDash: string,
      rawNl: string | undefined,
      body: string | undefined,
      dash: string,
      nl: string | undefined,
      open: string | undefined,
      code: string | undefined,
      close: string | undefined,
    ) => {
      // After {% endraw %} too; the newline goes into a comment of its own.
      if (raw !== undefined) return rawNl === undefined ? m : `${raw}${rawDash}%}{#${rawNl}#}`;
      if (body !== undefined) return nl === undefined ? m : `{#${body}${nl}${dash}#}`;
      return `${open}${slices(code ?? '')}${close}`;
    },
  );
}

/** Python slices of names (`ext.commit[:8]`, `items[1:-1]`) become the pyslice filter; strings untouched. */
function slices(code: string): string {
  return code
    .split(/('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")/)
    .map((part, i) =>
      i % 2 === 1
        ? part
        : part.replace(
            /(?<![\w.])([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*|\[\d+\])*)\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\]/g,
            (_m, name: string, a: string, b: string) =>
              `(${name} | pyslice(${a === '' ? 'none' : a}, ${b === '' ? 'none' : b}))`,
          ),
    )
    .join('');
}

export const GLOBALS: Record<string, unknown> = { True: true, False: false, None: null };

// ---- the runtime and compiler changes (applied once, at import) ----

interface CompilerProto {
  compile(node: unknown, frame: unknown): void;
  _emit(code: string): void;
  [name: string]: unknown;
}
interface NodeLike {
  typename: string;
  lineno: number;
  colno: number;
  [name: string]: unknown;
}

let patched = false;

/** Applies the Python semantics to nunjucks' runtime and compiler; idempotent. */
export function patchNunjucks(): void {
  if (patched) return;
  patched = true;
  const runtime = nunjucks.runtime as unknown as Record<string, unknown>;
  const lib = (
    nunjucks as unknown as { lib: { TemplateError: new (m: string, l: number, c: number) => Error } }
  ).lib;

  runtime.pyTruthy = pyTruthy;
  // Output: Python's str(); None prints as '' (Ansible's finalize); undefined stays an error.
  runtime.ensureDefined = (val: unknown, lineno: number, colno: number) => {
    if (val === undefined)
      throw new lib.TemplateError('attempted to output an undefined value', lineno + 1, colno + 1);
    return val;
  };
  runtime.suppressValue = (val: unknown) => {
    if (val === undefined || val === null) return '';
    return pyStr(val);
  };
  const memberLookup = runtime.memberLookup as (obj: unknown, val: unknown) => unknown;
  runtime.memberLookup = (obj: unknown, val: unknown) => {
    if (typeof obj === 'string' && typeof val === 'string' && Object.hasOwn(STR_METHODS, val)) {
      const m = STR_METHODS[val]!;
      return (...args: unknown[]) => m(obj, ...args);
    }
    if (isPlainObject(obj) && typeof val === 'string' && Object.hasOwn(DICT_METHODS, val)) {
      const m = DICT_METHODS[val]!;
      return (...args: unknown[]) => m(obj, ...args);
    }
    return memberLookup(obj, val);
  };

  // Conditions use Python's truth value.
  const nodes = (nunjucks as unknown as { nodes: { Group: { prototype: object } } }).nodes;
  const proto = (
    (nunjucks as unknown as { compiler: unknown }).compiler as { Compiler: { prototype: CompilerProto } }
  ).Compiler.prototype;
  const truthy = (target: unknown): NodeLike => {
    const t = target as NodeLike;
    const w = Object.create(nodes.Group.prototype) as NodeLike;
    Object.defineProperty(w, 'typename', { value: 'PyTruthy' });
    w.target = target;
    w.lineno = t.lineno;
    w.colno = t.colno;
    return w;
  };
  proto.compilePyTruthy = function (this: CompilerProto, node: NodeLike, frame: unknown) {
    this._emit('runtime.pyTruthy(');
    this.compile(node.target, frame);
    this._emit(')');
  };
  const withCond = (name: string) => {
    const orig = proto[name] as (this: CompilerProto, node: NodeLike, ...rest: unknown[]) => unknown;
    proto[name] = function (this: CompilerProto, node: NodeLike, ...rest: unknown[]) {
      const n = Object.create(node) as NodeLike;
      n.cond = truthy(node.cond);
      return orig.call(this, n, ...rest);
    };
  };
  withCond('compileIf');
  withCond('compileInlineIf');
  proto.compileNot = function (this: CompilerProto, node: NodeLike, frame: unknown) {
    this._emit('!runtime.pyTruthy(');
    this.compile(node.target, frame);
    this._emit(')');
  };
  const boolOp = (truthyResult: 'left' | 'right') =>
    function (this: CompilerProto, node: NodeLike, frame: unknown) {
      this._emit('((l) => runtime.pyTruthy(l) ? ');
      if (truthyResult === 'left') {
        this._emit('l : (');
        this.compile(node.right, frame);
        this._emit('))(');
      } else {
        this._emit('(');
        this.compile(node.right, frame);
        this._emit(') : l)(');
      }
      this.compile(node.left, frame);
      this._emit(')');
    };
  proto.compileOr = boolOp('left');
  proto.compileAnd = boolOp('right');
}

export { MandatoryError };
