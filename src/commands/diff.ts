// ckan-release diff A B: what changed between two artifacts (their manifests, from the local or the S3
// store), with the commit subjects of each changed source when this machine's git mirror has them.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { diffManifests, formatDiff, diffSummary } from '../artifact/diff.js';
import { showArtifact } from '../artifact/resolve.js';
import { defaultCacheDir } from '../builder/build.js';
import { git, mirrorPath } from '../builder/git.js';
import type { Io } from '../io.js';
import { loadConfig } from '../config/load.js';
import { globals } from './common.js';

async function commitsBetween(mirror: string, from: string, to: string) {
  if (!existsSync(mirror)) return null;
  const r = await git(['-C', mirror, 'log', '--format=%H%x09%s', `${from}..${to}`]);
  if (r.code !== 0) return null;
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => ({ commit: l.slice(0, 40), subject: l.slice(41) }));
}

export async function diffCommand(io: Io, a: string, b: string, _opts: unknown, c: Command): Promise<void> {
  const g = globals(c);
  const config = loadConfig(g.config);
  const [ma, mb] = [(await showArtifact(config, a)).manifest, (await showArtifact(config, b)).manifest];
  const d = diffManifests(ma, mb);
  // Sources by name as this config names them (manifests keep the config's text of the URL).
  const urls = new Map([
    ['ckan', config.ckan.url],
    ...config.extensions.map((x) => [x.name, x.url] as const),
  ]);
  const gitCache = path.join(defaultCacheDir(), 'git');
  for (const s of d.sources) {
    const url = urls.get(s.name);
    if (s.status !== 'changed' || !url) continue;
    s.commits = await commitsBetween(mirrorPath(gitCache, url), s.from!.commit, s.to!.commit);
  }
  if (g.json) io.out(JSON.stringify({ ...d, summary: diffSummary(d) }) + '\n');
  else io.out(formatDiff(d) + `summary: ${diffSummary(d)}\n`);
}
