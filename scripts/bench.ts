// npm run bench: the performance goals of issue 6, measured against baselines taken in the same run.
//
// A realistic release (the example project plus generated ballast wheels: about 250 MB in about 25,000
// files, in the base venv like CKAN's own requirements), sandbox hosts, and one table; every row is the
// median of BENCH_RUNS runs (default 3; builds BENCH_BUILD_RUNS, default 2). Writes
// bench/results/latest.json. Not part of `npm test`.
//
//   BENCH_PREFIX  sandbox host names are <prefix>1..8 (default "bench")
//   BENCH_KEEP=1  keep the sandbox hosts and the project directory afterwards
//   BENCH_SKIP_S3=1  skip the S3 rows (publish, fetch: direct; they start a radosgw container)
//   BENCH_ONLY_BUILDS=1  only the build rows (and the S3 row unless skipped): BENCH_ROWS=build,s3
//   BENCH_SKIP_DISK=1  skip the disk row (5 kept releases linked vs copied: three more builds, ten ships)
//   BENCH_ROWS=a,b  only these groups of rows (default all): build (cold and warm builds), s3, full,
//                 delta, fleet, direct, disk, rollback, fixed, restart. Without `build` the two artifacts are still
//                 built, once each, untimed; rollback and fixed ship what they need to the hosts first.
//   BENCH_BASELINE_CLI=PATH  the rows "fixed cost per host" and "rollback on 8 hosts" also run this
//                 other ckan-release (e.g. /work/main/bin/ckan-release, the code before a change) in the
//                 same run, as their baseline; both report SSH channels and sudo runs per host, counted
//                 by bench/count-channels.mjs the same way for either tool.
//
// Every CLI run is measured from inside its process too (bench/client-meter.mjs): the bytes it wrote
// to SSH connections and its CPU time.
import { execFileSync, spawn } from 'node:child_process';
import {
  accessSync,
  closeSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type Docker from 'dockerode';
import { execInContainer } from '../src/docker/run.js';
import { containerName, freePorts, sandboxDown } from '../src/sandbox/sandbox.js';
import { testDocker } from '../test/support/docker.js';
import { testProject, type TestProject } from '../test/support/project.js';
import { restartContrast } from '../bench/restart-contrast.js';
import { publishDelta } from '../bench/s3-publish.js';
import { s3Server, stopS3Server } from '../test/support/s3.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const BUILD_RUNS = Number(process.env.BENCH_BUILD_RUNS ?? 2);
const PREFIX = process.env.BENCH_PREFIX ?? 'bench';
const FLEET = Array.from({ length: 8 }, (_, i) => `${PREFIX}${i + 1}`);
const ONE = FLEET[0]!;
const ROOT = '/usr/lib/ckan';
const BALLAST = { packages: 20, files: 1000, version: 1 };
const BALLAST_DIR = path.resolve(
  'bench/.cache',
  `ballast-v${BALLAST.version}-${BALLAST.packages}x${BALLAST.files}`,
);
const FIXED_GIT_DATE = '2024-01-01T00:00:00Z';
const RESTART_SWITCHES = Number(process.env.BENCH_RESTART_SWITCHES ?? 10);
const CORES = os.cpus().length;
// BENCH_ONLY_BUILDS=1 is BENCH_ROWS=build,s3 (the build rows, and the S3 row unless skipped).
const ROWS = process.env.BENCH_ONLY_BUILDS
  ? ['build', 's3']
  : process.env.BENCH_ROWS?.split(',').map((x) => x.trim());
const runs = (group: string) => !ROWS || ROWS.includes(group);
const BASELINE_CLI = process.env.BENCH_BASELINE_CLI;
const COUNTER = path.resolve('bench/count-channels.mjs');
// The bench's own pack cache volume, emptied before each cold build (README "Builds").
const PACK_CACHE = 'ckan-release-bench-pack-cache';
process.env.CKAN_RELEASE_PACK_CACHE_VOLUME = PACK_CACHE;
// And its own base venv copies (the hard-link source of the clone), removed with the pack cache.
const BASE_COPIES = 'ckan-release-bench-base-copies';
process.env.CKAN_RELEASE_BASE_COPIES_VOLUME = BASE_COPIES;

const t0 = performance.now();
const log = (line: string) =>
  process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(0).padStart(4)}s] ${line}\n`);

interface Row {
  name: string;
  /** What limits the row, measured in the same runs (CPU seconds of the hosts and of this machine). */
  profile?: Record<string, number>;
  value: number;
  unit: string;
  baseline: number | null;
  ratio: number | null;
  goal: string;
  met: boolean;
  runs: number[];
  baseline_runs: number[] | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

let docker: Docker;
let project: TestProject;
let sandboxDir: string;

/** What the CLI process measured of itself (bench/client-meter.mjs). */
interface ClientMeter {
  ssh_bytes: number;
  by_port: Record<string, number>;
  cpu_s: number;
}

const METER = path.resolve('bench/client-meter.mjs');
let meterCount = 0;

type CliRun = { secs: number; out: string; err: string; client: ClientMeter };

/**
 * Runs the CLI as a user would (bin/ckan-release), returns seconds, output and what the process
 * measured of itself (SSH bytes written, CPU); fails on non-zero exit.
 */
function cli(config: string, ...argv: string[]): Promise<CliRun> {
  return cliOf('bin/ckan-release', config, ...argv);
}

/** cli() with another ckan-release (BENCH_BASELINE_CLI), counting its SSH channels (count-channels.mjs). */
function cliOf(bin: string, config: string, ...argv: string[]): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const meter = path.join(os.tmpdir(), `ckan-release-bench-meter-${process.pid}-${meterCount++}.json`);
    const start = performance.now();
    const child = spawn(
      process.execPath,
      ['--import', COUNTER, '--import', METER, bin, '--config', config, ...argv],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, CKAN_RELEASE_BENCH_METER: meter },
      },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('close', (code) => {
      const secs = (performance.now() - start) / 1000;
      let client: ClientMeter = { ssh_bytes: NaN, by_port: {}, cpu_s: NaN };
      try {
        client = JSON.parse(readFileSync(meter, 'utf8')) as ClientMeter;
        rmSync(meter);
      } catch {
        // no meter: the process died before its exit handler
      }
      if (code === 0) resolve({ secs, out, err, client });
      else reject(new Error(`ckan-release ${argv.join(' ')} exited ${code}:\n${err.slice(-3000)}`));
    });
  });
}

async function onHost(host: string, script: string): Promise<string> {
  const r = await execInContainer(docker, containerName(host), ['sh', '-c', script]);
  if (r.code !== 0) throw new Error(`${host}: ${script}: exit ${r.code}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/**
 * Where the bench puts the trees it is done with, deleted only when the bench ends. ext4 allocates a
 * new inode slowly while many were freed in the last minutes (perf on this machine: 37 % of all CPU
 * samples in ext4's recently_deleted() while `cp -a` copied a release seconds after an `rm -rf` of
 * others; the same copy took 1.5 s or 15 s). A host does not delete 29,000 files right before a
 * deploy, so neither does the bench, for the tool and the baseline alike (README "Benchmark").
 */
