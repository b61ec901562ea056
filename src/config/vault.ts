// ansible-vault decryption with node:crypto only (no dependency on ansible or a crypto package).
//
// Format, as implemented by ansible-core (lib/ansible/parsing/vault/__init__.py, VaultAES256):
//   line 1   `$ANSIBLE_VAULT;1.1;AES256` or `$ANSIBLE_VAULT;1.2;AES256;<vault-id label>`
//   lines 2… hex, wrapped at 80 columns; joined, hex-decoded, they are three `\n`-separated lines:
//            hex(salt) \n hex(HMAC) \n hex(ciphertext)
//   keys     PBKDF2-HMAC-SHA256(password, salt, 10000 iterations, 80 bytes)
//            = AES key (32 bytes) | HMAC key (32 bytes) | CTR initial counter (16 bytes)
//   check    HMAC-SHA256(HMAC key, ciphertext) == HMAC, before anything is decrypted
//   decrypt  AES-256-CTR, then strip the PKCS#7 padding (16-byte blocks) ansible adds before encrypting.
//
// Nothing decrypted and no password ever goes into an error message.

import { execFileSync } from 'node:child_process';
import { createDecipheriv, createHmac, pbkdf2Sync, timingSafeEqual } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';

import { ConfigError } from '../errors.js';

const HEADER = '$ANSIBLE_VAULT';
const ITERATIONS = 10000;
const KEY_LENGTH = 32;
const IV_LENGTH = 16;
const HMAC_LENGTH = 32;
const BLOCK = 16;

const ENCRYPT_HINT = 'the file must be written by `ansible-vault encrypt` (or `ansible-vault edit`)';

/** Where a vault text sits, for messages: inline `!vault` values have a line and a key path. */
export interface VaultLocation {
  line?: number;
  keyPath?: string;
}

/** True if the text is ansible-vault encrypted (starts with `$ANSIBLE_VAULT`, leading whitespace allowed). */
export function isVaultText(text: string): boolean {
  return text
    .replace(/^\uFEFF/, '')
    .trimStart()
    .startsWith(HEADER);
}

interface Envelope {
  version: string;
  vaultId: string | undefined;
  /** The hex body, lines joined. */
  body: string;
  /** Line of the file (1-based) each body character came from, for "not hexadecimal" messages. */
  bodyLineOf: (index: number) => number;
}

function plainToken(s: string): boolean {
  return /^[A-Za-z0-9._-]{1,32}$/.test(s);
}

function parseEnvelope(text: string, fail: (what: string, hint?: string) => never): Envelope {
  const lines = text
    .replace(/^\uFEFF/, '')
    .trimStart()
    .split(/\r\n|\r|\n/);
  const header = (lines[0] ?? '').trim();
  if (!header.startsWith(HEADER)) {
    fail(`is not ansible-vault encrypted (the first line must start with ${HEADER})`, ENCRYPT_HINT);
  }
  const parts = header.split(';').map((p) => p.trim());
  const expected = `expected "${HEADER};1.1;AES256" or "${HEADER};1.2;AES256;<vault-id>"`;
  if (parts[0] !== HEADER || parts.length < 3 || parts.length > 4) {
    fail(`malformed ansible-vault header: ${expected}`, ENCRYPT_HINT);
  }
  const version = parts[1] ?? '';
  const cipher = parts[2] ?? '';
  if (version !== '1.1' && version !== '1.2') {
    const shown = plainToken(version) ? ` "${version}"` : '';
    fail(`unsupported ansible-vault format version${shown}: ${expected}`, ENCRYPT_HINT);
  }
  if (cipher !== 'AES256') {
    const shown = plainToken(cipher) ? ` "${cipher}"` : '';
    fail(`unsupported ansible-vault cipher${shown}: only AES256 is supported`, ENCRYPT_HINT);
  }
  const vaultId = parts[3] === undefined || parts[3] === '' ? undefined : parts[3];

  // Body: every following line, surrounding whitespace removed (YAML block scalars and editors may
  // leave some), blank lines ignored.
  let body = '';
  const starts: { offset: number; line: number }[] = [];
  lines.slice(1).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    starts.push({ offset: body.length, line: i + 2 });
    body += line;
  });
  const bodyLineOf = (index: number): number => {
    let found = 1;
    for (const s of starts) {
      if (s.offset > index) break;
      found = s.line;
    }
    return found;
  };
  return { version, vaultId, body, bodyLineOf };
}

