// npm run demo: the example project end to end, each step the real CLI: a Docker engine, the fixture
// repositories, sandbox hosts, setup, build, ship to staging, promote to production, status.
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
cli('sandbox', 'up');
cli('setup', 'staging');
cli('setup', 'production');
const id = cli('build').trim().split('\n').pop()!;
cli('artifacts');
cli('ship', 'staging', id);
cli('promote', 'staging', 'production');
cli('status', 'production');
for (const port of [8001, 8002, 8003]) {
  const res = await fetch(`http://127.0.0.1:${port}/api/3/action/status_show`);
  const body = (await res.json()) as {
    result: { ckan_version: string; site_url: string; extensions: string[] };
  };
  say(
    `http://127.0.0.1:${port}/ answers ${res.status}: CKAN ${body.result.ckan_version} for ${body.result.site_url}, plugins ${body.result.extensions.join(' ')}`,
  );
  if (res.status !== 200) process.exit(1);
}
say(`done: ${id} is live on staging and production.`);
say('look around: ssh -F examples/demo/.ckan-release/sandbox/ssh_config sandbox-web1');
say('remove the hosts: bin/ckan-release --config examples/demo/ckan-release.yml sandbox down');
