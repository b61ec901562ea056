// Linked releases (deploy.link: hardlink, the default) against real sandbox hosts: a delta links every
// file it shares with the kept release and the release is identical to a full ship (content, modes,
// owners, mtimes); an operator's edit written through a link, and a chmod, are healed in the rollback
// target (the rollback serves the artifact's exact bytes), never written back, and once healed a
// further edit no longer reaches it; five kept releases use a fraction of the disk of five copies.
// Hosts ln-s0 (staging), ln-p1 and ln-p2 (production) on ports 2460-2462 / 8460-8462.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sandboxDown } from '../../src/sandbox/sandbox.js';
import { testDocker } from '../support/docker.js';
import { currentOf, onHost, served } from '../support/hosts.js';
import { testProject, type TestProject } from '../support/project.js';

const ROOT = '/usr/lib/ckan';
type Host = 'ln-s0' | 'ln-p1' | 'ln-p2';
const HTTP: Record<Host, number> = { 'ln-s0': 8460, 'ln-p1': 8461, 'ln-p2': 8462 };

let docker: Docker;
let project: TestProject;
/** Five releases, each one extension (showcase) changed from the one before. */
const ids: string[] = [];

async function ok(config: string, ...argv: string[]): Promise<{ out: string; err: string }> {
  const r = await project.cli('--config', config, ...argv);
  if (r.code !== 0) throw new Error(`ckan-release ${argv.join(' ')} exited ${r.code}:\n${r.err}`);
  return r;
}

async function sh(host: Host, script: string): Promise<string> {
  const r = await onHost(docker, host, script);
  expect(r.code, `${host}: ${script}\n${r.out.slice(-800)}`).toBe(0);
  return r.out;
}

/** Every entry of releases/<id>: path, type, mode, owner, mtime, link target, each file's sha256 (the
 * release directory, its config and shared link, and symlinks' own mtimes aside, as delta.test.ts). */
async function tree(host: Host, id: string): Promise<string> {
  const out = await sh(
    host,
    `cd ${ROOT}/releases/${id} && find . -printf '%p %y %m %U:%G %T@ %l\\n' | LC_ALL=C sort && ` +
      `find . -type f ! -path ./ckan.ini -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`,
  );
  return out
    .replace(/^(\.|\.\/ckan\.ini|\.\/storage) (\S+ \S+ \S+) \S+ /gm, '$1 $2 - ')
    .replace(/^(\S+ l \S+ \S+) \S+ /gm, '$1 - ');
}