const HEX = /^(?:[0-9a-fA-F]{2})*$/;

function hexDecode(hex: string, what: string, fail: (what: string, hint?: string) => never): Buffer {
  if (!HEX.test(hex)) {
    const why = /^[0-9a-fA-F]*$/.test(hex)
      ? 'has an odd number of hex digits (truncated?)'
      : 'is not hexadecimal';
    fail(`malformed ansible-vault body: ${what} ${why}`, ENCRYPT_HINT);
  }
  return Buffer.from(hex, 'hex');
}

/**
 * Decrypts ansible-vault text (format 1.1 or 1.2, AES256) and returns the plaintext (UTF-8).
 * Throws ConfigError naming `fileForMessages` (and `where`, for inline values) on malformed input or a
 * wrong password; never with any plaintext or the password in the message.
 */
export function decryptVault(
  text: string,
  password: string,
  fileForMessages: string,
  where?: VaultLocation,
): string {
  const fail = (what: string, hint?: string): never => {
    throw new ConfigError(fileForMessages, where?.line, where?.keyPath, what, hint);
  };
  const env = parseEnvelope(text, fail);
  if (env.body === '') fail('malformed ansible-vault body: there is nothing after the header', ENCRYPT_HINT);

  const firstBad = env.body.search(/[^0-9a-fA-F]/);
  if (firstBad >= 0) {
    // A line of the file, not of any plaintext: safe to say, and the most useful pointer.
    const at = where === undefined ? `line ${env.bodyLineOf(firstBad)}` : 'the !vault value';
    fail(`malformed ansible-vault body: ${at} is not hexadecimal`, ENCRYPT_HINT);
  }
  const inner = hexDecode(env.body, 'the body', fail).toString('latin1');
  const fields = inner.split('\n');
  if (fields.length < 3) {
    fail('malformed ansible-vault body: expected salt, HMAC and ciphertext lines', ENCRYPT_HINT);
  }
  const salt = hexDecode(fields[0] ?? '', 'the salt', fail);
  const expectedHmac = hexDecode(fields[1] ?? '', 'the HMAC', fail);
  const ciphertext = hexDecode(fields.slice(2).join('\n'), 'the ciphertext', fail);
  if (salt.length === 0) fail('malformed ansible-vault body: the salt is empty', ENCRYPT_HINT);
  if (expectedHmac.length !== HMAC_LENGTH) {
    fail(
      `malformed ansible-vault body: the HMAC is ${expectedHmac.length} bytes, not ${HMAC_LENGTH}`,
      ENCRYPT_HINT,
    );
  }
  if (ciphertext.length === 0 || ciphertext.length % BLOCK !== 0) {
    fail(
      `malformed ansible-vault body: the ciphertext is ${ciphertext.length} bytes, not a non-zero multiple of ${BLOCK}`,
      ENCRYPT_HINT,
    );
  }

  const derived = pbkdf2Sync(
    Buffer.from(password, 'utf8'),
    salt,
    ITERATIONS,
    2 * KEY_LENGTH + IV_LENGTH,
    'sha256',
  );
  const aesKey = derived.subarray(0, KEY_LENGTH);
  const hmacKey = derived.subarray(KEY_LENGTH, 2 * KEY_LENGTH);
  const iv = derived.subarray(2 * KEY_LENGTH);

  const actualHmac = createHmac('sha256', hmacKey).update(ciphertext).digest();
  if (!timingSafeEqual(actualHmac, expectedHmac)) {
    const label =
      env.vaultId !== undefined && plainToken(env.vaultId)
        ? `; it was encrypted with vault id "${env.vaultId}": use that vault id's password`
        : '';
    fail('cannot decrypt: wrong vault password (HMAC mismatch)', `check the vault password file${label}`);
  }

  const decipher = createDecipheriv('aes-256-ctr', aesKey, iv);
  const padded = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
  const pad = padded[padded.length - 1] ?? 0;
  let padOk = pad >= 1 && pad <= BLOCK;
  for (let i = 1; padOk && i <= pad; i++) padOk = padded[padded.length - i] === pad;
  if (!padOk) fail('malformed ansible-vault body: the decrypted data has invalid padding', ENCRYPT_HINT);
  const plain = padded.subarray(0, padded.length - pad);

  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(plain);
  } catch {
    return fail('the decrypted content is not UTF-8 text');
  }
}