let trashCount = 0;
const trash = (dir: string) => `${dir}/${process.pid}-${trashCount++}`;

/** A host with no release at all (setup done). */
function emptyHost(host: string): Promise<string> {
  const t = trash('/var/tmp/bench-trash');
  return onHost(
    host,
    `mkdir -p ${t} && for d in ${ROOT}/releases/* ${ROOT}/releases/.partial-*; do if [ -e "$d" ]; then mv "$d" ${t}/; fi; done && ` +
      `rm -rf ${ROOT}/current ${ROOT}/.ckan-release/manifests ${ROOT}/.ckan-release/ledger.jsonl`,
  );
}

/**
 * Setting the trees aside is not enough on this machine: its root filesystem is ext4 without a journal,
 * where each new inode is looked for past every one freed in the last 1 to 6 minutes whose inode-table
 * block is still cached (recently_deleted()). The builds before the ship rows, or the end of an earlier
 * bench, delete hundreds of thousands of files: a plain `tar -xzf` of the release took 8-17 s then
 * against 2.3 s (perf: half of all samples in recently_deleted and its block lookups). So before each
 * timed ship that writes a whole release tree (the full ship, its tar baseline, the 8-host ship), the
 * bench writes back and drops the kernel's caches (root only), then reads back what the ship reads: the
 * archive, the CLI's code, and the hosts' programs (python, the agent's bytecode, sudo, tar, gzip, find).
 */
