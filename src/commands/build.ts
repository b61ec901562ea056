// ckan-release build: progress per step with timings (events: a live line on a terminal, `[  1.2s] step`
// lines without one, JSON lines with --json); the artifact ID as the last line of stdout (--json: the
// last event, a result with {id, path, bytes, sha256}).
import type { Command } from 'commander';
import { build, type BuildStep } from '../builder/build.js';
import type { Io } from '../io.js';
import { loadConfig } from '../config/load.js';
import { requireEngine } from '../docker/engine.js';
import { CkanReleaseError, OperationError } from '../errors.js';
import { eventsFor, withEvents } from '../events.js';
import { publishArtifact, storeName } from '../artifact/resolve.js';
import type { PublishResult } from '../artifact/s3.js';
import { readArtifact } from '../artifact/store.js';
import { globals } from './common.js';

/** Every step in the order a build runs them (some are skipped when cached). */
const STEPS: BuildStep[] = [
  'resolve',
  'image',
  'base venv',
  'clone',
  'extensions',
  'patches',
  'install',
  'compile',
  'verify',
  'manifest',
  'pack',
  'store',
];

export async function buildCommand(io: Io, opts: { verbose?: boolean }, cmd: Command): Promise<void> {
  const g = globals(cmd);
  const ev = eventsFor(io, g.json);
  await withEvents(ev, 'build', async () => {
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
          ev.emit({
            type: 'step',
            step: e.step,
            index: STEPS.indexOf(e.step) + 1,
            count: STEPS.length,
            elapsed: (Date.now() - t0) / 1000,
            ...(e.detail ? { detail: e.detail } : {}),
          });
        } else if (e.kind === 'info') ev.say(e.message);
        else if (opts.verbose) ev.emit({ type: 'log', text: e.text });
      },
    });
    finishStep();
    const seconds = (Date.now() - t0) / 1000;
    ev.say(
      `built ${result.id} in ${seconds.toFixed(1)} s: ${(result.bytes / 1e6).toFixed(1)} MB, ${result.manifest.files.length} files`,
    );
    ev.say(`steps: ${timings.map(([s, ms]) => `${s} ${(ms / 1000).toFixed(1)}s`).join(', ')}`);
    let published: PublishResult | undefined;
    if (config.s3) {
      try {
        published = await publishArtifact(config, readArtifact(config.store, result.id), ev.say);
      } catch (e) {
        if (!(e instanceof CkanReleaseError)) throw e;
        throw new OperationError(
          `built ${result.id} (kept in the local store ${config.store}), but publishing it failed: ${e.message}`,
          `\`ckan-release artifacts publish ${result.id}\` tries again (only the chunks the store lacks)`,
        );
      }
    }
    ev.emit({
      type: 'result',
      command: 'build',
      ok: true,
      id: result.id,
      path: result.dir,
      bytes: result.bytes,
      sha256: result.sha256,
      files: result.manifest.files.length,
      seconds,
      steps: Object.fromEntries(timings.map(([s, ms]) => [s, ms / 1000])),
      ...(published
        ? {
            published: {
              store: storeName(config),
              chunks: published.chunks,
              uploaded_chunks: published.uploadedChunks,
              uploaded_bytes: published.uploadedBytes,
            },
          }
        : {}),
    });
    if (!g.json) ev.print(`${result.id}\n`);
  });
}