function isExecutable(mode: number): boolean {
  // ansible's is_executable: any of the execute bits.
  return (mode & 0o111) !== 0;
}

/**
 * Reads a vault password the way ansible does for --vault-password-file:
 * - an executable file is run (no arguments, stdin and stderr inherited) and its stdout, with leading and
 *   trailing CR/LF stripped, is the password; a non-zero exit is an error;
 * - any other file's content, with leading and trailing whitespace stripped, is the password.
 * An empty password is an error.
 */
export function readVaultPassword(file: string): string {
  const fail = (what: string, hint?: string): never => {
    throw new ConfigError(file, undefined, undefined, what, hint);
  };
  const hint = 'pass --vault-password-file FILE or set CKAN_RELEASE_VAULT_PASSWORD_FILE';
  let mode: number;
  try {
    const st = statSync(file);
    if (st.isDirectory()) fail('vault password file is a directory', hint);
    mode = st.mode;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    return fail(
      code === 'ENOENT'
        ? 'vault password file not found'
        : `cannot read vault password file (${code ?? 'error'})`,
      hint,
    );
  }

  let password: string;
  if (isExecutable(mode)) {
    // Like ansible (Python's execve), run only real executables: execvp, which node uses, would hand a
    // file without "#!" to /bin/sh, running a password as a command and echoing it on stderr.
    let magic: string;
    try {
      const fd = openSync(file, 'r');
      try {
        const buf = Buffer.alloc(4);
        magic = buf.subarray(0, readSync(fd, buf, 0, 4, 0)).toString('latin1');
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return fail(`cannot read vault password script (${code ?? 'error'})`, hint);
    }
    if (!magic.startsWith('#!') && magic !== '\x7fELF') {
      return fail(
        'vault password file is executable but is not a script (no #! line)',
        'remove its executable bit (chmod -x) to use its content as the password, or make it a script',
      );
    }
    let stdout: Buffer;
    try {
      stdout = execFileSync(file, [], { stdio: ['inherit', 'pipe', 'inherit'], maxBuffer: 1024 * 1024 });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { status?: number | null; signal?: string | null };
      // Never e.message: it can carry the script's output.
      if (typeof e.status === 'number') {
        return fail(
          `vault password script exited with status ${e.status}`,
          'run it by hand to see what is wrong',
        );
      }
      const why = e.signal ? `killed by ${e.signal}` : (e.code ?? 'error');
      return fail(
        `cannot run vault password script (${why})`,
        'check its #! line, or remove its executable bit (chmod -x) to use its content as the password',
      );
    }
    password = stdout.toString('utf8').replace(/^[\r\n]+|[\r\n]+$/g, '');
    if (password === '') fail('vault password script printed an empty password', hint);
  } else {
    let content: string;
    try {
      content = readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return fail(`cannot read vault password file (${code ?? 'error'})`, hint);
    }
    password = content.replace(/^[ \t\n\r\v\f]+|[ \t\n\r\v\f]+$/g, ''); // Python's bytes.strip()
    if (password === '') fail('vault password file is empty', 'put the vault password in it (one line)');
    if (isVaultText(password)) {
      fail(
        'vault password file is itself ansible-vault encrypted, which is not supported',
        'use a plain password file or an executable password script',
      );
    }
  }
  return password;
}