function manifestSha(id: string, file: string): string {
  const m = JSON.parse(
    readFileSync(path.join(project.dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
  ) as { files: { path: string; sha256: string | null }[] };
  return m.files.find((f) => f.path === file)!.sha256!;
}

const shaOn = async (host: Host, file: string) => (await sh(host, `sha256sum ${file}`)).split(' ')[0];

beforeAll(async () => {
  docker = await testDocker();
  project = await testProject();
  let text = readFileSync(project.config, 'utf8');
  const names: Record<string, Host> = {
    'sandbox-staging': 'ln-s0',
    'sandbox-web1': 'ln-p1',
    'sandbox-web2': 'ln-p2',
  };
  [
    [2201, 8001],
    [2202, 8002],
    [2203, 8003],
  ].forEach(([ssh, web], i) => {
    text = text.replace(
      `ssh_port: ${ssh}, http_port: ${web}`,
      `ssh_port: ${2460 + i}, http_port: ${8460 + i}`,
    );
  });
  for (const [from, to] of Object.entries(names)) text = text.replaceAll(from, to);
  text = text.replace('keep_releases: 3', 'keep_releases: 5');
  expect(text).toContain('keep_releases: 5');
  writeFileSync(project.config, text);
  // Five artifacts: showcase 1.1.0 / 1.0.0 in turn; a pip flag that changes nothing installed makes
  // each a release of its own (pip settings are build inputs).
  const flags = ['', '', '--no-color', '--no-color', '--disable-pip-version-check'];
  for (let i = 0; i < 5; i++) {
    const config = project.variant(`r${i}`, (t) => {
      let v = i % 2 ? t.replace('ref: v1.1.0', 'ref: v1.0.0') : t;
      if (flags[i])
        v = v.replace(
          'find_links: [./.fixtures/wheelhouse]',
          `find_links: [./.fixtures/wheelhouse]\n    extra_args: [${flags[i]}]`,
        );
      return v;
    });
    const id = (await ok(config, 'build')).out.trim();
    expect(id).toMatch(/^\d{14}Z-[0-9a-f]{8}$/);
    ids.push(id);
  }
  expect(new Set(ids).size).toBe(5);
  await ok(project.config, 'sandbox', 'up');
  await ok(project.config, 'setup', 'staging');
  await ok(project.config, 'setup', 'production');
}, 1_500_000);

afterAll(async () => {
  if (docker && project)
    await sandboxDown(docker, { dir: path.join(project.dir, '.ckan-release/sandbox') }, () => undefined);
});

describe('linked releases', () => {
  it('a delta links what it shares with the kept release, and equals a full ship entry for entry', async () => {
    const [A, B] = ids as [string, string];
    const first = await ok(project.config, 'ship', 'staging', A);
    expect(first.err).toMatch(
      /ln-s0: received [\d.]+ MB in [\d.]+ s, every file checked against the manifest/,
    );
    const r = await ok(project.config, 'ship', 'staging', B);
    expect(r.err).toMatch(
      new RegExp(`ln-s0: delta: sent \\d+ files .*, \\d+ files \\([\\d.]+ MB\\) linked from ${A}`),
    );
    expect((await served(HTTP['ln-s0'])).showcase).toBe('1.0.0');
    // ln-p1 and ln-p2 have nothing: B arrives there in full.
    const full = await ok(project.config, 'ship', 'production', B);
    expect(full.err).toMatch(/ln-p1: received [\d.]+ MB/);
    const [linked, shipped] = [await tree('ln-s0', B), await tree('ln-p1', B)];
    expect(linked.split('\n').length).toBeGreaterThan(1000);
    expect(linked).toBe(shipped);
    // Hard links on the host that had A; none where B came in full.
    const counts = async (host: Host) =>
      (
        await sh(
          host,
          `cd ${ROOT}/releases/${B} && echo $(find . -type f -links +1 | wc -l) $(find . -type f -links 1 | wc -l)`,
        )
      )
        .trim()
        .split(' ')
        .map(Number);
    const [shared = 0, own = 0] = await counts('ln-s0');
    console.log(`linked delta: ${shared} files shared with ${A}, ${own} of its own`);
    expect(shared).toBeGreaterThan(1000);
    expect(own).toBeLessThan(shared / 10);
    expect((await counts('ln-p1'))[0]).toBe(0);
  });

  it('an edit written through a link and a chmod are healed in the rollback target, which serves the artifact bytes', async () => {
    const [A, B] = ids as [string, string];
    const edited = 'src/ckan/ckan/__init__.py';
    const moded = 'src/ckan/setup.py';
    const inode = async (id: string, f: string) =>
      (await sh('ln-s0', `stat -c %i ${ROOT}/releases/${id}/${f}`)).trim();
    expect(await inode(A, edited)).toBe(await inode(B, edited));
    // The operator hot-fixes the live release: an append writes in place, through the link (as an
    // editor that keeps the inode does); and a chmod. Both reach A, the rollback target.
    await sh(
      'ln-s0',
      `printf '# hot fix\\n' >> ${ROOT}/current/${edited} && chmod 0600 ${ROOT}/current/${moded}`,
    );
    const want = manifestSha(A, edited);
    expect(manifestSha(B, edited)).toBe(want);
    expect(await shaOn('ln-s0', `${ROOT}/releases/${A}/${edited}`)).not.toBe(want);
    expect((await sh('ln-s0', `stat -c %a ${ROOT}/releases/${A}/${moded}`)).trim()).toBe('600');

    const back = await ok(project.config, 'rollback', 'staging', '--to', A);
    expect(back.err).toContain(
      `ln-s0: healed releases/${A}/${moded} (${moded} has mode 0600, not 0644) from releases/${B}/${moded}`,
    );
    expect(back.err).toContain(
      `ln-s0: healed releases/${A}/${edited} (no release on the host had it right) from the artifact`,
    );
    expect(await currentOf(docker, 'ln-s0')).toBe(`${ROOT}/releases/${A}`);
    const s = await served(HTTP['ln-s0']);
    expect([s.status, s.showcase]).toEqual([200, '1.1.0']);
    // A serves the artifact's exact bytes and modes; B keeps what the operator did to it.
    expect(await shaOn('ln-s0', `${ROOT}/releases/${A}/${edited}`)).toBe(want);
    expect(await shaOn('ln-s0', `${ROOT}/current/${edited}`)).toBe(want);
    expect((await sh('ln-s0', `stat -c %a ${ROOT}/releases/${A}/${moded}`)).trim()).toBe('644');
    expect(await shaOn('ln-s0', `${ROOT}/releases/${B}/${edited}`)).not.toBe(want);
    expect((await sh('ln-s0', `stat -c %a ${ROOT}/releases/${B}/${moded}`)).trim()).toBe('600');
    expect(await inode(A, edited)).not.toBe(await inode(B, edited));
    // Once healed, a further edit through B does not reach A.
    await sh('ln-s0', `printf '# another\\n' >> ${ROOT}/releases/${B}/${edited}`);
    expect(await shaOn('ln-s0', `${ROOT}/releases/${A}/${edited}`)).toBe(want);

    // Shipping B again heals B as well, from A's right bytes now (a hard link: same content and mode).
    const again = await ok(project.config, 'ship', 'staging', B);
    expect(again.err).toContain(
      `ln-s0: healed releases/${B}/${edited} (${edited}: sha256 differs from the manifest) from releases/${A}/${edited}`,
    );
    expect(again.err).toContain(
      `ln-s0: healed releases/${B}/${moded} (${moded} has mode 0600, not 0644) from releases/${A}/${moded}`,
    );
    expect(await shaOn('ln-s0', `${ROOT}/current/${edited}`)).toBe(want);
    expect(await inode(A, edited)).toBe(await inode(B, edited));
    expect(await tree('ln-s0', B)).toBe(await tree('ln-p1', B));
  });

  it('five kept releases, linked vs copied: disk used', async () => {
    const copy = project.variant('copy', (t) =>
      t.replace('keep_releases: 5', 'keep_releases: 5\n  link: copy'),
    );
    for (const id of ids.slice(2)) await ok(project.config, 'ship', 'staging', id);
    for (const id of [ids[0]!, ...ids.slice(2)]) await ok(copy, 'ship', 'production', id);
    const du = async (host: Host) => {
      const out = await sh(host, `cd ${ROOT}/releases && du -sk ${ids.join(' ')} && du -sk . | cut -f1`);
      const lines = out.trim().split('\n');
      return { per: lines.slice(0, 5).map((l) => Number(l.split('\t')[0])), total: Number(lines[5]) };
    };
    const [linked, copied] = [await du('ln-s0'), await du('ln-p1')];
    console.log(
      `disk of 5 kept releases: linked ${linked.total} KiB (${linked.per.join(', ')}), copied ${copied.total} KiB (${copied.per.join(', ')}): ${(linked.total / copied.total).toFixed(3)}`,
    );
    expect(linked.total).toBeLessThan(copied.total * 0.4);
    // The copies are identical to the linked releases, entry for entry.
    expect(await tree('ln-s0', ids[4]!)).toBe(await tree('ln-p1', ids[4]!));
    expect((await sh('ln-p1', `find ${ROOT}/releases -type f -links +1 | wc -l`)).trim()).toBe('0');
  });
});
