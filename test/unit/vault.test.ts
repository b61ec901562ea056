// Secrets files: ansible-vault decryption (src/config/vault.ts) and loading (src/config/secrets.ts).
// The fixtures in test/fixtures/vault/ were made with the real ansible-vault; see its README.md.

import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';

import { loadSecrets, secretValues } from '../../src/config/secrets.js';
import { decryptVault, isVaultText, readVaultPassword } from '../../src/config/vault.js';
import { ConfigError } from '../../src/errors.js';

const FIX = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/vault');
const fx = (name: string): string => join(FIX, name);
const read = (name: string): string => readFileSync(fx(name), 'utf8');

const PASSWORD = 'fixture-vault-pass-7Qx';
const PROD_PASSWORD = 'prod-vault-pass-3Kd';
const PASSWORD_FILE = fx('password.txt');
const PROD_PASSWORD_FILE = fx('password-prod.txt');
const PASSWORD_SCRIPT = fx('password-script.sh');
const NO_PASSWORD_HINT = 'pass --vault-password-file FILE or set CKAN_RELEASE_VAULT_PASSWORD_FILE';
const ENCRYPT_HINT = 'the file must be written by `ansible-vault encrypt` (or `ansible-vault edit`)';

/** Every secret value in every fixture, and the passwords: none may ever appear in an error. */
const SECRETS = [
  PASSWORD,
  PROD_PASSWORD,
  'Sup3r-S3cret-DB-pass',
  'b34k3r-s3ss10n-s3cr3t',
  'smtp-pa55word-XYZ',
  'tok-aaaa-1111',
  'tok-bbbb-2222',
  'Pr0d-DB-S3cret-Val',
  'Pr0d-S0lr-S3cret',
  'Inl1ne-Vault-S3cret',
  'Synt4x-Err0r-S3cret',
  'Als0: S3cret-Value',
  'S3cret-Value',
  'L1st-Item-S3cret',
  'T3mp-S3cret',
];

const tmp = mkdtempSync(join(tmpdir(), 'ckan-release-vault-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let tmpCount = 0;
function tmpFile(content: string, mode = 0o644): string {
  const file = join(tmp, `f${++tmpCount}.yml`);
  writeFileSync(file, content);
  chmodSync(file, mode);
  return file;
}

/** Every error any test provoked, checked for leaks at the end as well as when caught. */
const seen: ConfigError[] = [];
function errorOf(fn: () => unknown): ConfigError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ConfigError);
  const err = caught as ConfigError;
  expect(err.exitCode).toBe(2);
  seen.push(err);
  for (const s of SECRETS) {
    expect(err.message).not.toContain(s);
    expect(err.hint ?? '').not.toContain(s);
  }
  return err;
}

/** The inline `!vault |` block of secrets-inline.yml, re-indented to `indent` spaces. */
function inlineBlock(indent: number): string {
  return read('secrets-inline.yml')
    .split('\n')
    .filter((l) => l.startsWith('          '))
    .map((l) => ' '.repeat(indent) + l.trim())
    .join('\n');
}

describe('isVaultText', () => {
  it('recognises vault files and inline vault text, and nothing else', () => {
    expect(isVaultText(read('secrets.vault.yml'))).toBe(true);
    expect(isVaultText(read('prod.vault.yml'))).toBe(true);
    expect(isVaultText('\n  $ANSIBLE_VAULT;1.1;AES256\n00\n')).toBe(true);
    expect(isVaultText(read('secrets.plain.yml'))).toBe(false);
    expect(isVaultText(read('secrets-inline.yml'))).toBe(false);
    expect(isVaultText('')).toBe(false);
  });
});

