// Secrets files: plain YAML, an ansible-vault encrypted YAML file, or plain YAML with values encrypted
// inline (`key: !vault |` from `ansible-vault encrypt_string`). All decrypt with one vault password.
//
// A secret value must never appear in an error: YAML errors are reported by line, column and a fixed
// description of the error code, never with the YAML library's message (which quotes the source).

import { readFileSync } from 'node:fs';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { ErrorCode, Node, ScalarTag, YAMLError } from 'yaml';

import { ConfigError } from '../errors.js';
import { decryptVault, isVaultText, readVaultPassword } from './vault.js';

export interface LoadSecretsOptions {
  /** --vault-password-file; wins over env.CKAN_RELEASE_VAULT_PASSWORD_FILE. */
  vaultPasswordFile?: string;
  /** Defaults to process.env. */
  env?: NodeJS.ProcessEnv;
}

export const VAULT_PASSWORD_ENV = 'CKAN_RELEASE_VAULT_PASSWORD_FILE';
const NO_PASSWORD_HINT = `pass --vault-password-file FILE or set ${VAULT_PASSWORD_ENV}`;

/** The tags ansible gives inline-encrypted strings. Resolved as the raw vault text; decrypted after parsing. */
const VAULT_TAGS = ['!vault', '!vault-encrypted'];
const vaultTags: ScalarTag[] = VAULT_TAGS.map((tag) => ({ tag, resolve: (value: string) => value }));

const YAML_ERRORS: Record<ErrorCode, string> = {
  ALIAS_PROPS: 'an alias cannot have an anchor or a tag',
  BAD_ALIAS: 'bad alias',
  BAD_DIRECTIVE: 'bad directive',
  BAD_DQ_ESCAPE: 'bad escape sequence in a double-quoted string',
  BAD_INDENT: 'bad indentation',
  BAD_PROP_ORDER: 'anchor and tag in the wrong order',
  BAD_SCALAR_START: 'a plain value cannot start with this character (quote the value)',
  BLOCK_AS_IMPLICIT_KEY:
    'a mapping where a value was expected (bad indentation, or quote a value that contains ": ")',
  BLOCK_IN_FLOW: 'block syntax inside a flow collection ([...] or {...})',
  BAD_COLLECTION_TYPE: 'the tag does not fit this kind of value (!vault goes on a string)',
  DUPLICATE_KEY: 'duplicate key',
  IMPOSSIBLE: 'unparsable YAML',
  KEY_OVER_1024_CHARS: 'key longer than 1024 characters',
  MISSING_CHAR: 'missing character (unclosed quote or bracket?)',
  MULTILINE_IMPLICIT_KEY: 'a key must be on one line (missing ":" or bad indentation?)',
  MULTIPLE_ANCHORS: 'more than one anchor on a value',
  MULTIPLE_DOCS: 'more than one YAML document (remove the extra "---")',
  MULTIPLE_TAGS: 'more than one tag on a value',
  NON_STRING_KEY: 'keys must be strings',
  RESOURCE_EXHAUSTION: 'too many alias expansions',
  TAB_AS_INDENT: 'tab used for indentation (use spaces)',
  TAG_RESOLVE_FAILED: 'unknown tag or a value that does not fit its tag (only !vault and standard YAML tags)',
  UNEXPECTED_TOKEN: 'unexpected token',
};

function kindOf(value: unknown): string {
  if (value === null || value === undefined) return 'an empty value';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'string') return 'a string';
  if (typeof value === 'number') return 'a number';
  if (typeof value === 'boolean') return 'a boolean';
  return `a ${typeof value}`;
}

/** Builds errors for one file; for a vault file, lines are those of the decrypted content. */
class Reporter {
  constructor(
    readonly file: string,
    readonly encrypted: boolean,
    private readonly lc: LineCounter,
  ) {}

  lineOf(offset: number | undefined): number | undefined {
    return offset === undefined ? undefined : this.lc.linePos(offset).line;
  }

  error(line: number | undefined, keyPath: string | undefined, what: string, hint?: string): ConfigError {
    if (!this.encrypted) return new ConfigError(this.file, line, keyPath, what, hint);
    const where = line === undefined ? '' : ` (line ${line} of the decrypted content)`;
    return new ConfigError(
      this.file,
      undefined,
      keyPath,
      `${what}${where}`,
      hint ?? `fix it with: ansible-vault edit ${this.file}`,
    );
  }

  yamlError(e: YAMLError): ConfigError {
    const pos = e.linePos?.[0] ?? this.lc.linePos(e.pos[0]);
    const what = `invalid YAML: ${YAML_ERRORS[e.code] ?? 'syntax error'}`;
    if (!this.encrypted) return this.error(pos.line, undefined, `${what} (column ${pos.col})`);
    return new ConfigError(
      this.file,
      undefined,
      undefined,
      `${what} (line ${pos.line}, column ${pos.col} of the decrypted content)`,
      `fix it with: ansible-vault edit ${this.file}`,
    );
  }
}

