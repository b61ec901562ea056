// known_hosts as OpenSSH reads it: plain and hashed (|1|salt|hmac) host entries, [host]:port for
// non-standard ports, comma-separated names, negated and wildcard patterns, @revoked lines.
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export interface KnownKey {
  type: string;
  key: Buffer;
}

export type HostKeyVerdict =
  | { status: 'known' }
  | { status: 'unknown' }
  | { status: 'changed'; expected: KnownKey[] }
  | { status: 'revoked' };

/** The name OpenSSH looks a host up by: `host` on port 22, `[host]:port` otherwise. */
export function lookupName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** OpenSSH's SHA256 fingerprint: "SHA256:" + unpadded base64 of the key blob's digest. */
export function fingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** The key type named inside an SSH public key blob (string length + name). */
export function keyType(blob: Buffer): string {
  const len = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + len).toString();
}

function globMatch(pattern: string, name: string): boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
    'i',
  );
  return re.test(name);
}

function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    return createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64') === hash;
  }
  let matched = false;
  for (const pattern of field.split(',')) {
    if (pattern.startsWith('!')) {
      if (globMatch(pattern.slice(1), name)) return false;
    } else if (globMatch(pattern, name)) matched = true;
  }
  return matched;
}

export interface KnownHostsEntry {
  marker: '' | '@revoked' | '@cert-authority';
  hosts: string;
  key: KnownKey;
}

export function parseKnownHosts(text: string): KnownHostsEntry[] {
  const out: KnownHostsEntry[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const parts = line.split(/\s+/);
    let marker: KnownHostsEntry['marker'] = '';
    if (parts[0] === '@revoked' || parts[0] === '@cert-authority')
      marker = parts.shift() as KnownHostsEntry['marker'];
    const [hosts, type, b64] = parts;
    if (!hosts || !type || !b64) continue;
    out.push({ marker, hosts, key: { type, key: Buffer.from(b64, 'base64') } });
  }
  return out;
}

export function readKnownHosts(files: string[]): KnownHostsEntry[] {
  const out: KnownHostsEntry[] = [];
  for (const f of files) {
    try {
      out.push(...parseKnownHosts(readFileSync(f, 'utf8')));
    } catch {
      // a missing known_hosts file knows no host
    }
  }
  return out;
}

/**
 * Checks a host key against known_hosts entries for any of `names` (the lookup name, and a
 * HostKeyAlias when one is configured). A key of another type for the same host does not count as
 * a change, as in OpenSSH: the server may offer several.
 */
export function verifyHostKey(entries: KnownHostsEntry[], names: string[], offered: Buffer): HostKeyVerdict {
  const type = keyType(offered);
  const forHost = entries.filter(
    (e) => e.marker !== '@cert-authority' && names.some((n) => hostFieldMatches(e.hosts, n)),
  );
  if (forHost.some((e) => e.marker === '@revoked' && e.key.key.equals(offered))) return { status: 'revoked' };
  const plain = forHost.filter((e) => e.marker === '');
  if (plain.some((e) => e.key.key.equals(offered))) return { status: 'known' };
  const sameType = plain.filter((e) => e.key.type === type);
  if (sameType.length) return { status: 'changed', expected: sameType.map((e) => e.key) };
  return { status: 'unknown' };
}

export function knownHostsLine(name: string, key: Buffer): string {
  return `${name} ${keyType(key)} ${key.toString('base64')}`;
}

/** The host field of a known_hosts line for `name`, hashed as HashKnownHosts writes it (|1|salt|hmac). */
export function hashedHostField(name: string, salt: Buffer = randomBytes(20)): string {
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
}

/**
 * Appends `key` for `name` to a known_hosts file (made, with its directory, if missing: the directory
 * 0700 and the file 0600 as ssh makes them), hashed when asked.
 */
export function appendKnownHost(file: string, name: string, key: Buffer, hashed: boolean): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  let prefix = '';
  try {
    const text = readFileSync(file, 'utf8');
    if (text.length && !text.endsWith('\n')) prefix = '\n';
  } catch {
    // a new file
  }
  appendFileSync(file, `${prefix}${knownHostsLine(hashed ? hashedHostField(name) : name, key)}\n`, {
    mode: 0o600,
  });
}
