// npm run demo: the example project end to end, each step the real CLI: a Docker engine, the fixture
// repositories, sandbox hosts, setup, build, ship to staging, promote to production, status; then a
// second release promoted and rolled back on production under a continuous load, which must see no
// failed request (restart: apache-graceful, README "Web servers").
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { ensureBaseImage, ensureEngine } from '../src/docker/engine.js';
import { ensureFixtures } from '../test/support/fixtures.js';
import { startLoad } from '../test/support/load.js';

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

// A second release (the same inputs, built again: a new ID, another directory) switched to and back on
// production while 2 clients per host keep asking for status_show, each request on a new connection.
const id2 = cli('build').trim().split('\n').pop()!;
cli('ship', 'staging', id2);
const loads = [8002, 8003].map((port) => ({ port, load: startLoad(port, 2) }));
// The load runs in this process: the CLI must run beside it, not block it.
const cliAsync = (...args: string[]) =>
  new Promise<void>((resolve, reject) => {
    say(`$ ckan-release ${args.join(' ')}   (under load)`);
    const child = spawn(process.execPath, ['bin/ckan-release', '--config', config, ...args], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`ckan-release ${args[0]} exited ${code}`)),
    );
  });
await cliAsync('promote', 'staging', 'production');
await cliAsync('rollback', 'production');
let failed = 0;
for (const { port, load } of loads) {
  const r = await load.stop();
  failed += r.failures;
  say(
    `load on 127.0.0.1:${port} across 2 switches: ${r.requests} requests, ${r.failures} failed, slowest ${r.slowestMs} ms, by release ${JSON.stringify(r.byRelease)}`,
  );
  for (const x of r.failureSamples) say(`  failed: ${x}`);
}
if (failed) {
  say(`${failed} requests failed across the switches`);
  process.exit(1);
}
say(`done: ${id} is live on staging and production (${id2} was promoted and rolled back under load).`);
say('look around: ssh -F examples/demo/.ckan-release/sandbox/ssh_config sandbox-web1');
say('remove the hosts: bin/ckan-release --config examples/demo/ckan-release.yml sandbox down');
