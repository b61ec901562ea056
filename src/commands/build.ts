// ckan-release build: progress per step with timings on stderr; the artifact ID as the last line of
// stdout (--json: {id, path, bytes, sha256}).
import type { Command } from 'commander';
import { build, type BuildStep } from '../builder/build.js';
import type { Io } from '../cli.js';
import { loadConfig } from '../config/load.js';
import { requireEngine } from '../docker/engine.js';
import { globals } from './common.js';

export function registerBuild(program: Command, io: Io): void {
  program
    .command('build')
    .description('build an artifact in the builder container; prints its ID as the last line')
    .option('-v, --verbose', 'stream the build log (pip output etc.)')
    .action(async (opts: { verbose?: boolean }, cmd: Command) => {
      const g = globals(cmd);
      const config = loadConfig(g.config);
      const docker = await requireEngine();
      const t0 = Date.now();
      const timings: [BuildStep, number][] = [];
      let current: { step: BuildStep; at: number } | undefined;
      const finishStep = () => {
        if (current) timings.push([current.step, Date.now() - current.at]);
      };
      const result = await build({
        config,
        docker,
        onEvent: (e) => {
          if (e.kind === 'step') {
            finishStep();
            current = { step: e.step, at: Date.now() };
            io.err(`[${secs(Date.now() - t0)}] ${e.step}${e.detail ? `: ${e.detail}` : ''}\n`);
          } else if (e.kind === 'info') io.err(`           ${e.message}\n`);
          else if (opts.verbose) io.err(`           | ${e.text}\n`);
        },
      });
      finishStep();
      io.err(
        `[${secs(Date.now() - t0)}] built ${result.id}: ${(result.bytes / 1e6).toFixed(1)} MB, ${result.manifest.files.length} files\n`,
      );
      io.err(`           steps: ${timings.map(([s, ms]) => `${s} ${secs(ms).trim()}`).join(', ')}\n`);
      if (g.json)
        io.out(
          JSON.stringify({ id: result.id, path: result.dir, bytes: result.bytes, sha256: result.sha256 }) +
            '\n',
        );
      else io.out(`${result.id}\n`);
    });
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`.padStart(7);
}
