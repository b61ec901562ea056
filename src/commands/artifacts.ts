// ckan-release artifacts / artifacts show ID: the local store, newest first / one manifest.
import type { Command } from 'commander';
import { listStore, publishArtifact, showArtifact, storeName } from '../artifact/resolve.js';
import { findArtifact } from '../artifact/store.js';
import type { Io } from '../io.js';
import { loadConfig } from '../config/load.js';
import { UsageError } from '../errors.js';
import { globals } from './common.js';

export async function artifactsCommand(io: Io, _opts: unknown, cmd: Command): Promise<void> {
  const g = globals(cmd);
  const config = loadConfig(g.config);
  const list = await listStore(config);
  if (g.json) {
    io.out(
      JSON.stringify(
        list.map((m) => ({
          id: m.id,
          created: m.created,
          bytes: m.archive.bytes,
          sha256: m.archive.sha256,
        })),
      ) + '\n',
    );
    return;
  }
  if (list.length === 0) {
    io.err(`no artifacts in ${storeName(config)} (run \`ckan-release build\`)\n`);
    return;
  }
  for (const m of list) {
    const exts = m.extensions.map((x) => `${x.name}@${x.ref}`).join(' ');
    io.out(
      `${m.id}  ${(m.archive.bytes / 1e6).toFixed(1).padStart(7)} MB  ckan ${m.ckan.ref} (${m.ckan.commit.slice(0, 8)})  ${exts}\n`,
    );
  }
}

export async function artifactsShowCommand(
  io: Io,
  id: string,
  opts: { files?: boolean },
  cmd: Command,
): Promise<void> {
  const g = globals(cmd);
  const config = loadConfig(g.config);
  const { manifest: m, where } = await showArtifact(config, id);
  if (g.json) {
    io.out(JSON.stringify(m, null, 2) + '\n');
    return;
  }
  const lines = [
    `id:        ${m.id}`,
    `created:   ${m.created}`,
    `path:      ${where}`,
    `archive:   ${m.archive.file}, ${m.archive.bytes} bytes, sha256 ${m.archive.sha256}`,
    `release:   ${m.release_path}`,
    `builder:   ${m.builder.os} (${m.builder.image}), python ${m.builder.python.version} at ${m.builder.python.path}`,
    `ckan:      ${m.ckan.ref} -> ${m.ckan.commit} (version ${m.ckan.version ?? '?'}) from ${m.ckan.source}`,
    `extensions:`,
    ...m.extensions.map(
      (x) => `  ${x.name} ${x.ref} -> ${x.commit}  plugins: ${x.plugins.join(' ') || '-'}  (${x.source})`,
    ),
    `patches:`,
    ...(m.patches.length ? m.patches.map((p) => `  ${p.file}  sha256 ${p.sha256}`) : ['  none']),
    `pip freeze:`,
    ...m.pip.freeze.map((l) => `  ${l}`),
    `files:     ${m.files.length} entries`,
    ...(opts.files
      ? m.files.map((f) => `  ${f.mode} ${f.type.padEnd(7)} ${f.path}${f.target ? ` -> ${f.target}` : ''}`)
      : []),
  ];
  io.out(lines.join('\n') + '\n');
}

export async function artifactsPublishCommand(
  io: Io,
  id: string,
  _opts: unknown,
  cmd: Command,
): Promise<void> {
  const g = globals(cmd);
  const config = loadConfig(g.config);
  if (!config.s3)
    throw new UsageError(
      'the store is a local directory: nothing to publish to',
      'set `store: s3://BUCKET/PREFIX`',
    );
  const a = findArtifact(config.store, id);
  const r = (await publishArtifact(config, a, (line) => io.err(`${line}\n`)))!;
  if (g.json)
    io.out(
      JSON.stringify({
        id: r.id,
        published: r.published,
        chunks: r.chunks,
        bytes: r.bytes,
        uploaded_chunks: r.uploadedChunks,
        uploaded_bytes: r.uploadedBytes,
      }) + '\n',
    );
}