let cachesWarned = false;
async function settle(hosts: string[], archive: string): Promise<void> {
  try {
    accessSync('/proc/sys/vm/drop_caches', fsConstants.W_OK);
  } catch {
    if (!cachesWarned)
      log('cannot drop the kernel caches (not root): the ship rows may be slowed by recent deletes');
    cachesWarned = true;
    return;
  }
  execFileSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  execFileSync('cat', [archive], { stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync(process.execPath, [
    '--input-type=module',
    '-e',
    `await import(${JSON.stringify(path.resolve('dist/commands/ship.js'))}); await import(${JSON.stringify(path.resolve('dist/deploy/deploy.js'))});`,
  ]);
  await Promise.all(
    hosts.map((h) =>
      onHost(
        h,
        `python3 -c 'import json, hashlib, subprocess, tarfile, zlib, threading, socket, io, re, shutil' && ` +
          `cat ${ROOT}/.ckan-release/agent/*/__pycache__/* ${ROOT}/.ckan-release/agent/*.py >/dev/null 2>&1; ` +
          `sudo -V >/dev/null; tar --version >/dev/null; gzip --version >/dev/null; find --version >/dev/null`,
      ),
    ),
  );
}

/** Deletes what the bench set aside, once nothing is measured any more. */
function emptyTrash(hosts: string[]): Promise<string[]> {
  return Promise.all(hosts.map((h) => onHost(h, 'rm -rf /var/tmp/bench-trash /tmp/bench-trash')));
}

/**
 * CPU seconds used so far by the sandbox hosts' containers (their cgroups, from the engine) and by
 * every process of this machine (/proc/stat): with the hosts on this machine's cores, a row's
 * (host + client) CPU over the core count is a floor under its time, whatever the tool does.
 */
async function cpuNow(hosts: string[]): Promise<{ hosts: number; machine: number }> {
  const stats = await Promise.all(
    hosts.map(
      (h) =>
        docker.getContainer(containerName(h)).stats({ stream: false }) as Promise<{
          cpu_stats: { cpu_usage: { total_usage: number } };
        }>,
    ),
  );
  const ticks = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
  const busy = ticks.reduce((a, b) => a + b, 0) - ticks[3]! - (ticks[4] ?? 0);
  return {
    hosts: stats.reduce((n, x) => n + x.cpu_stats.cpu_usage.total_usage, 0) / 1e9,
    machine: busy / 100, // USER_HZ
  };
}

async function cpuDuring<T>(
  hosts: string[],
  fn: () => Promise<T>,
): Promise<{ result: T; hosts: number; machine: number }> {
  const a = await cpuNow(hosts);
  const result = await fn();
  const b = await cpuNow(hosts);
  return { result, hosts: b.hosts - a.hosts, machine: b.machine - a.machine };
}

function timeBaseline(archive: string): number {
  // The system OpenSSH client, as the issue says: ssh host 'tar -xzf - -C DIR' < release.tar.gz.
  const cfg = path.join(sandboxDir, 'ssh_config');
  const dir = '/tmp/bench-baseline';
  execFileSync('ssh', [
    '-F',
    cfg,
    ONE,
    `mkdir -p /tmp/bench-trash && if [ -e ${dir} ]; then mv ${dir} ${trash('/tmp/bench-trash')}; fi`,
  ]);
  const fd = openSync(archive, 'r'); // the shell's `< release.tar.gz`
  const start = performance.now();
  try {
    execFileSync('ssh', ['-F', cfg, ONE, `mkdir -p ${dir} && tar -xzf - -C ${dir}`], {
      stdio: [fd, 'ignore', 'inherit'],
    });
  } finally {
    closeSync(fd);
  }
  const secs = (performance.now() - start) / 1000;
  execFileSync('ssh', ['-F', cfg, ONE, `mv ${dir} ${trash('/tmp/bench-trash')}`]);
  return secs;
}

function git(repo: string, args: string[]): string {
  return execFileSync('git', ['-C', repo, ...args], {
    encoding: 'utf8',
    env: {
      ...process.env,
      GIT_AUTHOR_NAME: 'bench',
      GIT_AUTHOR_EMAIL: 'bench@ckan-release.invalid',
      GIT_COMMITTER_NAME: 'bench',
      GIT_COMMITTER_EMAIL: 'bench@ckan-release.invalid',
      GIT_AUTHOR_DATE: FIXED_GIT_DATE,
      GIT_COMMITTER_DATE: FIXED_GIT_DATE,
    },
  }).trim();
}

async function prepareProject(): Promise<{ config: string; warm: string[] }> {
  project = await testProject();
  sandboxDir = path.join(project.dir, '.ckan-release', 'sandbox');
  if (!existsSync(path.join(BALLAST_DIR, 'done'))) {
    log(`generating ballast wheels into ${BALLAST_DIR} (once)`);
    rmSync(BALLAST_DIR, { recursive: true, force: true });
    execFileSync('python3', [
      'bench/ballast.py',
      BALLAST_DIR,
      String(BALLAST.packages),
      String(BALLAST.files),
    ]);
    writeFileSync(path.join(BALLAST_DIR, 'done'), '');
  }
  rmSync(path.join(BALLAST_DIR, 'done'), { force: true });
  // CKAN's requirements name the ballast, so it lands in the base venv, as CKAN's own dependencies do.
  const ckan = project.fixtures.repos.ckan.path;
  git(ckan, ['checkout', '-q', '-B', 'bench', 'ckan-2.9.11']);
  const reqFile = path.join(ckan, 'requirements.txt');
  const req = readFileSync(reqFile, 'utf8');
  const ballastReqs = Array.from(
    { length: BALLAST.packages },
    (_, i) => `ballast${String(i).padStart(2, '0')}==1.0`,
  );
  writeFileSync(reqFile, req.trimEnd() + '\n' + ballastReqs.join('\n') + '\n');
  git(ckan, ['commit', '-q', '-am', 'bench: ballast requirements']);
  git(ckan, ['tag', '-f', 'bench-ballast']);
  writeFileSync(path.join(BALLAST_DIR, 'done'), '');

  const ports = await freePorts(2 * FLEET.length);
  const hostVars = (hosts: string[]) =>
    hosts
      .map((h) => {
        const i = FLEET.indexOf(h);
        return `      ${h}: { ssh_port: ${ports[2 * i]}, http_port: ${ports[2 * i + 1]} }`;
      })
      .join('\n');
  const envs = (name: string, hosts: string[]) =>
    [
      `  ${name}:`,
      `    hosts: [${hosts.join(', ')}]`,
      '    user: deploy',
      '    ssh_config: .ckan-release/sandbox/ssh_config',
      '    parallel: 8',
      '    host_vars:',
      hostVars(hosts),
      '    vars: { site_url: "http://bench.test", site_title: "Bench" }',
      '    secrets: secrets/staging.yml',
    ].join('\n');
  let text = readFileSync(project.config, 'utf8');
  text = text.replace('ref: ckan-2.9.11', 'ref: bench-ballast');
  text = text.replace(
    'find_links: [./.fixtures/wheelhouse]',
    `find_links: [./.fixtures/wheelhouse, ${BALLAST_DIR}]`,
  );
  text = text.replace('keep_releases: 3', 'keep_releases: 5');
  // No hooks: the bench measures shipping, not the example's `ckan db upgrade`.
  text = text.replace(/ {2}hooks:\n {4}before_switch:\n(?: {6}.*\n)+/, '');
  text =
    text.slice(0, text.indexOf('environments:')) +
    'environments:\n' +
    envs('one', [ONE]) +
    '\n' +
    envs('fleet', FLEET) +
    '\n';
  writeFileSync(project.config, text);
  // Warm builds alternate the showcase extension between two tags: one extension changed each time.
  const warm = [
    project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')),
    project.config,
  ];
  return { config: project.config, warm };
}

/** SSH exec channels and sudo runs per host of one CLI run (its bench-count line), the median host's. */
function countsOf(err: string): { channels: number; sudo: number } {
  const m = /^bench-count: (.*)$/m.exec(err);
  if (!m) throw new Error(`no bench-count line in the output:\n${err.slice(-2000)}`);
  const hosts = Object.values(JSON.parse(m[1]!) as Record<string, { channels: number; sudo: number }>);
  if (!hosts.length) return { channels: 0, sudo: 0 };
  return { channels: median(hosts.map((h) => h.channels)), sudo: median(hosts.map((h) => h.sudo)) };
}

function baseTagOf(err: string): { reused: boolean; tag: string } {
  const m = /base venv: (reused|building) (ckan-release-base:\S+)/.exec(err);
  if (!m) throw new Error(`no base venv line in the build output:\n${err.slice(-2000)}`);
  return { reused: m[1] === 'reused', tag: m[2]! };
}

/** The ship's own lines that time its phases (received / delta / staged), for the profile. */
function phases(err: string): string {
  return err
    .split('\n')
    .filter((l) => /received|delta:|staged|healthy/.test(l))
    .join(' | ');
}

function stepTimes(err: string): string {
  // "[   0.4s] clone" lines: the time of each step, for the profile of a slow build.
  const steps = [...err.matchAll(/^\[\s*([\d.]+)s\] (\S.*)$/gm)].map((m) => [Number(m[1]), m[2]!] as const);
  return steps.map(([t, name], i) => `${name} ${((steps[i + 1]?.[0] ?? t) - t).toFixed(1)}s`).join(', ');
}

/**
 * Full ships of A to the 8 empty hosts with `deploy.fetch: direct` from a radosgw on this machine
 * (A published there first): the bytes the client wrote to SSH, its CPU and the wall time per run.
 */
async function directFleet(
  config: string,
  a: string,
  archive: string,
): Promise<{ runs: { ssh_bytes: number; cpu_s: number; secs: number }[] }> {
  const s3 = await s3Server();
  try {
    Object.assign(process.env, s3.env);
    const bucket = await s3.bucket(`bench-direct-${process.pid}-${Date.now()}`);
    const variant = path.join(path.dirname(config), 'bench-direct.yml');
    writeFileSync(
      variant,
      readFileSync(config, 'utf8')
        .replace(/^project: (.*)$/m, `project: $1\nstore: s3://${bucket}/bench`)
        .replace(/^deploy:\n/m, 'deploy:\n  fetch: direct\n'),
    );
    await cli(variant, 'artifacts', 'publish', a);
    const runs: { ssh_bytes: number; cpu_s: number; secs: number }[] = [];
    for (let i = 0; i < RUNS; i++) {
      // Empty hosts and empty chunk caches: every chunk is downloaded.
      await Promise.all(
        FLEET.map(async (h) => {
          await emptyHost(h);
          await onHost(
            h,
            `mkdir -p /var/tmp/bench-trash && if [ -e ${ROOT}/.ckan-release/chunks ]; then mv ${ROOT}/.ckan-release/chunks ${trash('/var/tmp/bench-trash')}; fi`,
          );
        }),
      );
      const r = await cli(variant, 'ship', 'fleet', a);
      const fetched = r.err.split('\n').filter((l) => /: fetched from s3:/.test(l));
      if (fetched.length !== FLEET.length)
        throw new Error(`not every host fetched from the store:\n${r.err.slice(-3000)}`);
      runs.push({ ssh_bytes: r.client.ssh_bytes, cpu_s: r.client.cpu_s, secs: r.secs });
      log(
        `fleet ship with fetch: direct ${r.secs.toFixed(1)} s: client wrote ${r.client.ssh_bytes} bytes to SSH (artifact ${statSync(archive).size}), client CPU ${r.client.cpu_s.toFixed(2)} s; ${fetched[0]}`,
      );
    }
    return { runs };
  } finally {
    await stopS3Server();
  }
}

async function main(): Promise<void> {
  docker = await testDocker();
  log(`runs: ${RUNS} (builds ${BUILD_RUNS}); hosts ${FLEET.join(', ')}`);
  const { config, warm } = await prepareProject();
  const rows: Row[] = [];
  const row = (
    name: string,
    runs: number[],
    unit: string,
    baselineRuns: number[] | null,
    goal: string,
    met: (value: number, ratio: number | null) => boolean,
    profile?: Record<string, number>,
  ) => {
    const value = median(runs);
    const baseline = baselineRuns ? median(baselineRuns) : null;
    const ratio = baseline ? value / baseline : null;
    const r: Row = {
      name,
      value,
      unit,
      baseline,
      ratio,
      goal,
      met: met(value, ratio),
      runs,
      baseline_runs: baselineRuns,
      ...(profile ? { profile } : {}),
    };
    rows.push(r);
    log(`${name}: ${value.toFixed(3)} ${unit}${ratio !== null ? ` (ratio ${ratio.toFixed(3)})` : ''}`);
  };

  try {
    // ---- builds: cold (no base venv image, no git mirrors) vs warm (one extension changed).
    const cold: number[] = [];
    let A = '';
    let baseTag: string | undefined;
    for (let i = 0; i < (runs('build') ? BUILD_RUNS : 0); i++) {
      const coldStart = () => {
        if (baseTag) execFileSync('docker', ['rmi', baseTag], { stdio: 'ignore' });
        rmSync(process.env.CKAN_RELEASE_CACHE!, { recursive: true, force: true });
        execFileSync('docker', ['volume', 'rm', '-f', PACK_CACHE, BASE_COPIES], { stdio: 'ignore' });
        // No local artifact either: a build takes the archive members it lacks from the newest ones.
        rmSync(path.join(project.dir, '.ckan-release', 'artifacts'), { recursive: true, force: true });
      };
      coldStart();
      let b = await cli(config, 'build');
      const base = baseTagOf(b.err);
      baseTag = base.tag;
      if (base.reused) {
        // Left by an earlier bench run: not a cold build. Remove it and build again.
        coldStart();
        b = await cli(config, 'build');
      }
      cold.push(b.secs);
      A = b.out.trim().split('\n').pop()!;
      log(`cold build ${b.secs.toFixed(1)} s: ${stepTimes(b.err)}`);
    }
    if (!runs('build')) {
      // The artifacts only, untimed (a build that reuses what earlier runs left is fine here).
      A = (await cli(config, 'build')).out.trim().split('\n').pop()!;
      log(`built A ${A} (untimed: BENCH_ROWS has no build)`);
    }
    const warmRuns: number[] = [];
    let B = '';
    if (!runs('build')) {
      B = (await cli(warm[0]!, 'build')).out.trim().split('\n').pop()!;
      log(`built B ${B} (untimed)`);
    }
    for (let i = 0; i < (runs('build') ? BUILD_RUNS : 0); i++) {
      const b = await cli(warm[i % 2]!, 'build');
      if (!baseTagOf(b.err).reused) throw new Error('a warm build did not reuse the base venv');
      warmRuns.push(b.secs);
      if (i === 0) B = b.out.trim().split('\n').pop()!;
      log(`warm build ${b.secs.toFixed(1)} s: ${stepTimes(b.err)}`);
    }
    const store = path.join(project.dir, '.ckan-release', 'artifacts');
    const manifestA = JSON.parse(readFileSync(path.join(store, A, 'manifest.json'), 'utf8')) as {
      files: { size: number }[];
      archive: { bytes: number };
    };
    const archiveA = path.join(store, A, 'release.tar.gz');
    const archiveB = path.join(store, B, 'release.tar.gz');
    const releaseBytes = manifestA.files.reduce((n, f) => n + f.size, 0);
    log(
      `release A ${A}: ${manifestA.files.length} entries, ${(releaseBytes / 1e6).toFixed(0)} MB, archive ${(statSync(archiveA).size / 1e6).toFixed(1)} MB; B ${B}`,
    );

    // ---- publish of a one-extension change to an S3 store (radosgw): bytes uploaded / full artifact
    if (!process.env.BENCH_SKIP_S3 && runs('s3')) {
      const p = await publishDelta(config, A, B);
      log(`publish ${B} after ${A}: ${p.uploaded} of ${p.archive} bytes uploaded (A alone: ${p.full})`);
      row(
        'publish of a one-extension change: bytes uploaded / full artifact',
        [(100 * p.uploaded) / p.archive],
        '%',
        null,
        '<= 5 %',
        (v) => v <= 5,
        { uploaded_bytes: p.uploaded, archive_bytes: p.archive },
      );
    }

    // ---- hosts (none when only build or s3 rows run)
    const hostsUp = ['full', 'delta', 'fleet', 'direct', 'disk', 'rollback', 'fixed'].some(runs);
    if (hostsUp) {
      await cli(config, 'sandbox', 'up');
      await cli(config, 'setup', 'fleet');
    }

    // ---- full ship to one host vs ssh + tar -xzf
    const full: number[] = [];
    const baseline: number[] = [];
    const fullCpu: { hosts: number; machine: number }[] = [];
    const fullClientCpu: number[] = [];
    const baseCpu: { hosts: number; machine: number }[] = [];
    for (let i = 0; i < (runs('full') || runs('delta') ? RUNS : 0); i++) {
      await settle([ONE], archiveA);
      const b = await cpuDuring([ONE], async () => timeBaseline(archiveA));
      baseline.push(b.result);
      baseCpu.push(b);
      await emptyHost(ONE);
      await settle([ONE], archiveA);
      const r = await cpuDuring([ONE], () => cli(config, 'ship', 'one', A));
      full.push(r.result.secs);
      fullCpu.push(r);
      fullClientCpu.push(r.result.client.cpu_s);
      log(
        `full ship ${r.result.secs.toFixed(1)} s (host CPU ${r.hosts.toFixed(1)} s, machine ${r.machine.toFixed(1)} s; baseline ${b.result.toFixed(1)} s, host CPU ${b.hosts.toFixed(1)} s, machine ${b.machine.toFixed(1)} s): ${phases(r.result.err)}`,
      );
    }
    if (runs('full'))
      row(
        'full ship to one host vs ssh+tar -xzf',
        full,
        's',
        baseline,
        'ratio <= 1.15',
        (_, r) => r !== null && r <= 1.15,
        {
          host_cpu_s: median(fullCpu.map((c) => c.hosts)),
          machine_cpu_s: median(fullCpu.map((c) => c.machine)),
          baseline_host_cpu_s: median(baseCpu.map((c) => c.hosts)),
          baseline_machine_cpu_s: median(baseCpu.map((c) => c.machine)),
        },
      );

    // The host's CPU for the full ship (agent, sshd, sudo, python starts: the container's cgroup) vs
    // for ssh + tar -xzf, from the same runs.
    if (runs('full'))
      row(
        "host CPU per full ship vs tar -xzf's host CPU",
        fullCpu.map((c) => c.hosts),
        's',
        baseCpu.map((c) => c.hosts),
        'ratio <= 1.3',
        (_, r) => r !== null && r <= 1.3,
      );

    // ---- delta ship (B after A) vs full ship
    const deltaSecs: number[] = [];
    const deltaBytes: number[] = [];
    for (let i = 0; i < (runs('delta') ? RUNS : 0); i++) {
      // Only written back: the delta creates few inodes (its links are not new ones), and dropping the
      // caches would make it read the metadata of the release it links from cold, which a host serving
      // that release has warm (the delta took 5.45 s so, 4.58 s after a sync only, 30 minutes apart).
      execFileSync('sync');
      const r = await cli(config, 'ship', 'one', B);
      deltaSecs.push(r.secs);
      log(`delta ship ${r.secs.toFixed(1)} s: ${phases(r.err)}`);
      const m = /delta: sent \d+ files \((\d+) bytes compressed/.exec(r.err);
      if (!m) throw new Error(`the ship of B was not a delta:\n${r.err}`);
      deltaBytes.push(Number(m[1]));
      await onHost(
        ONE,
        `ln -s releases/${A} ${ROOT}/current.bench && mv -T ${ROOT}/current.bench ${ROOT}/current && ` +
          `mkdir -p /var/tmp/bench-trash && mv ${ROOT}/releases/${B} ${trash('/var/tmp/bench-trash')} && rm -f ${ROOT}/.ckan-release/manifests/${B}.*`,
      );
    }
    const fullBytes = statSync(archiveB).size;
    if (runs('delta')) {
      row(
        'delta ship (one extension changed) vs full: bytes sent',
        deltaBytes,
        'B',
        deltaBytes.map(() => fullBytes),
        'ratio <= 0.02',
        (_, r) => r !== null && r <= 0.02,
      );
      row(
        'delta ship (one extension changed) vs full: time',
        deltaSecs,
        's',
        full,
        'ratio <= 0.15',
        (_, r) => r !== null && r <= 0.15,
      );
    }

    // ---- 8 hosts vs 1 host (full ships)
    const fleet: number[] = [];
    const fleetCpu: { hosts: number; machine: number }[] = [];
    const fleetClientCpu: number[] = [];
    for (let i = 0; i < (runs('fleet') ? RUNS : 0); i++) {
      await Promise.all(FLEET.map((h) => emptyHost(h)));
      await settle(FLEET, archiveA);
      const r = await cpuDuring(FLEET, () => cli(config, 'ship', 'fleet', A));
      fleet.push(r.result.secs);
      fleetCpu.push(r);
      fleetClientCpu.push(r.result.client.cpu_s);
      log(
        `fleet ship ${r.result.secs.toFixed(1)} s: hosts' CPU ${r.hosts.toFixed(1)} s, machine ${r.machine.toFixed(1)} s (${CORES} cores: at least ${(r.machine / CORES).toFixed(1)} s), client CPU ${r.result.client.cpu_s.toFixed(2)} s`,
      );
    }
    if (runs('fleet'))
      row('ship to 8 hosts vs 1 host', fleet, 's', full, 'ratio <= 1.5', (_, r) => r !== null && r <= 1.5, {
        host_cpu_s: median(fleetCpu.map((c) => c.hosts)),
        machine_cpu_s: median(fleetCpu.map((c) => c.machine)),
        cores: CORES,
      });

    if (runs('fleet') && runs('full')) {
      // What each host more costs this machine's CPU: the ship's own process, 8 hosts against 1 (full
      // ships of the same artifact to empty hosts, each run's pair from the same round of the bench).
      row(
        "the client's CPU per extra host (full ship, 8 hosts vs 1)",
        fleetClientCpu.map((c, i) => (c - fullClientCpu[i]!) / (FLEET.length - 1)),
        's',
        null,
        '<= 0.3 s',
        (v) => v <= 0.3,
        { client_cpu_1_host_s: median(fullClientCpu), client_cpu_8_hosts_s: median(fleetClientCpu) },
      );
      // The hosts share this machine's cores: everything every process did in the ship (the hosts'
      // containers, the client, anything else running) over the core count is a floor under its time.
      row(
        'ship to 8 hosts: wall time vs the CPU floor (machine CPU / cores)',
        fleet,
        's',
        fleetCpu.map((c) => c.machine / CORES),
        'ratio <= 1.1',
        (_, r) => r !== null && r <= 1.1,
        { machine_cpu_s: median(fleetCpu.map((c) => c.machine)), cores: CORES },
      );
    }

    // ---- 8 hosts with deploy.fetch: direct: the hosts download A from the S3 store themselves
    if (runs('direct') && !process.env.BENCH_SKIP_S3) {
      const d = await directFleet(config, A, archiveA);
      row(
        'ship to 8 hosts with fetch: direct: client bytes / artifact bytes',
        d.runs.map((r) => (100 * r.ssh_bytes) / manifestA.archive.bytes),
        '%',
        null,
        '<= 1 %',
        (v) => v <= 1,
        {
          client_ssh_bytes: median(d.runs.map((r) => r.ssh_bytes)),
          artifact_bytes: manifestA.archive.bytes,
          wall_s: median(d.runs.map((r) => r.secs)),
          ssh_fleet_wall_s: median(fleet),
          client_cpu_s: median(d.runs.map((r) => r.cpu_s)),
        },
      );
    }

    if (runs('disk') && !process.env.BENCH_SKIP_DISK) {
      // ---- disk used by 5 kept releases on one host, linked (deploy.link: hardlink) vs copied: A, B and
      // three more, each one extension changed from the one before (a pip flag that installs nothing
      // else makes each its own release).
      const ids = [A, B];
      for (const [i, flag] of ['--no-color', '--no-color', '--disable-pip-version-check'].entries()) {
        const v = project.variant(`disk-${i}`, (t) =>
          (i % 2 ? t.replace('ref: v1.1.0', 'ref: v1.0.0') : t).replace(
            '    find_links:',
            `    extra_args: [${flag}]\n    find_links:`,
          ),
        );
        ids.push((await cli(v, 'build')).out.trim().split('\n').pop()!);
      }
      const copy = project.variant('copy', (t) =>
        t.replace('keep_releases: 5', 'keep_releases: 5\n  link: copy'),
      );
      const kib: Record<string, number> = {};
      for (const [how, cfg] of [
        ['linked', config],
        ['copied', copy],
      ] as const) {
        await emptyHost(ONE);
        for (const id of ids) await cli(cfg, 'ship', 'one', id);
        const du = await onHost(ONE, `du -sk ${ROOT}/releases | cut -f1; ls ${ROOT}/releases | wc -l`);
        const [k, n] = du.trim().split('\n').map(Number);
        if (n !== 5) throw new Error(`${ONE} keeps ${n} releases, not 5`);
        kib[how] = k!;
        log(`5 kept releases ${how}: ${k} KiB`);
      }
      row(
        'disk used by 5 kept releases, linked vs 5 copies',
        [kib.linked! / 1024],
        'MiB',
        [kib.copied! / 1024],
        'ratio <= 0.3',
        (_, r) => r !== null && r <= 0.3,
      );
    }

    // ---- rollback on 8 hosts, and the fixed cost of a ship to one host, without the restart command
    const noRestart = project.variant('no-restart', (t) =>
      t.replace(/^ {2}restart: .*$/m, '  restart: "true"'),
    );
    // (The first "restart: " of the file is in a comment: the deploy key is matched by its indentation.)
    if (!readFileSync(noRestart, 'utf8').includes('\n  restart: "true"\n'))
      throw new Error(`${noRestart}: deploy.restart was not replaced`);
    const counted = async (bin: string, hosts: string[], ...argv: string[]) => {
      // Nothing the rows before left to write back is written during the run (these write no tree).
      execFileSync('sync');
      const r = await cpuDuring(hosts, () => cliOf(bin, noRestart, ...argv));
      return { ...r, secs: r.result.secs, counts: countsOf(r.result.err) };
    };
    const countProfile = (
      runs_: { counts: { channels: number; sudo: number } }[],
      base: { counts: { channels: number; sudo: number } }[],
    ) => ({
      ssh_channels_per_host: median(runs_.map((r) => r.counts.channels)),
      sudo_runs_per_host: median(runs_.map((r) => r.counts.sudo)),
      ...(base.length
        ? {
            baseline_ssh_channels_per_host: median(base.map((r) => r.counts.channels)),
            baseline_sudo_runs_per_host: median(base.map((r) => r.counts.sudo)),
          }
        : {}),
    });
    if (runs('rollback')) {
      // The fleet runs B with A kept (the fleet row left A there, or this ships both).
      if (!runs('fleet')) await cli(config, 'ship', 'fleet', A);
      await cli(config, 'ship', 'fleet', B);
      // Each tool once untimed first: the baseline installs its own agent version on the hosts.
      await counted('bin/ckan-release', FLEET, 'rollback', 'fleet', '--to', A);
      if (BASELINE_CLI) await counted(BASELINE_CLI, FLEET, 'rollback', 'fleet', '--to', B);
      else await counted('bin/ckan-release', FLEET, 'rollback', 'fleet', '--to', B);
      const after: Awaited<ReturnType<typeof counted>>[] = [];
      const before: Awaited<ReturnType<typeof counted>>[] = [];
      for (let i = 0; i < RUNS; i++) {
        const r = await counted('bin/ckan-release', FLEET, 'rollback', 'fleet', '--to', A);
        after.push(r);
        const b = BASELINE_CLI
          ? await counted(BASELINE_CLI, FLEET, 'rollback', 'fleet', '--to', B)
          : await counted('bin/ckan-release', FLEET, 'rollback', 'fleet', '--to', B);
        if (BASELINE_CLI) before.push(b);
        log(
          `rollback ${r.secs.toFixed(2)} s (${r.counts.channels} SSH channels, ${r.counts.sudo} sudo per host): hosts' CPU ${r.hosts.toFixed(1)} s, machine ${r.machine.toFixed(1)} s` +
            (BASELINE_CLI
              ? `; baseline ${b.secs.toFixed(2)} s (${b.counts.channels} channels, ${b.counts.sudo} sudo per host)`
              : ''),
        );
      }
      row(
        'rollback on 8 hosts (restart excluded)',
        after.map((r) => r.secs),
        's',
        BASELINE_CLI ? before.map((r) => r.secs) : null,
        '<= 1.5 s',
        (v) => v <= 1.5,
        {
          host_cpu_s: median(after.map((c) => c.hosts)),
          machine_cpu_s: median(after.map((c) => c.machine)),
          cores: CORES,
          ...countProfile(after, before),
        },
      );
    }

    if (runs('fixed')) {
      // The ship of the release the host already runs: nothing to send, everything else a ship does
      // (facts, lock, verify by its tree seal, config, switch, health, ledger, prune, unlock).
      // Each tool's runs together, each after one untimed run: the two may keep tree seals of different
      // versions (this one's lists find's output as it comes, one before 4e8253c sorted it), and
      // taking turns on the same release each would find the other's seal and check it file by file.
      await cli(config, 'ship', 'one', A);
      const after: Awaited<ReturnType<typeof counted>>[] = [];
      const before: Awaited<ReturnType<typeof counted>>[] = [];
      for (const [bin, into] of [
        ['bin/ckan-release', after],
        ...(BASELINE_CLI ? [[BASELINE_CLI, before] as const] : []),
      ] as const) {
        await counted(bin, [ONE], 'ship', 'one', A);
        for (let i = 0; i < RUNS; i++) {
          const r = await counted(bin, [ONE], 'ship', 'one', A);
          into.push(r);
          log(
            `fixed cost${bin === BASELINE_CLI ? ' (baseline)' : ''} ${r.secs.toFixed(2)} s (${r.counts.channels} SSH channels, ${r.counts.sudo} sudo)`,
          );
        }
      }
      row(
        'fixed cost per host: ship of a release already on the host (restart excluded)',
        after.map((r) => r.secs),
        's',
        BASELINE_CLI ? before.map((r) => r.secs) : null,
        '<= 0.5 s',
        (v) => v <= 0.5,
        {
          host_cpu_s: median(after.map((c) => c.hosts)),
          machine_cpu_s: median(after.map((c) => c.machine)),
          ...countProfile(after, before),
        },
      );
    }

    if (runs('build'))
      row(
        'warm rebuild (one extension changed) vs cold build',
        warmRuns,
        's',
        cold,
        'ratio <= 0.15',
        (_, r) => r !== null && r <= 0.15,
      );

    if (hostsUp) await emptyTrash(FLEET);

    if (!process.env.BENCH_SKIP_RESTART && runs('restart')) {
      // The restart recipe's contrast (README "Web servers"): a small release, one Apache host.
      const c = await restartContrast(RESTART_SWITCHES, log);
      log(
        `restart contrast: plain graceful ${c.plain.failures} of ${c.plain.requests} failed; apache-graceful ${c.recipe.failures} of ${c.recipe.requests}`,
      );
      row(
        `failed requests over ${c.switches} switches under load: apache-graceful vs plain apachectl graceful`,
        [c.recipe.failures],
        'requests',
        [c.plain.failures],
        '0 failed',
        (v) => v === 0,
      );
    }

    const result = {
      date: new Date().toISOString(),
      machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.type()} ${os.release()}, Node ${process.version}`,
      release: {
        entries: manifestA.files.length,
        bytes: releaseBytes,
        archive_bytes: manifestA.archive.bytes,
      },
      rows,
    };
    mkdirSync('bench/results', { recursive: true });
    writeFileSync('bench/results/latest.json', JSON.stringify(result, null, 2) + '\n');
    const fmt = (v: number | null, unit = '') =>
      v === null
        ? ''
        : unit === 'B'
          ? `${(v / 1e6).toFixed(2)} MB`
          : `${v.toFixed(2)}${unit ? ' ' + unit : ''}`;
    const lines = [
      `| row | value | baseline | ratio | goal | met |`,
      `|---|---|---|---|---|---|`,
      ...rows.map(
        (r) =>
          `| ${r.name} | ${fmt(r.value, r.unit)} | ${fmt(r.baseline, r.unit)} | ${r.ratio === null ? '' : r.ratio.toFixed(3)} | ${r.goal} | ${r.met ? 'yes' : 'no'} |`,
      ),
    ];
    process.stdout.write(
      `\n${result.date}, ${result.machine}\nrelease: ${result.release.entries} entries, ${(releaseBytes / 1e6).toFixed(0)} MB, archive ${(result.release.archive_bytes / 1e6).toFixed(1)} MB; medians of ${RUNS} runs (builds ${BUILD_RUNS})\n\n${lines.join('\n')}\n`,
    );
    log(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s; bench/results/latest.json written`);
  } finally {
    if (!process.env.BENCH_KEEP) {
      await sandboxDown(docker, { dir: sandboxDir }, () => undefined).catch(() => undefined);
      rmSync(project.dir, { recursive: true, force: true });
      execFileSync('docker', ['volume', 'rm', '-f', PACK_CACHE, BASE_COPIES], { stdio: 'ignore' });
    }
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