describe('decryptVault', () => {
  it('decrypts format 1.1 to the exact plaintext', () => {
    expect(decryptVault(read('secrets.vault.yml'), PASSWORD, 'secrets.vault.yml')).toBe(
      read('secrets.plain.yml'),
    );
    expect(decryptVault(read('not-a-mapping.vault.yml'), PASSWORD, 'x')).toBe(
      read('not-a-mapping.plain.yml'),
    );
  });

  it('decrypts format 1.2 with a vault-id label', () => {
    const text = read('prod.vault.yml');
    expect(text.split('\n')[0]).toBe('$ANSIBLE_VAULT;1.2;AES256;prod');
    expect(decryptVault(text, PROD_PASSWORD, 'prod.vault.yml')).toBe(read('prod.plain.yml'));
  });

  it('decrypts a file encrypted with the password from the script', () => {
    expect(decryptVault(read('syntax-error.vault.yml'), PASSWORD, 'x')).toBe(read('syntax-error.plain.yml'));
  });

  it('accepts CRLF line endings and surrounding blank lines', () => {
    const crlf = '\r\n' + read('secrets.vault.yml').replace(/\n/g, '\r\n') + '\r\n\r\n';
    expect(decryptVault(crlf, PASSWORD, 'x')).toBe(read('secrets.plain.yml'));
  });

  it('says the password is wrong when the HMAC does not match', () => {
    const err = errorOf(() =>
      decryptVault(read('secrets.vault.yml'), 'not-the-password', 'secrets/staging.yml'),
    );
    expect(err.message).toBe('secrets/staging.yml: cannot decrypt: wrong vault password (HMAC mismatch)');
    expect(err.hint).toBe('check the vault password file');
    const prod = errorOf(() => decryptVault(read('prod.vault.yml'), PASSWORD, 'prod.yml'));
    expect(prod.message).toBe('prod.yml: cannot decrypt: wrong vault password (HMAC mismatch)');
    expect(prod.hint).toBe(
      'check the vault password file; it was encrypted with vault id "prod": use that vault id\'s password',
    );
  });

  it('detects a tampered ciphertext (HMAC mismatch even with the right password)', () => {
    const [header, ...body] = read('secrets.vault.yml').trim().split('\n');
    const [salt, hmac, ciphertext = ''] = Buffer.from(body.join(''), 'hex').toString('latin1').split('\n');
    const flipped = ciphertext.slice(0, -1) + (ciphertext.endsWith('0') ? '1' : '0');
    const tampered = `${header}\n${Buffer.from(`${salt}\n${hmac}\n${flipped}`, 'latin1').toString('hex')}\n`;
    const err = errorOf(() => decryptVault(tampered, PASSWORD, 'f.yml'));
    expect(err.message).toBe('f.yml: cannot decrypt: wrong vault password (HMAC mismatch)');
  });

  it('says what is malformed in the header', () => {
    const body = read('secrets.vault.yml').split('\n').slice(1).join('\n');
    const cases: [string, string][] = [
      ['hello: world\n', 'f: is not ansible-vault encrypted (the first line must start with $ANSIBLE_VAULT)'],
      [
        '$ANSIBLE_VAULT;1.1\n' + body,
        'f: malformed ansible-vault header: expected "$ANSIBLE_VAULT;1.1;AES256" or "$ANSIBLE_VAULT;1.2;AES256;<vault-id>"',
      ],
      [
        '$ANSIBLE_VAULTX;1.1;AES256\n' + body,
        'f: malformed ansible-vault header: expected "$ANSIBLE_VAULT;1.1;AES256" or "$ANSIBLE_VAULT;1.2;AES256;<vault-id>"',
      ],
      [
        '$ANSIBLE_VAULT;1.2;AES256;a;b\n' + body,
        'f: malformed ansible-vault header: expected "$ANSIBLE_VAULT;1.1;AES256" or "$ANSIBLE_VAULT;1.2;AES256;<vault-id>"',
      ],
      [
        '$ANSIBLE_VAULT;2.0;AES256\n' + body,
        'f: unsupported ansible-vault format version "2.0": expected "$ANSIBLE_VAULT;1.1;AES256" or "$ANSIBLE_VAULT;1.2;AES256;<vault-id>"',
      ],
      [
        '$ANSIBLE_VAULT;1.0;AES\n' + body,
        'f: unsupported ansible-vault format version "1.0": expected "$ANSIBLE_VAULT;1.1;AES256" or "$ANSIBLE_VAULT;1.2;AES256;<vault-id>"',
      ],
      [
        '$ANSIBLE_VAULT;1.1;AES128\n' + body,
        'f: unsupported ansible-vault cipher "AES128": only AES256 is supported',
      ],
    ];
    for (const [text, message] of cases) {
      const err = errorOf(() => decryptVault(text, PASSWORD, 'f'));
      expect(err.message).toBe(message);
      expect(err.hint).toBe(ENCRYPT_HINT);
    }
  });

  it('says what is malformed in the body', () => {
    const lines = read('secrets.vault.yml').split('\n');
    const header = lines[0] ?? '';
    const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');
    const salt = 'ab'.repeat(32);
    const hmac = 'cd'.repeat(32);
    const cases: [string, string][] = [
      [header + '\n', 'f: malformed ansible-vault body: there is nothing after the header'],
      [header + '\n\n   \n', 'f: malformed ansible-vault body: there is nothing after the header'],
      [
        [header, lines[1], lines[2]?.replace(/.$/, 'g'), ...lines.slice(3)].join('\n'),
        'f: malformed ansible-vault body: line 3 is not hexadecimal',
      ],
      [
        read('secrets.vault.yml').trimEnd().slice(0, -1),
        'f: malformed ansible-vault body: the body has an odd number of hex digits (truncated?)',
      ],
      [
        `${header}\n${hex(`${salt}\n${hmac}`)}`,
        'f: malformed ansible-vault body: expected salt, HMAC and ciphertext lines',
      ],
      [
        `${header}\n${hex(`zz\n${hmac}\n${'00'.repeat(16)}`)}`,
        'f: malformed ansible-vault body: the salt is not hexadecimal',
      ],
      [
        `${header}\n${hex(`\n${hmac}\n${'00'.repeat(16)}`)}`,
        'f: malformed ansible-vault body: the salt is empty',
      ],
      [
        `${header}\n${hex(`${salt}\nabcd\n${'00'.repeat(16)}`)}`,
        'f: malformed ansible-vault body: the HMAC is 2 bytes, not 32',
      ],
      [
        `${header}\n${hex(`${salt}\n${hmac}\n${'00'.repeat(15)}`)}`,
        'f: malformed ansible-vault body: the ciphertext is 15 bytes, not a non-zero multiple of 16',
      ],
      [
        `${header}\n${hex(`${salt}\n${hmac}\n`)}`,
        'f: malformed ansible-vault body: the ciphertext is 0 bytes, not a non-zero multiple of 16',
      ],
    ];
    for (const [text, message] of cases) {
      const err = errorOf(() => decryptVault(text, PASSWORD, 'f'));
      expect(err.message).toBe(message);
      expect(err.hint).toBe(ENCRYPT_HINT);
    }
  });
});

