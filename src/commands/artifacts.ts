// ckan-release artifacts / artifacts show ID: the local store, newest first / one manifest.
import type { Command } from 'commander';
import { findArtifact, listArtifacts } from '../artifact/store.js';
import type { Io } from '../cli.js';
import { loadConfig } from '../config/load.js';
import { globals } from './common.js';

export function registerArtifacts(program: Command, io: Io): void {
  const artifacts = program
    .command('artifacts')
    .description('list the local artifact store, newest first')
    .action((_opts: unknown, cmd: Command) => {
      const g = globals(cmd);
      const config = loadConfig(g.config);
      const list = listArtifacts(config.store);
      if (g.json) {
        io.out(
          JSON.stringify(
            list.map((a) => ({
              id: a.id,
              created: a.manifest.created,
              bytes: a.manifest.archive.bytes,
              sha256: a.manifest.archive.sha256,
            })),
          ) + '\n',
        );
        return;
      }
      if (list.length === 0) {
        io.err(`no artifacts in ${config.store} (run \`ckan-release build\`)\n`);
        return;
      }
      for (const a of list) {
        const m = a.manifest;
        const exts = m.extensions.map((x) => `${x.name}@${x.ref}`).join(' ');
        io.out(
          `${a.id}  ${(m.archive.bytes / 1e6).toFixed(1).padStart(7)} MB  ckan ${m.ckan.ref} (${m.ckan.commit.slice(0, 8)})  ${exts}\n`,
        );
      }
    });
  artifacts
    .command('show')
    .description("print one artifact's manifest")
    .argument('<id>', 'artifact ID or a unique prefix of it')
    .option('--files', 'also list every file (always included with --json)')
    .action((id: string, opts: { files?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const config = loadConfig(g.config);
      const a = findArtifact(config.store, id);
      const m = a.manifest;
      if (g.json) {
        io.out(JSON.stringify(m, null, 2) + '\n');
        return;
      }
      const lines = [
        `id:        ${m.id}`,
        `created:   ${m.created}`,
        `path:      ${a.dir}`,
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
          ? m.files.map(
              (f) => `  ${f.mode} ${f.type.padEnd(7)} ${f.path}${f.target ? ` -> ${f.target}` : ''}`,
            )
          : []),
      ];
      io.out(lines.join('\n') + '\n');
    });
}