function keyJoin(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

/**
 * Reads a secrets file: plain YAML, ansible-vault encrypted YAML, or plain YAML with inline `!vault`
 * values. The vault password file is opts.vaultPasswordFile, else env.CKAN_RELEASE_VAULT_PASSWORD_FILE;
 * it is read (or run) only if something is encrypted. The top level must be a mapping with string keys;
 * an empty file is an empty mapping.
 */
export function loadSecrets(file: string, opts: LoadSecretsOptions = {}): Record<string, unknown> {
  const env = opts.env ?? process.env;

  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new ConfigError(
        file,
        undefined,
        undefined,
        'secrets file not found',
        'create it, or fix the path',
      );
    }
    if (code === 'EISDIR')
      throw new ConfigError(file, undefined, undefined, 'is a directory, not a secrets file');
    throw new ConfigError(file, undefined, undefined, `cannot read secrets file (${code ?? 'error'})`);
  }

  let password: string | undefined;
  const getPassword = (noPassword: () => ConfigError): string => {
    if (password === undefined) {
      const passwordFile = opts.vaultPasswordFile || env[VAULT_PASSWORD_ENV] || undefined;
      if (passwordFile === undefined) throw noPassword();
      password = readVaultPassword(passwordFile);
    }
    return password;
  };

  const encrypted = isVaultText(text);
  if (encrypted) {
    const pw = getPassword(
      () =>
        new ConfigError(
          file,
          undefined,
          undefined,
          'is ansible-vault encrypted, but no vault password was given',
          NO_PASSWORD_HINT,
        ),
    );
    text = decryptVault(text, pw, file);
  }

  const lc = new LineCounter();
  const report = new Reporter(file, encrypted, lc);
  const doc = parseDocument(text, { customTags: vaultTags, lineCounter: lc, uniqueKeys: true });
  const first = doc.errors[0] ?? doc.warnings[0];
  if (first) throw report.yamlError(first);

  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) return {};
  if (!isMap(root)) {
    const found = isSeq(root) ? 'a list' : isScalar(root) ? kindOf(root.value) : 'something else';
    throw report.error(
      report.lineOf(root.range?.[0]),
      undefined,
      `must be a mapping of secret names to values (found ${found})`,
      'write it as `name: value` lines',
    );
  }

  const walk = (node: Node | null, path: string): void => {
    if (node === null || isAlias(node)) return; // an alias shares its anchor's (already walked) node
    const line = report.lineOf(node.range?.[0]);
    if (isScalar(node)) {
      if (node.tag === undefined || !VAULT_TAGS.includes(node.tag)) return;
      const keyPath = path === '' ? undefined : path;
      if (typeof node.value !== 'string' || !isVaultText(node.value)) {
        throw report.error(
          line,
          keyPath,
          `is tagged ${node.tag} but is not ansible-vault encrypted text`,
          'make it with: ansible-vault encrypt_string --stdin-name NAME',
        );
      }
      const pw = getPassword(() =>
        report.error(
          line,
          keyPath,
          `is encrypted (${node.tag}), but no vault password was given`,
          NO_PASSWORD_HINT,
        ),
      );
      // Lines inside a decrypted vault file are not lines of `file`: give decryptVault only the key path.
      node.value = decryptVault(node.value, pw, file, encrypted ? { keyPath } : { line, keyPath });
      return;
    }
    if (isMap(node)) {
      for (const pair of node.items) {
        const key = pair.key;
        const keyLine = isScalar(key) ? report.lineOf(key.range?.[0]) : line;
        if (!isScalar(key) || typeof key.value !== 'string') {
          const found = isScalar(key) ? kindOf(key.value) : isMap(key) ? 'a mapping' : 'a list';
          throw report.error(
            keyLine,
            path === '' ? undefined : path,
            `secret names must be strings (found ${found} as a key)`,
            'quote the key',
          );
        }
        walk(pair.value as Node | null, keyJoin(path, key.value));
      }
      return;
    }
    if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item as Node | null, `${path}[${i}]`));
    }
  };
  walk(root, '');

  let result: unknown;
  try {
    result = doc.toJS();
  } catch {
    // toJS only throws on alias abuse; its message could quote the document, so it is not used.
    throw report.error(undefined, undefined, 'invalid YAML: too many alias expansions');
  }
  return result as Record<string, unknown>;
}

/**
 * Every distinct non-empty leaf string value in the secrets (nested mappings and lists included), longest
 * first so that a masker replaces a secret before any secret that is a substring of it.
 */
export function secretValues(secrets: unknown): string[] {
  const found = new Set<string>();
  const visit = (v: unknown): void => {
    if (typeof v === 'string') {
      if (v !== '') found.add(v);
    } else if (Array.isArray(v)) {
      v.forEach(visit);
    } else if (v !== null && typeof v === 'object') {
      Object.values(v).forEach(visit);
    }
  };
  visit(secrets);
  return [...found].sort((a, b) => b.length - a.length || (a < b ? -1 : a > b ? 1 : 0));
}
