// The archive of a warm build, assembled on this machine: the build container sends only the gzip
// members (chunks) that the newest local artifacts do not already hold; the others are copied from
// those artifacts' archives. A warm build of the bench release copies a few MB out of the container
// instead of 132 MB (no bind mounts, so the copy goes through the engine's API, seconds per 100 MB).
import { closeSync, existsSync, openSync, readdirSync, readSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { ARTIFACT_ID } from '../artifact/id.js';
import type { ArchiveChunk } from '../artifact/manifest.js';
import { readArtifact } from '../artifact/store.js';
import { OperationError } from '../errors.js';

/** Where a member is found on this machine: an archive and the member's offset in it. */
export interface LocalMember {
  file: string;
  offset: number;
  bytes: number;
}

/** How many of the newest local artifacts lend their members (each manifest is read: MBs for a big release). */
export const MEMBER_SOURCES = 5;

/** The members (by sha256) of the newest complete local artifacts that record their chunks. */
export function localMembers(store: string, limit = MEMBER_SOURCES): Map<string, LocalMember> {
  const out = new Map<string, LocalMember>();
  if (!existsSync(store)) return out;
  const ids = readdirSync(store)
    .filter((n) => ARTIFACT_ID.test(n) && existsSync(path.join(store, n, 'manifest.json')))
    .sort()
    .reverse()
    .slice(0, limit);
  for (const id of ids) {
    let artifact;
    try {
      artifact = readArtifact(store, id);
    } catch {
      continue; // a damaged artifact lends nothing; `artifacts` reports it
    }
    if (!artifact.manifest.archive.chunks || !existsSync(artifact.archive)) continue;
    let offset = 0;
    for (const c of artifact.manifest.archive.chunks) {
      if (!out.has(c.sha256)) out.set(c.sha256, { file: artifact.archive, offset, bytes: c.bytes });
      offset += c.bytes;
    }
  }
  return out;
}

/**
 * Writes `out`: the archive's members in order, each either the next one of `sent` (the members the
 * container sent, in order) or, when `local` has it, copied from a local archive. Every member is
 * checked against its size and sha256 as it is written. Returns the sha256 of the whole archive, hashed
 * as it was written (the store checks it against the container's without reading the file again).
 */
export function assembleArchive(
  chunks: ArchiveChunk[],
  local: Map<string, LocalMember>,
  sent: string,
  out: string,
): string {
  const whole = createHash('sha256');
  const fds = new Map<string, number>();
  const fdOf = (file: string) => {
    let fd = fds.get(file);
    if (fd === undefined) fds.set(file, (fd = openSync(file, 'r')));
    return fd;
  };
  const target = openSync(out, 'w');
  let sentAt = 0;
  try {
    for (const [i, c] of chunks.entries()) {
      const from = local.get(c.sha256);
      const buf = Buffer.allocUnsafe(c.bytes);
      const fd = from ? fdOf(from.file) : fdOf(sent);
      const at = from ? from.offset : sentAt;
      let got = 0;
      while (got < c.bytes) {
        const n = readSync(fd, buf, got, c.bytes - got, at + got);
        if (n === 0) break;
        got += n;
      }
      if (!from) sentAt += got;
      if (got !== c.bytes || createHash('sha256').update(buf).digest('hex') !== c.sha256) {
        throw new OperationError(
          `assembling the archive: member ${i} (sha256 ${c.sha256}) ${from ? `in ${from.file}` : `sent by the build container`} is damaged or short`,
        );
      }
      writeSync(target, buf);
      whole.update(buf);
    }
    return whole.digest('hex');
  } finally {
    closeSync(target);
    for (const fd of fds.values()) closeSync(fd);
  }
}
