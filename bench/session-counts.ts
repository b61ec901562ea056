// SSH channels, sudo runs and seconds of a few operations on one sandbox host, for this checkout's
// ckan-release and another one (the code before a change), in the same run:
//   npx tsx bench/session-counts.ts /work/main/bin/ckan-release [SSH_PORT HTTP_PORT]
// A small release (the test project's), host `session-counts`; counts by bench/count-channels.mjs (the
// same for either tool); times are one run each on whatever the machine is doing (SESSION_RUNS=N: each
// tool's sequence N times, the tools taking turns, the median and every run shown): npm run bench's
// rows are the measurement, this is the quick look at the calls.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { sandboxDown, sandboxUp } from '../src/sandbox/sandbox.js';
import { testDocker } from '../test/support/docker.js';
import { onHost } from '../test/support/hosts.js';
import { testProject } from '../test/support/project.js';

const [baseline, sshPort = '2410', httpPort = '8410'] = process.argv.slice(2);
if (!baseline)
  throw new Error('usage: tsx bench/session-counts.ts OTHER/bin/ckan-release [SSH_PORT HTTP_PORT]');
const HOST = 'session-counts';
const COUNTER = path.resolve('bench/count-channels.mjs');

function run(bin: string, config: string, ...argv: string[]) {
  return new Promise<{ secs: number; channels: number; sudo: number }>((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['--import', COUNTER, bin, '--config', config, ...argv], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${bin} ${argv.join(' ')}: exit ${code}\n${err.slice(-2000)}`));
      const counts = JSON.parse(/^bench-count: (.*)$/m.exec(err)![1]!) as Record<
        string,
        { channels: number; sudo: number }
      >;
      const c = Object.values(counts)[0] ?? { channels: 0, sudo: 0 };
      resolve({ secs: (performance.now() - t0) / 1000, ...c });
    });
  });
}

const docker = await testDocker();
const project = await testProject();
const dir = path.join(project.dir, '.ckan-release/sandbox');
try {
  writeFileSync(
    project.config,
    readFileSync(project.config, 'utf8')
      .replaceAll('sandbox-staging', HOST)
      .replace('ssh_port: 2201, http_port: 8001', `ssh_port: ${sshPort}, http_port: ${httpPort}`)
      // No hook: the agent's calls are what is counted.
      .replace(/ {2}hooks:\n {4}before_switch:\n(?: {6}.*\n)+/, ''),
  );
  // The measured runs restart nothing (a first activation needs the real restart: `real`).
  const real = project.config;
  const config = project.variant('no-restart', (t) => t.replace(/^ {2}restart: .*$/m, '  restart: "true"'));
  if (!readFileSync(config, 'utf8').includes('\n  restart: "true"\n'))
    throw new Error('restart not replaced');
  const build = async (cfg: string) =>
    (await project.cli('--config', cfg, 'build')).out.trim().split('\n').pop()!;
  const A = await build(config);
  const B = await build(project.variant('b', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')));
  await sandboxUp(
    docker,
    { dir, hosts: [{ name: HOST, sshPort: +sshPort, httpPort: +httpPort }] },
    () => undefined,
  );
  await run('bin/ckan-release', config, 'setup', 'staging');
  await run('bin/ckan-release', real, 'ship', 'staging', B);
  // SESSION_RUNS=N: each tool's sequence N times, the tools taking turns; the seconds are the median.
  const runs = Math.max(1, Number(process.env.SESSION_RUNS ?? 1));
  const got = new Map<string, { secs: number[]; channels: number; sudo: number }>();
  for (let i = 0; i < runs; i++)
    for (const [name, bin] of [
      ['before', baseline],
      ['after', 'bin/ckan-release'],
    ] as const) {
      await run(bin, config, 'status', 'staging'); // installs this tool's agent version
      const status = await run(bin, config, 'status', 'staging');
      await run(bin, real, 'ship', 'staging', B);
      // A is not on the host for either tool: its ship is a delta from B.
      await onHost(
        docker,
        HOST,
        `rm -rf /usr/lib/ckan/releases/${A} /usr/lib/ckan/.ckan-release/manifests/${A}.*`,
      );
      const full = await run(bin, config, 'ship', 'staging', A);
      const again = await run(bin, config, 'ship', 'staging', A);
      const rollback = await run(bin, config, 'rollback', 'staging', '--to', B);
      await run(bin, config, 'rollback', 'staging', '--to', A);
      for (const [op, r] of Object.entries({
        status,
        'ship (delta)': full,
        'ship, already there': again,
        rollback,
      })) {
        const key = `${op} | ${name}`;
        const g = got.get(key) ?? { secs: [], channels: r.channels, sudo: r.sudo };
        g.secs.push(r.secs);
        got.set(key, g);
      }
    }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  const rows = [...got].map(
    ([key, g]) =>
      `| ${key} | ${g.channels} | ${g.sudo} | ${median(g.secs).toFixed(2)} s${runs > 1 ? ` (${g.secs.map((x) => x.toFixed(2)).join(', ')})` : ''} |`,
  );
  process.stdout.write(
    `| operation (1 host) | tool | SSH channels | sudo runs | seconds |\n|---|---|---|---|---|\n${rows.sort().join('\n')}\n`,
  );
} finally {
  await sandboxDown(docker, { dir }, () => undefined).catch(() => undefined);
}