describe('readVaultPassword', () => {
  it('reads a password file, stripping surrounding whitespace like ansible', () => {
    expect(readVaultPassword(PASSWORD_FILE)).toBe(PASSWORD);
    expect(readVaultPassword(tmpFile(`  \t${PASSWORD} \r\n\n`))).toBe(PASSWORD);
    expect(readVaultPassword(tmpFile('with inner  spaces\n'))).toBe('with inner  spaces');
  });

  it('runs an executable password file and uses its stdout', () => {
    expect(readVaultPassword(PASSWORD_SCRIPT)).toBe(PASSWORD);
    // Like ansible's ScriptVaultSecret, only CR/LF are stripped from a script's output.
    expect(readVaultPassword(tmpFile("#!/bin/sh\nprintf '  sp aced \\r\\n'\n", 0o755))).toBe('  sp aced ');
  });

  it('rejects empty passwords', () => {
    const empty = tmpFile('');
    expect(errorOf(() => readVaultPassword(empty)).message).toBe(`${empty}: vault password file is empty`);
    const blank = tmpFile(' \n\n');
    expect(errorOf(() => readVaultPassword(blank)).message).toBe(`${blank}: vault password file is empty`);
    const script = tmpFile('#!/bin/sh\necho\n', 0o755);
    const err = errorOf(() => readVaultPassword(script));
    expect(err.message).toBe(`${script}: vault password script printed an empty password`);
    expect(err.hint).toBe(NO_PASSWORD_HINT);
  });

  it('reports a failing or unrunnable password script without its output', () => {
    const failing = tmpFile(`#!/bin/sh\necho ${PASSWORD}\nexit 3\n`, 0o755);
    const err = errorOf(() => readVaultPassword(failing));
    expect(err.message).toBe(`${failing}: vault password script exited with status 3`);
    expect(err.hint).toBe('run it by hand to see what is wrong');
    const notScript = tmpFile(`${PASSWORD}\n`, 0o755);
    const err2 = errorOf(() => readVaultPassword(notScript));
    expect(err2.message).toBe(
      `${notScript}: vault password file is executable but is not a script (no #! line)`,
    );
    expect(err2.hint).toBe(
      'remove its executable bit (chmod -x) to use its content as the password, or make it a script',
    );
    const badInterpreter = tmpFile(`#!/no/such/interpreter\n${PASSWORD}\n`, 0o755);
    const err3 = errorOf(() => readVaultPassword(badInterpreter));
    expect(err3.message).toBe(`${badInterpreter}: cannot run vault password script (ENOENT)`);
    expect(err3.hint).toBe(
      'check its #! line, or remove its executable bit (chmod -x) to use its content as the password',
    );
  });

  it('reports a missing file, a directory, and a vault-encrypted password file', () => {
    const missing = join(tmp, 'no-such-password');
    const err = errorOf(() => readVaultPassword(missing));
    expect(err.message).toBe(`${missing}: vault password file not found`);
    expect(err.hint).toBe(NO_PASSWORD_HINT);
    const dir = join(tmp, 'a-dir');
    mkdirSync(dir);
    expect(errorOf(() => readVaultPassword(dir)).message).toBe(`${dir}: vault password file is a directory`);
    const vaulted = tmpFile(read('secrets.vault.yml'));
    expect(errorOf(() => readVaultPassword(vaulted)).message).toBe(
      `${vaulted}: vault password file is itself ansible-vault encrypted, which is not supported`,
    );
  });
});

