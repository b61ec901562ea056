// npm run demo: the example project end to end, with what this version can do: a Docker engine, the
// fixture repositories, a build of examples/demo, and its manifest. Each step is the real CLI.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ensureBaseImage, ensureEngine } from '../src/docker/engine.js';
import { ensureFixtures } from '../test/support/fixtures.js';

const config = path.resolve('examples/demo/ckan-release.yml');
const say = (line: string) => console.log(`demo: ${line}`);

function cli(...args: string[]): string {
  say(`$ ckan-release ${args.join(' ')}`);
  const r = spawnSync(process.execPath, ['bin/ckan-release', '--config', config, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  process.stdout.write(r.stdout);
  if (r.status !== 0) {
    say(`ckan-release ${args[0]} exited ${r.status}`);
    process.exit(r.status ?? 1);
  }
  return r.stdout;
}

const docker = await ensureEngine(say);
await ensureBaseImage(docker, say);
const fixtures = await ensureFixtures();
say(
  `fixtures in ${fixtures.dir}${fixtures.changed.length ? ` (made: ${fixtures.changed.join(', ')})` : ' (up to date)'}`,
);
const id = cli('build').trim().split('\n').pop()!;
cli('artifacts');
cli('artifacts', 'show', id);
say(`built ${id}.`);
say(
  'shipping to sandbox hosts (ckan-release sandbox up / ship / promote) is not implemented yet: see README "Status".',
);
