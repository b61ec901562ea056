// Delta ships against real sandbox hosts: a release assembled from a host's earlier release plus the
// files it lacked is identical, entry for entry, to the same release shipped in full; a base file
// tampered with on the host is detected and never used; a delta that fails leaves the host as it was.
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost, served } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
const HOSTS = ['p6-d0', 'p6-d1', 'p6-d2'] as const;
type Host = (typeof HOSTS)[number];

let docker: Docker;
let project: TestProject;
const http: Record<Host, number> = { 'p6-d0': 0, 'p6-d1': 0, 'p6-d2': 0 };
let A: string; // showcase 1.1.0
let B: string; // showcase 1.0.0: one extension changed

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return project.cli('--config', project.config, ...argv);
}

async function ok(...argv: string[]): Promise<{ out: string; err: string }> {
  const r = await cli(...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r;
}

/**
 * Every entry of releases/<id> as the host sees it: path, type, mode, owner, mtime, hard link count,
 * link target, and every regular file's sha256. The rendered config differs per host (its port): only
 * its mode and owner are compared.
 */
async function tree(host: Host, id: string): Promise<string> {
  const r = await onHost(
    docker,
    host,
    `cd ${ROOT}/releases/${id} && find . -printf '%p %y %m %U:%G %T@ %n %l\\n' | LC_ALL=C sort && ` +
      `find . -type f ! -path ./ckan.ini -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`,
  );
  expect(r.code, r.out.slice(-500)).toBe(0);
  // The release directory itself, its config and the shared link are made at staging time, and a
  // symlink's own mtime cannot be set from Python 2.7: their mtimes are the time of the ship.
  return r.out
    .replace(/^(\.|\.\/ckan\.ini|\.\/storage) (\S+ \S+ \S+) \S+ /gm, '$1 $2 - ')
    .replace(/^(\S+ l \S+ \S+) \S+ /gm, '$1 - ');
}

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  const ports = await freePorts(6);
  let text = readFileSync(project.config, 'utf8');
  const names: Record<string, Host> = {
    'sandbox-staging': 'p6-d0',
    'sandbox-web1': 'p6-d1',
    'sandbox-web2': 'p6-d2',
  };
  HOSTS.forEach((h, i) => (http[h] = ports[2 * i + 1]!));
  [
    [2201, 8001],
    [2202, 8002],
    [2203, 8003],
  ].forEach(([ssh, web], i) => {
    text = text.replace(
      `ssh_port: ${ssh}, http_port: ${web}`,
      `ssh_port: ${ports[2 * i]}, http_port: ${ports[2 * i + 1]}`,
    );
  });
  for (const [from, to] of Object.entries(names)) text = text.replaceAll(from, to);
  // This file proves the copying delta (deploy.link: copy): copies, and the refusal of an edited
  // release. The linked default, and the heal that replaces that refusal, are linked.test.ts's.
  text = text.replace('  keep_releases: 3\n', '  keep_releases: 3\n  link: copy\n');
  if (!text.includes('\n  link: copy\n')) throw new Error('delta.test: deploy.keep_releases not found');
  writeFileSync(project.config, text);

  A = (await ok('build')).out.trim();
  B = (
    await project.cli(
      '--config',
      project.variant('showcase-1.0.0', (t) => t.replace('ref: v1.1.0', 'ref: v1.0.0')),
      'build',
    )
  ).out.trim();
  expect(B).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
  await ok('sandbox', 'up');
  await ok('setup', 'staging');
  await ok('setup', 'production');
}, 900_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('delta ship', () => {
  it('the first ship to a host sends the full archive', async () => {
    const r = await ok('ship', 'staging', A);
    expect(r.err).toMatch(/p6-d0: received [\d.]+ MB in [\d.]+ s, every file checked against the manifest/);
    expect(r.err).not.toMatch(/delta/);
  });

  it('the next sends only the files the host lacks, and the release serves', async () => {
    const r = await ok('ship', 'staging', B);
    const m =
      /p6-d0: delta: sent (\d+) files \((\d+) bytes compressed, [\d.]+ MB\) in [\d.]+ s, (\d+) files \(([\d.]+) MB\) copied from (\S+)/.exec(
        r.err,
      );
    expect(m, r.err).not.toBeNull();
    const [, sent, , copied] = m!;
    expect(Number(sent)).toBeGreaterThan(0);
    // Far more reused than sent: only the showcase extension changed.
    expect(Number(copied)).toBeGreaterThan(10 * Number(sent));
    expect(m![5]).toBe(A);
    // A was sealed when it was staged: it is copied whole (cp -a), then trimmed to B's manifest.
    expect(r.err).toContain(`copied from ${A} (whole, proved unchanged by its tree seal)`);
    expect(await currentOf(docker, 'p6-d0')).toBe(`${ROOT}/releases/${B}`);
    const s = await served(http['p6-d0']);
    expect([s.status, s.showcase, s.ckanPath]).toEqual([200, '1.0.0', `${ROOT}/releases/${B}/src/ckan/ckan`]);
    // The delta's bookkeeping is gone; the host keeps the manifests for the next delta, and each
    // release's seals (README "Performance").
    const meta = await onHost(
      docker,
      'p6-d0',
      `ls -A ${ROOT}/.ckan-release/tmp ${ROOT}/.ckan-release/manifests`,
    );
    expect(meta.out).toBe(
      `${ROOT}/.ckan-release/manifests:\n${[A, B].flatMap((id) => ['json', 'seal', 'tree'].map((x) => `${id}.${x}`)).join('\n')}\n\n${ROOT}/.ckan-release/tmp:\n`,
    );
  });

  it('yields a release identical to a full ship: every path, type, mode, owner, mtime, link and sha256', async () => {
    // p6-d1 has nothing: B arrives in full there.
    const r = await ok('ship', 'production', B);
    expect(r.err).toMatch(/p6-d1: received [\d.]+ MB/);
    const [delta, full] = [await tree('p6-d0', B), await tree('p6-d1', B)];
    expect(delta.split('\n').length).toBeGreaterThan(1000);
    expect(delta).toContain(' l 777 ');
    // Copies, not hard links: every file has one link.
    expect(delta).not.toMatch(/^\S+ f \d+ \S+ \S+ [2-9]\d* /m);
    expect(delta).toBe(full);
  });

  it('a tampered file in the base release is detected, not used, and sent instead', async () => {
    // p6-d1 and p6-d2 run B (shipped in full). On p6-d1, change a CKAN core file that A has unchanged
    // (same content, same size: only the hash can tell), and replace another by a symlink.
    const victim = 'src/ckan/ckan/__init__.py';
    const linked = 'src/ckan/setup.py';
    const before = await onHost(docker, 'p6-d1', `cd ${ROOT}/releases/${B} && sha256sum ${victim} ${linked}`);
    await onHost(
      docker,
      'p6-d1',
      `cd ${ROOT}/releases/${B} && sed -i 's/a/b/' ${victim} && touch -d @946684800 ${victim} && ` +
        `mv ${linked} ${linked}.real && ln -s /etc/shadow ${linked}`,
    );
    expect((await onHost(docker, 'p6-d1', `cd ${ROOT}/releases/${B} && sha256sum ${victim}`)).out).not.toBe(
      before.out.split('\n')[0],
    );
    const r = await ok('ship', 'production', A);
    expect(r.err).toMatch(
      new RegExp(
        `p6-d1: 2 files of earlier releases differ from their manifests and were not reused \\(e\\.g\\. .*${B}/${linked.replace(/\./g, '\\.')}`,
      ),
    );
    expect(r.err).toContain(`${B}/${victim}`);
    expect(r.err).toMatch(/p6-d1: delta: sent \d+ files/);
    // The tampered base is copied file by file (its tree seal no longer holds), the other host's whole.
    expect(r.err).toMatch(new RegExp(`p6-d1: delta: .* copied from ${B}(?! \\(whole)`));
    expect(r.err).toMatch(
      new RegExp(`p6-d2: delta: .* copied from ${B} \\(whole, proved unchanged by its tree seal\\)`),
    );
    expect(r.err).not.toMatch(/p6-d2: \d+ files of earlier releases differ/);
    // A on p6-d1 (from the tampered base) is identical to A on p6-d0 (shipped in full at first).
    expect(await tree('p6-d1', A)).toBe(await tree('p6-d0', A));
    expect(await tree('p6-d2', A)).toBe(await tree('p6-d0', A));
    for (const h of ['p6-d1', 'p6-d2'] as const) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
      expect((await served(http[h])).showcase).toBe('1.1.0');
    }
  });

  it('a release already there is proved unchanged by its seals; an in-place edit that keeps inode, size and mtime is still found', async () => {
    // p6-d0 runs B and holds A (shipped in full by the first test). Edit one byte of an A file in
    // place, then put its mtime back: only its ctime (which no process can set) tells.
    const file = `${ROOT}/releases/${A}/src/ckan/ckan/__init__.py`;
    const st = `stat -c '%i %s %Y' ${file}`;
    const before = (await onHost(docker, 'p6-d0', st)).out;
    const original = (await onHost(docker, 'p6-d0', `od -An -c -j 3 -N 1 ${file}`)).out.trim();
    await onHost(
      docker,
      'p6-d0',
      `printf X | dd of=${file} bs=1 seek=3 conv=notrunc status=none && touch -d @946684800 ${file}`,
    );
    expect((await onHost(docker, 'p6-d0', st)).out).toBe(before);
    const refused = await cli('rollback', 'staging', '--to', A);
    expect(refused.code, refused.err).toBe(1);
    expect(refused.err).toContain(
      `p6-d0: releases/${A} differs from its manifest, refusing to switch to it: src/ckan/ckan/__init__.py: sha256 differs from the manifest`,
    );
    expect(await currentOf(docker, 'p6-d0')).toBe(`${ROOT}/releases/${B}`);

    // The right byte back (same inode again): the file no longer matches its seal, so it is hashed,
    // found right, and the rollback goes ahead; only that file was read.
    await onHost(
      docker,
      'p6-d0',
      `printf '%s' '${original}' | dd of=${file} bs=1 seek=3 conv=notrunc status=none && touch -d @946684800 ${file}`,
    );
    const back = await ok('rollback', 'staging', '--to', A);
    expect(back.err).toContain(
      `p6-d0: releases/${A} is already there (healthy), verified against the manifest (1 files hashed, the others unchanged since sealed); not sent again`,
    );
    expect(await currentOf(docker, 'p6-d0')).toBe(`${ROOT}/releases/${A}`);
    // That check sealed the tree again: the next one reads no file and is not even sent the manifest.
    const again = await ok('ship', 'staging', B);
    expect(again.err).toMatch(
      new RegExp(
        `p6-d0: releases/${B} is already there \\(\\w+\\), unchanged since verified \\(tree seal\\)`,
      ),
    );
    const forward = await ok('rollback', 'staging', '--to', A);
    expect(forward.err).toContain(
      `p6-d0: releases/${A} is already there (healthy), unchanged since verified (tree seal)`,
    );
    // --rehash reads every file.
    const rehash = await ok('ship', 'staging', B, '--rehash');
    expect(rehash.err).toMatch(
      new RegExp(
        `p6-d0: releases/${B} is already there \\(\\w+\\), verified against the manifest \\(\\d{4,} files hashed\\)`,
      ),
    );
    expect((await served(http['p6-d0'])).showcase).toBe('1.0.0');
  });

  it('a delta that fails leaves every host as it was: current unchanged, no partial, no lock', async () => {
    // The production hosts hold A only (B removed with its manifest): B must come as a delta, from a
    // copy of B's artifact whose archive is damaged, so the delta cannot be cut out of it.
    for (const h of ['p6-d1', 'p6-d2'] as const)
      await onHost(docker, h, `rm -rf ${ROOT}/releases/${B} ${ROOT}/.ckan-release/manifests/${B}.json`);
    const store = path.join(project.dir, 'corrupt-store');
    cpSync(path.join(project.dir, '.ckan-release/artifacts', B), path.join(store, B), { recursive: true });
    const archive = path.join(store, B, 'release.tar.gz');
    const bytes = readFileSync(archive);
    for (let i = Math.floor(bytes.length / 3); i < bytes.length - 100; i += 4096) bytes[i] = bytes[i]! ^ 0xff;
    writeFileSync(archive, bytes);
    const config = project.variant('corrupt', (t) =>
      t.replace('project: demo-portal', `project: demo-portal\nstore: corrupt-store`),
    );
    const r = await project.cli('--config', config, 'ship', 'production', B);
    expect(r.code, r.err).toBe(1);
    expect(r.err).toMatch(/failed before any host switched; nothing changed on any host/);
    expect(r.err).not.toMatch(/delta: sent/);
    for (const h of ['p6-d1', 'p6-d2'] as const) {
      expect(await currentOf(docker, h)).toBe(`${ROOT}/releases/${A}`);
      const left = await onHost(
        docker,
        h,
        `ls -A ${ROOT}/releases ${ROOT}/.ckan-release ${ROOT}/.ckan-release/tmp`,
      );
      expect(left.out).not.toMatch(/\.partial|lock|-need\.json|-manifest\.json/);
    }
  });
});