describe('loadSecrets', () => {
  const expected = parse(read('secrets.plain.yml')) as Record<string, unknown>;

  it('loads a plain YAML file without any password (the password file is not even read)', () => {
    expect(
      loadSecrets(fx('secrets.plain.yml'), { vaultPasswordFile: join(tmp, 'missing'), env: {} }),
    ).toEqual(expected);
  });

  it('loads an encrypted file (1.1) with --vault-password-file, the env variable, or a script', () => {
    const f = fx('secrets.vault.yml');
    expect(loadSecrets(f, { vaultPasswordFile: PASSWORD_FILE, env: {} })).toEqual(expected);
    expect(loadSecrets(f, { env: { CKAN_RELEASE_VAULT_PASSWORD_FILE: PASSWORD_FILE } })).toEqual(expected);
    expect(loadSecrets(f, { vaultPasswordFile: PASSWORD_SCRIPT, env: {} })).toEqual(expected);
    expect(expected['smtp']).toEqual({ user: 'ckan@example.org', password: 'smtp-pa55word-XYZ' });
  });

  it('prefers --vault-password-file over CKAN_RELEASE_VAULT_PASSWORD_FILE', () => {
    const f = fx('secrets.vault.yml');
    const env = { CKAN_RELEASE_VAULT_PASSWORD_FILE: PROD_PASSWORD_FILE };
    expect(loadSecrets(f, { vaultPasswordFile: PASSWORD_FILE, env })).toEqual(expected);
    const err = errorOf(() =>
      loadSecrets(f, {
        vaultPasswordFile: PROD_PASSWORD_FILE,
        env: { CKAN_RELEASE_VAULT_PASSWORD_FILE: PASSWORD_FILE },
      }),
    );
    expect(err.message).toBe(`${f}: cannot decrypt: wrong vault password (HMAC mismatch)`);
  });

  it('loads a 1.2 file with a vault-id label', () => {
    expect(loadSecrets(fx('prod.vault.yml'), { vaultPasswordFile: PROD_PASSWORD_FILE })).toEqual({
      db_password: 'Pr0d-DB-S3cret-Val',
      solr_password: 'Pr0d-S0lr-S3cret',
    });
  });

  it('says an encrypted file needs a password, and how to give one', () => {
    const f = fx('secrets.vault.yml');
    for (const env of [{}, { CKAN_RELEASE_VAULT_PASSWORD_FILE: '' }]) {
      const err = errorOf(() => loadSecrets(f, { env }));
      expect(err.message).toBe(`${f}: is ansible-vault encrypted, but no vault password was given`);
      expect(err.hint).toBe(NO_PASSWORD_HINT);
      expect(err.line).toBeUndefined();
    }
  });

  it('decrypts inline !vault values with the same password', () => {
    const f = fx('secrets-inline.yml');
    const want = {
      site_admin_email: 'admin@example.org',
      db_password: 'Inl1ne-Vault-S3cret',
      smtp_host: 'smtp.example.org',
    };
    expect(loadSecrets(f, { vaultPasswordFile: PASSWORD_FILE })).toEqual(want);
    expect(loadSecrets(f, { env: { CKAN_RELEASE_VAULT_PASSWORD_FILE: PASSWORD_SCRIPT } })).toEqual(want);
  });

  it('decrypts nested inline values (in mappings and lists) and keeps aliases', () => {
    const f = tmpFile(
      [
        'smtp:',
        '  user: u',
        '  password: &pw !vault |',
        inlineBlock(4),
        'tokens:',
        '  - plain',
        '  - !vault-encrypted |',
        inlineBlock(6),
        'again: *pw',
        '',
      ].join('\n'),
    );
    expect(loadSecrets(f, { vaultPasswordFile: PASSWORD_FILE })).toEqual({
      smtp: { user: 'u', password: 'Inl1ne-Vault-S3cret' },
      tokens: ['plain', 'Inl1ne-Vault-S3cret'],
      again: 'Inl1ne-Vault-S3cret',
    });
  });

  it('names the line and key of an inline value it cannot decrypt', () => {
    const f = fx('secrets-inline.yml');
    const none = errorOf(() => loadSecrets(f, { env: {} }));
    expect(none.message).toBe(`${f}:3: db_password: is encrypted (!vault), but no vault password was given`);
    expect(none.hint).toBe(NO_PASSWORD_HINT);
    expect([none.line, none.keyPath]).toEqual([3, 'db_password']);
    const wrong = errorOf(() => loadSecrets(f, { vaultPasswordFile: PROD_PASSWORD_FILE }));
    expect(wrong.message).toBe(`${f}:3: db_password: cannot decrypt: wrong vault password (HMAC mismatch)`);

    const nested = tmpFile(
      ['a: 1', 'list:', '  - x', '  - !vault |', inlineBlock(6).replace(/.$/, 'q'), ''].join('\n'),
    );
    const bad = errorOf(() => loadSecrets(nested, { vaultPasswordFile: PASSWORD_FILE }));
    expect(bad.message).toBe(
      `${nested}:4: list[1]: malformed ansible-vault body: the !vault value is not hexadecimal`,
    );

    const notVault = tmpFile('a: 1\nb: !vault T3mp-S3cret\n');
    const err = errorOf(() => loadSecrets(notVault, { vaultPasswordFile: PASSWORD_FILE }));
    expect(err.message).toBe(`${notVault}:2: b: is tagged !vault but is not ansible-vault encrypted text`);
    expect(err.hint).toBe('make it with: ansible-vault encrypt_string --stdin-name NAME');
  });

  it('reports a YAML error of a decrypted file by line, without its text', () => {
    const f = fx('syntax-error.vault.yml');
    const err = errorOf(() => loadSecrets(f, { vaultPasswordFile: PASSWORD_SCRIPT }));
    expect(err.message).toBe(
      `${f}: invalid YAML: a mapping where a value was expected (bad indentation, or quote a value that contains ": ") (line 2, column 16 of the decrypted content)`,
    );
    expect(err.hint).toBe(`fix it with: ansible-vault edit ${f}`);
  });

  it('reports a YAML error of a plain file as file:line, without its text', () => {
    const f = fx('syntax-error.plain.yml');
    const err = errorOf(() => loadSecrets(f, {}));
    expect(err.message).toBe(
      `${f}:2: invalid YAML: a mapping where a value was expected (bad indentation, or quote a value that contains ": ") (column 16)`,
    );
    expect(err.line).toBe(2);
    const dup = tmpFile('a: T3mp-S3cret\na: T3mp-S3cret\n');
    expect(errorOf(() => loadSecrets(dup, {})).message).toBe(
      `${dup}:2: invalid YAML: duplicate key (column 1)`,
    );
    const tag = tmpFile('a: 1\nb: !foo T3mp-S3cret\n');
    expect(errorOf(() => loadSecrets(tag, {})).message).toBe(
      `${tag}:2: invalid YAML: unknown tag or a value that does not fit its tag (only !vault and standard YAML tags) (column 4)`,
    );
    const quote = tmpFile('a: 1\nb: "T3mp-S3cret\n');
    expect(errorOf(() => loadSecrets(quote, {})).message).toBe(
      `${quote}:3: invalid YAML: missing character (unclosed quote or bracket?) (column 1)`,
    );
  });

  it('requires a mapping with string keys', () => {
    const f = fx('not-a-mapping.vault.yml');
    const err = errorOf(() => loadSecrets(f, { vaultPasswordFile: PASSWORD_FILE }));
    expect(err.message).toBe(
      `${f}: must be a mapping of secret names to values (found a list) (line 1 of the decrypted content)`,
    );
    expect(err.hint).toBe('write it as `name: value` lines');
    const plainList = tmpFile('# comment\n- T3mp-S3cret\n');
    expect(errorOf(() => loadSecrets(plainList, {})).message).toBe(
      `${plainList}:2: must be a mapping of secret names to values (found a list)`,
    );
    const scalar = tmpFile('T3mp-S3cret\n');
    expect(errorOf(() => loadSecrets(scalar, {})).message).toBe(
      `${scalar}:1: must be a mapping of secret names to values (found a string)`,
    );
    const numKey = tmpFile('a: 1\nnested:\n  x: 1\n  42: T3mp-S3cret\n');
    const keyErr = errorOf(() => loadSecrets(numKey, {}));
    expect(keyErr.message).toBe(
      `${numKey}:4: nested: secret names must be strings (found a number as a key)`,
    );
    expect(keyErr.hint).toBe('quote the key');
  });

  it('treats an empty file as no secrets, and says when the file is missing', () => {
    expect(loadSecrets(tmpFile(''), {})).toEqual({});
    expect(loadSecrets(tmpFile('# nothing yet\n'), {})).toEqual({});
    const missing = join(tmp, 'missing.yml');
    const err = errorOf(() => loadSecrets(missing, {}));
    expect(err.message).toBe(`${missing}: secrets file not found`);
  });
});

describe('secretValues', () => {
  it('lists every distinct non-empty leaf string, longest first', () => {
    const secrets = loadSecrets(fx('secrets.vault.yml'), { vaultPasswordFile: PASSWORD_FILE });
    expect(secretValues(secrets)).toEqual([
      'b34k3r-s3ss10n-s3cr3t',
      'Sup3r-S3cret-DB-pass',
      'smtp-pa55word-XYZ',
      'ckan@example.org',
      'tok-aaaa-1111',
      'tok-bbbb-2222',
    ]);
    expect(secretValues({ a: '', b: 'x', c: ['x', { d: 'yy', e: 3, f: null, g: true }] })).toEqual([
      'yy',
      'x',
    ]);
  });
});

describe('no secret in any error', () => {
  it('has checked every error produced above', () => {
    expect(seen.length).toBeGreaterThan(40);
    for (const err of seen) {
      const text = `${err.message}\n${err.hint ?? ''}`.split(tmp).join('<tmp>');
      for (const s of SECRETS) expect(text).not.toContain(s);
      expect(text).not.toMatch(/s3cr|pa55/i);
    }
  });
});
