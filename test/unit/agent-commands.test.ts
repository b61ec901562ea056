// The host agent's commands (assets/host/ckan_release_host.py) run directly, as the tool runs them
// (`python agent COMMAND JSON`, stdin), against a temporary root, on Python 2.7, 3.6 and python3: the
// refusals (each with its kind, and what they leave untouched) and the edges the happy path of
// scripts-python-versions.test.ts does not reach: hostile archives, a partial changed after receive,
// switch refusals and switch to nothing, the lock's take-overs, the rollback target past a bad
// release, what prune keeps and removes, verify finding changes, server files installed and put back,
// an unhealthy site. No Docker, no root: owners are the current user's.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  copyFileSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { archiveMtime, makeDeltaArchive } from '../../src/deploy/delta.js';
import {
  hostRollbackTarget,
  pruneInstructions,
  prunePlan,
  type HostFacts,
  type HostPlan,
} from '../../src/plan.js';
import { runAgent, type Answer } from '../support/agent-run.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';
import { rawArchive, writeRelease, type TreeEntry } from '../support/release.js';

const TREE: Record<string, TreeEntry> = {
  'a.txt': 'release A\n',
  'bin/tool': { content: '#!/bin/sh\necho tool\n', mode: '0755' },
  'lib/link': { link: '../a.txt' },
};
const ID_A = '20260101000000Z-aaaaaaaa';
const ID_B = '20260102000000Z-bbbbbbbb';
const ID_C = '20260103000000Z-cccccccc';
const ID_D = '20260104000000Z-dddddddd';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(label: string): string {
  const d = mkdtempSync(path.join(os.tmpdir(), `ckan-release-at-${label}-`));
  dirs.push(d);
  return d;
}

const USER = os.userInfo().username;
const GROUP = execFileSync('id', ['-gn'], { encoding: 'utf8' }).trim();

/**
 * Python lines run against the host agent's module, imported as `a` (with hashlib, json, os, stat,
 * sys, threading and time): what the script prints, parsed as JSON.
 */
function agentScript(py: (typeof TEST_PYTHONS)[number], script: string): unknown {
  const head = [
    'import hashlib, json, os, stat, sys, threading, time',
    `sys.path.insert(0, ${JSON.stringify(path.dirname(AGENT_SCRIPT))})`,
    'import ckan_release_host as a',
  ];
  return JSON.parse(
    execFileSync(requirePython(py), ['-c', [...head, script].join('\n')], {
      encoding: 'utf8',
      timeout: 20_000,
    }),
  );
}

describe.each(TEST_PYTHONS)('the host agent on Python $label', (py) => {
  // The agent imported as a module from a copy, as the tool's stub does on a host: Python keeps its
  // bytecode beside the copy instead of compiling 1,900 lines on every call.
  let module: string | undefined;
  function agent(command: string, args: unknown, stdin?: Buffer | string): Promise<Answer> {
    const python = requirePython(py);
    if (!module) {
      module = tempDir(`agent-${py.label}`);
      copyFileSync(AGENT_SCRIPT, path.join(module, 'ckan_release_host.py'));
    }
    const stub = `import sys; sys.path.insert(0, ${JSON.stringify(module)}); import ckan_release_host as a; sys.exit(a.main())`;
    return runAgent(python, ['-c', stub], command, args, stdin);
  }
  async function ok(command: string, args: unknown, stdin?: Buffer | string) {
    const r = await agent(command, args, stdin);
    if (r.code !== 0)
      throw new Error(`agent ${command} exit ${r.code}: ${JSON.stringify(r.json)} ${r.stderr}`);
    return r.json;
  }
  /** The refusal's kind and message (exit 3, one JSON line). */
  async function refused(command: string, args: unknown, stdin?: Buffer | string) {
    const r = await agent(command, args, stdin);
    expect(r.code, `${command} ${JSON.stringify(r.json)} ${r.stderr}`).toBe(3);
    return { kind: String(r.json.error), message: String(r.json.message), details: r.json.details };
  }

  /** A set-up root, and releases written to a store beside it. */
  async function bed(label: string) {
    const dir = tempDir(`${label}-${py.label}`);
    const root = path.join(dir, 'root');
    const store = path.join(dir, 'store');
    await ok('setup', { root, shared: ['data'] });
    mkdirSync(path.join(root, '.ckan-release', 'tmp'));
    return { dir, root, store };
  }

  /** receive + finalize of a release, as a ship stages it. */
  async function stage(root: string, store: string, id: string, op: string, tree = TREE) {
    const a = await writeRelease(store, id, tree);
    const manifest = path.join(a.dir, 'manifest.json');
    const got = await ok('receive', { root, id, op, manifest }, readFileSync(a.archive));
    await ok(
      'finalize',
      { root, id, op, partial: got.partial, manifest, config_file: 'ckan.ini', shared: [] },
      '[app:main]\n',
    );
    return a;
  }

  const ledger = (root: string) =>
    (existsSync(path.join(root, '.ckan-release', 'ledger.jsonl'))
      ? readFileSync(path.join(root, '.ckan-release', 'ledger.jsonl'), 'utf8')
      : ''
    )
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: string; release?: string });

  it('receive refuses hostile and damaged archives by kind, and clean leaves no partial', async () => {
    const { dir, root, store } = await bed('receive');
    const a = await writeRelease(store, ID_A, TREE);
    const manifest = path.join(a.dir, 'manifest.json');
    const args = { root, id: ID_A, op: 'op1', manifest };
    const cases: [string, Buffer, RegExp][] = [
      ['../', await rawArchive([{ name: '../escape.txt', content: 'x' }]), /points outside the release/],
      ['absolute', await rawArchive([{ name: '/tmp/at-abs.txt', content: 'x' }]), /points outside/],
      ['not listed', await rawArchive([{ name: './extra.txt', content: 'x' }]), /not in the manifest/],
      ['other bytes', await rawArchive([{ name: './a.txt', content: 'release B\n' }]), /a\.txt: sha256/],
      [
        'other link',
        await rawArchive([{ name: './lib/link', type: 'symlink', linkname: '../../etc/passwd' }]),
        /lib\/link: symlink target '\.\.\/\.\.\/etc\/passwd' differs/,
      ],
      ['cut', readFileSync(a.archive).subarray(0, 60), /damaged or truncated/],
    ];
    for (const [what, data, message] of cases) {
      const r = await refused('receive', args, data);
      expect([what, r.kind], r.message).toEqual([what, 'bad-artifact']);
      expect(r.message, what).toMatch(message);
      expect(await ok('clean', { root, op: 'op1' }), what).toEqual({
        removed: [`.partial-${ID_A}-op1`],
      });
    }
    expect(existsSync(path.join(dir, 'escape.txt'))).toBe(false);
    expect(existsSync(path.join(root, 'escape.txt'))).toBe(false);
    expect(existsSync('/tmp/at-abs.txt')).toBe(false);
    // A manifest for another release, and an ID that is a path: refused before anything is written.
    expect(await refused('receive', { ...args, id: ID_B }, readFileSync(a.archive))).toMatchObject({
      kind: 'bad-artifact',
      message: `manifest is for ${ID_A}, not ${ID_B}`,
    });
    expect((await refused('receive', { ...args, id: '../x' }, '')).kind).toBe('bad-input');
    expect(readdirSync(path.join(root, 'releases'))).toEqual([]);
    // The whole archive still goes in afterwards.
    expect(await ok('receive', args, readFileSync(a.archive))).toMatchObject({ entries: 5 });
  });

  it('put-manifest writes the manifest only when all of it arrived as sent; clean removes it', async () => {
    const { root } = await bed('put-manifest');
    const text = Buffer.from(JSON.stringify({ id: ID_A, files: [] }));
    const sha = createHash('sha256').update(text).digest('hex');
    const at = path.join(root, '.ckan-release', 'tmp', 'op1-manifest.json');
    const args = { root, op: 'op1', bytes: text.length, sha256: sha };
    // Cut off (fewer bytes than sent), or other bytes: refused, nothing written.
    for (const data of [text.subarray(0, 10), Buffer.from(text.toString().replace(ID_A, ID_B))]) {
      const r = await refused('put-manifest', args, data);
      expect(r.kind).toBe('bad-input');
      expect(r.message).toMatch(/arrived cut off or changed/);
      expect(existsSync(at)).toBe(false);
    }
    // An operation ID that would name a path elsewhere.
    for (const op of ['../op1', 'op1/x', 'op1\n', '']) {
      expect((await refused('put-manifest', { ...args, op }, text)).message).toMatch(/not an operation ID/);
    }
    expect(await ok('put-manifest', args, text)).toEqual({ manifest: at });
    expect(readFileSync(at)).toEqual(text);
    await ok('clean', { root, op: 'op1' });
    expect(existsSync(at)).toBe(false);
    // Gzipped, as the tool sends it: what it inflates to is checked the same way, and inflating stops
    // one byte past the length given (a gzip that inflates to more is refused, not inflated whole).
    const zipped = { ...args, gzip: true };
    const big = gzipSync(Buffer.concat([text, Buffer.alloc(64 << 20)]));
    for (const [data, message] of [
      [gzipSync(text).subarray(0, 20), /arrived cut off or changed/],
      [big, new RegExp(`arrived cut off or changed: ${text.length + 1} bytes`)],
      [text, /arrived damaged \(not gzip as sent\)/],
    ] as const) {
      const r = await refused('put-manifest', zipped, data);
      expect(r.kind).toBe('bad-input');
      expect(r.message).toMatch(message);
      expect(existsSync(at)).toBe(false);
    }
    expect((await refused('put-manifest', { ...args, bytes: -1 }, text)).message).toMatch(/bytes must be/);
    expect(await ok('put-manifest', zipped, gzipSync(text, { level: 1 }))).toEqual({ manifest: at });
    expect(readFileSync(at)).toEqual(text);
  });

  it('finalize refuses a partial changed after receive, and one outside releases/', async () => {
    const { root, store } = await bed('finalize');
    const a = await writeRelease(store, ID_A, TREE);
    const manifest = path.join(a.dir, 'manifest.json');
    const got = await ok('receive', { root, id: ID_A, op: 'op1', manifest }, readFileSync(a.archive));
    const partial = String(got.partial);
    expect(partial).toBe(path.join(root, 'releases', `.partial-${ID_A}-op1`));
    appendFileSync(path.join(partial, 'a.txt'), 'changed on the host\n');
    const args = { root, id: ID_A, op: 'op1', partial, manifest, config_file: 'ckan.ini', shared: [] };
    const r = await refused('finalize', args, '[app:main]\n');
    expect(r).toMatchObject({ kind: 'bad-artifact' });
    expect(r.message).toMatch(/differs from its manifest: a\.txt: sha256 differs/);
    expect(existsSync(path.join(root, 'releases', ID_A))).toBe(false);
    expect((await refused('finalize', { ...args, partial: path.join(root, 'shared') }, '')).kind).toBe(
      'bad-input',
    );
    await ok('clean', { root, op: 'op1' });
    expect(readdirSync(path.join(root, 'releases'))).toEqual([]);
    expect(ledger(root)).toEqual([]);
  });

  it('switch: refusals leave current as it was, null removes it, no temporary link is left', async () => {
    const { root, store } = await bed('switch');
    await stage(root, store, ID_A, 'op1');
    expect(await ok('switch', { root, id: ID_A, op: 'op2' })).toEqual({ previous: null, current: ID_A });
    const before = ledger(root);
    expect(before.at(-1)).toMatchObject({ event: 'activated', release: ID_A });
    expect(await refused('switch', { root, id: ID_B, op: 'op3' })).toMatchObject({
      kind: 'missing',
      message: `releases/${ID_B} does not exist on this host`,
    });
    expect((await refused('switch', { root, id: '../../etc', op: 'op3' })).kind).toBe('bad-input');
    expect((await refused('ledger', { root, entries: [{ event: 'bad', release: 'x/../y' }] })).kind).toBe(
      'bad-input',
    );
    expect(readlinkSync(path.join(root, 'current'))).toBe(`releases/${ID_A}`);
    expect(ledger(root)).toEqual(before);
    // config writes into a release directory, never through setup's adopted link.
    await ok('config', { root, id: ID_A, config_file: 'ckan.ini' }, '[app:main]\nx = 2\n');
    expect(readFileSync(path.join(root, 'current', 'ckan.ini'), 'utf8')).toBe('[app:main]\nx = 2\n');
    expect(statSync(path.join(root, 'current', 'ckan.ini')).mode & 0o777).toBe(0o640);
    symlinkSync('../default', path.join(root, 'releases', ID_B));
    expect((await refused('config', { root, id: ID_B, config_file: 'ckan.ini' }, 'x')).kind).toBe('missing');
    // Back to no release at all (a failed first deploy switched back).
    expect(await ok('switch', { root, id: null, op: 'op4' })).toEqual({ previous: ID_A, current: null });
    expect(existsSync(path.join(root, 'current'))).toBe(false);
    expect(readdirSync(root).filter((n) => n.startsWith('.current'))).toEqual([]);
    // The agent never works through a symlink planted where the layout has a directory.
    const planted = path.join(path.dirname(root), 'planted');
    mkdirSync(path.join(planted, 'releases', ID_A), { recursive: true });
    rmSync(path.join(root, 'releases'), { recursive: true });
    symlinkSync(path.join(planted, 'releases'), path.join(root, 'releases'));
    expect((await refused('switch', { root, id: ID_A, op: 'op5' })).kind).toBe('bad-layout');
    expect(existsSync(path.join(root, 'current'))).toBe(false);
  });

  it('lock: busy, renewed by its holder, taken over when expired or its process is gone', async () => {
    const { root } = await bed('lock');
    const owner = (token: string) => ({ token, user: 'u', machine: 'm', pid: 1, operation: 'ship' });
    const holder = () =>
      JSON.parse(readFileSync(path.join(root, '.ckan-release', 'lock', 'owner.json'), 'utf8')) as {
        token: string;
        expires: number;
      };
    expect(await ok('lock', { root, owner: owner('op1'), ttl: 600 })).toEqual({
      locked: true,
      taken_over: null,
    });
    const busy = await refused('lock', { root, owner: owner('op2'), ttl: 600 });
    expect(busy.kind).toBe('locked');
    expect(busy.message).toMatch(/^locked by u@m \(pid 1, ship, since \d{4}-/);
    expect(busy.details).toMatchObject({ holder: { token: 'op1' } });
    // Its holder renews it.
    const first = holder().expires;
    await ok('lock', { root, owner: owner('op1'), ttl: 1200 });
    expect(holder().expires).toBeGreaterThan(first + 500);
    // The caller names the token of a holder whose process is gone (same machine): taken over.
    const dead = await ok('lock', { root, owner: owner('op2'), ttl: -1, stale_token: 'op1' });
    expect(dead.taken_over).toMatchObject({ token: 'op1' });
    expect(holder().token).toBe('op2');
    // op2's lock has expired (ttl -1): anyone takes it over, and facts says it is expired.
    expect(await ok('facts', { root })).toMatchObject({ lock: { token: 'op2' }, lock_expired: true });
    expect((await ok('lock', { root, owner: owner('op3'), ttl: 600 })).taken_over).toMatchObject({
      token: 'op2',
    });
    // Unlocking with another's token is refused and leaves the lock.
    expect((await refused('unlock', { root, token: 'op1' })).kind).toBe('locked');
    expect(holder().token).toBe('op3');
    expect(await ok('unlock', { root, token: 'op3' })).toMatchObject({ unlocked: true });
    expect(readdirSync(path.join(root, '.ckan-release')).filter((n) => n.startsWith('lock'))).toEqual([]);
    expect(await ok('unlock', { root, token: 'op3' })).toEqual({ unlocked: false, holder: null });
    // A lock directory without its owner file (the taker died between mkdir and write) is held.
    mkdirSync(path.join(root, '.ckan-release', 'lock'));
    expect((await refused('lock', { root, owner: owner('op4'), ttl: 600 })).kind).toBe('locked');
  });

  it('a lock taken an instant ago is named by its owner, not "?@?": its owner file is waited for', async () => {
    // The taker makes the lock directory, then writes owner.json into it: another operation that
    // looks in between waits for the file (LOCK_OWNER_WAIT). A directory left without one for long
    // (its taker died) is held by "unknown" at once; no directory, no lock.
    const dir = tempDir(`lock-owner-${py.label}`);
    const script = [
      `d = u${JSON.stringify(dir)}`,
      'lock = d + u"/lock"',
      'os.mkdir(lock)',
      'def take():',
      '    time.sleep(0.2)',
      '    with open(lock + "/.owner.json.tmp", "w") as f:',
      '        f.write(json.dumps({"user": "u", "host": "m", "pid": 1, "token": "op1"}))',
      '    os.rename(lock + "/.owner.json.tmp", lock + "/owner.json")',
      'threading.Thread(target=take).start()',
      't = time.time()',
      'held = a.read_lock({"lock": lock})',
      'waited = time.time() - t',
      'old = d + u"/old"',
      'os.mkdir(old)',
      'os.utime(old, (time.time() - 60, time.time() - 60))',
      't = time.time()',
      'dead = a.read_lock({"lock": old})',
      'print(json.dumps({"held": held, "waited": waited >= 0.15, "dead": dead["owner"],',
      '                  "at_once": time.time() - t < 0.1, "none": a.read_lock({"lock": d + u"/none"})}))',
    ].join('\n');
    const r = agentScript(py, script) as Record<string, unknown>;
    expect(r).toEqual({
      held: { user: 'u', host: 'm', pid: 1, token: 'op1' },
      waited: true,
      dead: 'unknown',
      at_once: true,
      none: null,
    });
  });

  // The plan decides (src/plan.ts, from the agent's facts); the agent removes what it is told and keeps
  // only its safety refusals (prune_refusal). Both run here against the same real root.
  const planPrune = (f: Record<string, unknown>, keep: number) => {
    const facts = f as unknown as HostFacts;
    const target = hostRollbackTarget(facts);
    const items = prunePlan(
      facts.releases.map((r) => r.id),
      facts.partials,
      facts.current,
      target,
      keep,
      facts.tmp ?? [],
    );
    return pruneInstructions({ prune: items, rollback_target_after: target } as HostPlan, keep);
  };

  it('the rollback target skips a bad release; prune removes what the plan names, and the agent refuses current, protected and the running operation', async () => {
    const { root, store } = await bed('prune');
    for (const [id, op] of [
      [ID_A, 'opa'],
      [ID_B, 'opb'],
      [ID_C, 'opc'],
      [ID_D, 'opd'],
    ] as const) {
      await stage(root, store, id, op, { ...TREE, 'a.txt': `release ${id}\n` });
    }
    for (const id of [ID_A, ID_B, ID_C]) {
      await ok('switch', { root, id, op: 'ops' });
      await ok('ledger', { root, entries: [{ event: 'healthy', release: id }] });
    }
    let facts = await ok('facts', { root });
    expect(facts.current).toBe(ID_C);
    expect(hostRollbackTarget(facts as unknown as HostFacts)).toBe(ID_B);
    await ok('ledger', { root, entries: [{ event: 'bad', release: ID_B }] });
    expect(hostRollbackTarget((await ok('facts', { root })) as unknown as HostFacts)).toBe(ID_A);
    // Leftovers of an interrupted operation, and the running operation's own files.
    mkdirSync(path.join(root, 'releases', `.partial-${ID_D}-opold`));
    mkdirSync(path.join(root, 'releases', `.partial-${ID_D}-opnow`));
    writeFileSync(path.join(root, '.ckan-release', 'tmp', 'opold-manifest.json'), '{}');
    writeFileSync(path.join(root, '.ckan-release', 'tmp', 'opnow-manifest.json'), '{}');
    facts = await ok('facts', { root });
    // keep 1: current (C) and the target (A) are kept whatever keep says; B and D go.
    const plan = planPrune(facts, 1);
    expect(plan.remove.map((x) => x.release).sort()).toEqual([ID_B, ID_D]);
    expect(plan.protect).toEqual([ID_A]);
    const before = readdirSync(path.join(root, 'releases')).sort();
    // The agent's safety refusals, each refusing the whole call before anything is removed: the
    // running operation's own files; a release the call protects; current itself.
    expect((await refused('prune', { root, op: 'opnow', ...plan })).kind).toBe('protected');
    const others = {
      ...plan,
      paths: plan.paths.filter((x) => !x.path.includes('opnow')),
    };
    expect((await refused('prune', { root, op: 'opnow', ...others, protect: [ID_D] })).kind).toBe(
      'protected',
    );
    expect(
      (await refused('prune', { root, op: 'opnow', remove: [{ release: ID_C, why: 'x' }], paths: [] })).kind,
    ).toBe('protected');
    expect(
      (await refused('prune', { root, op: 'opnow', remove: [], paths: [{ path: '../../etc', why: 'x' }] }))
        .kind,
    ).toBe('protected');
    expect(readdirSync(path.join(root, 'releases')).sort()).toEqual(before);
    const pruned = await ok('prune', { root, op: 'opnow', ...others });
    // Newest first, as the plan lists them.
    expect(pruned.removed).toEqual([
      { release: ID_D, why: 'beyond keep_releases=1' },
      { release: ID_B, why: 'beyond keep_releases=1' },
      expect.objectContaining({ release: null, path: `.partial-${ID_D}-opold` }),
      expect.objectContaining({ release: null, path: '.ckan-release/tmp/opold-manifest.json' }),
    ]);
    expect(readdirSync(path.join(root, 'releases')).sort()).toEqual([`.partial-${ID_D}-opnow`, ID_A, ID_C]);
    expect(readdirSync(path.join(root, '.ckan-release', 'tmp'))).toEqual(['opnow-manifest.json']);
    expect(existsSync(path.join(root, '.ckan-release', 'manifests', `${ID_B}.json`))).toBe(false);
    expect(existsSync(path.join(root, '.ckan-release', 'manifests', `${ID_A}.json`))).toBe(true);
    expect(ledger(root).at(-1)).toMatchObject({ event: 'pruned', release: ID_B, op: 'opnow' });
    expect(readlinkSync(path.join(root, 'current'))).toBe(`releases/${ID_C}`);
    // A switch to A found healthy again (named by a rollback --to): C is then its target.
    await ok('switch', { root, id: ID_A, op: 'opt' });
    await ok('ledger', { root, entries: [{ event: 'healthy', release: ID_A }] });
    facts = await ok('facts', { root });
    expect(facts.current).toBe(ID_A);
    expect(hostRollbackTarget(facts as unknown as HostFacts)).toBe(ID_C);
  });

  it('prune removes an adopted release by its link only; setup is idempotent', async () => {
    const dir = tempDir(`adopt-${py.label}`);
    const root = path.join(dir, 'root');
    mkdirSync(path.join(root, 'default', 'bin'), { recursive: true });
    writeFileSync(path.join(root, 'default', 'bin', 'python'), '');
    const { adopted } = await ok('setup', { root, shared: [], adopt: true, adopt_id: ID_A });
    expect(adopted).toBe(ID_A);
    mkdirSync(path.join(root, '.ckan-release', 'tmp'));
    expect(await ok('setup', { root, shared: [], adopt: true, adopt_id: ID_A })).toEqual({
      made: [],
      adopted: null,
    });
    const store = path.join(dir, 'store');
    for (const [id, op] of [
      [ID_B, 'opb'],
      [ID_C, 'opc'],
    ] as const) {
      await stage(root, store, id, op);
      await ok('switch', { root, id, op });
      await ok('ledger', { root, entries: [{ event: 'healthy', release: id }] });
    }
    const plan = planPrune(await ok('facts', { root }), 1);
    const pruned = await ok('prune', { root, op: 'opp', ...plan });
    expect(pruned.removed).toEqual([{ release: ID_A, why: 'beyond keep_releases=1' }]);
    expect(readdirSync(path.join(root, 'releases')).sort()).toEqual([ID_B, ID_C]);
    expect(readFileSync(path.join(root, 'default', 'bin', 'python'), 'utf8')).toBe('');
  });

  it('verify finds a changed file and an extra one, once the tree seal no longer vouches', async () => {
    const { root, store } = await bed('verify');
    const a = await stage(root, store, ID_A, 'op1');
    const sha = createHash('sha256')
      .update(readFileSync(path.join(a.dir, 'manifest.json')))
      .digest('hex');
    const args = { root, id: ID_A, manifest_sha256: sha, allowed_extra: ['ckan.ini'] };
    expect(await ok('verify', args)).toMatchObject({ ok: true, by: 'tree seal', hashed: 0 });
    const release = path.join(root, 'releases', ID_A);
    writeFileSync(path.join(release, 'a.txt'), 'release a\n'); // same size, other bytes
    writeFileSync(path.join(release, 'new.txt'), '');
    rmSync(path.join(release, 'lib', 'link'));
    const v = await ok('verify', args);
    expect(v).toMatchObject({ ok: false, by: 'seal', extra: ['new.txt'] });
    expect(v.problems).toEqual(['a.txt: sha256 differs from the manifest', 'lib/link is missing']);
    // Another release's manifest is not kept here: the caller must send it.
    expect(await ok('verify', { ...args, id: ID_B })).toEqual({ need_manifest: true });
  });

  it("the tree seal leaves out exactly the paths it is told, even a name with find's pattern characters", async () => {
    const { root, store } = await bed('tree-exclude');
    const config = 'etc/site[1]*.ini'; // as a pattern it would match etc/site1.ini too
    const a = await writeRelease(store, ID_A, { ...TREE, 'etc/site1.ini': 'sealed\n' });
    const manifest = path.join(a.dir, 'manifest.json');
    const got = await ok('receive', { root, id: ID_A, op: 'op1', manifest }, readFileSync(a.archive));
    await ok(
      'finalize',
      { root, id: ID_A, op: 'op1', partial: got.partial, manifest, config_file: config, shared: [] },
      '[app:main]\n',
    );
    const sha = createHash('sha256').update(readFileSync(manifest)).digest('hex');
    const args = { root, id: ID_A, manifest_sha256: sha, allowed_extra: [config] };
    expect(await ok('verify', args)).toMatchObject({ ok: true, by: 'tree seal', hashed: 0 });
    const release = path.join(root, 'releases', ID_A);
    // The config file rendered again: left out, the tree seal still vouches.
    writeFileSync(path.join(release, config), '[app:main]\ndebug = false\n');
    expect(await ok('verify', args)).toMatchObject({ ok: true, by: 'tree seal', hashed: 0 });
    // The file the unescaped pattern would have left out too: its edit is found.
    writeFileSync(path.join(release, 'etc', 'site1.ini'), 'sealeD\n');
    const v = await ok('verify', args);
    expect(v).toMatchObject({ ok: false, by: 'seal' });
    expect(v.problems).toEqual(['etc/site1.ini: sha256 differs from the manifest']);
  });

  it("a check's stats from GNU find are the ones Python's lstat gives, and the walk without find gives the same", async () => {
    // verify_tree checks every entry by find's listing and records each file's stat from it in the
    // seal; receive and delta record theirs by Python's lstat (on Python 2: float times, rounded).
    // Were the two to differ in a single field, no seal would vouch for anything and every ship would
    // read every file again.
    const dir = tempDir(`stats-${py.label}`);
    const tree = path.join(dir, 'tree');
    mkdirSync(path.join(tree, 'd', 'sticky'), { recursive: true });
    writeFileSync(path.join(tree, 'setuid'), 'x\n');
    chmodSync(path.join(tree, 'setuid'), 0o4755);
    chmodSync(path.join(tree, 'd', 'sticky'), 0o1777);
    writeFileSync(path.join(tree, 'd', 'old.txt'), 'old\n');
    execFileSync('touch', ['-h', '-d', '1999-12-31 23:59:59.123456789', path.join(tree, 'd', 'old.txt')]);
    writeFileSync(path.join(tree, 'd', 'caf\u00e9.txt'), 'caf\u00e9\n');
    symlinkSync('../setuid', path.join(tree, 'd', 'link'));
    execFileSync('mkfifo', [path.join(tree, 'fifo')]);
    writeFileSync(path.join(tree, 'left-out.ini'), '');
    const script = [
      `top = u${JSON.stringify(tree)}`,
      'found, listing = a.tree_stats(top, [u"left-out.ini"])',
      'a.find_tree = lambda release, exclude: None',
      'walked, none = a.tree_stats(top, [u"left-out.ini"])',
      'lstat = dict((rel, a.stat_key(os.lstat(top + u"/" + rel))) for rel in found)',
      // As strings: nanoseconds since 1970 are past the integers a JavaScript number holds exactly.
      'text = lambda stats: dict((rel, [str(n) for n in key]) for rel, key in stats.items())',
      'print(json.dumps({"listed": listing is not None and none is None, "found": text(found),',
      '                  "walked": text(walked), "lstat": text(lstat)}))',
    ].join('\n');
    const r = agentScript(py, script) as {
      listed: boolean;
      found: Record<string, string[]>;
      walked: Record<string, string[]>;
      lstat: Record<string, string[]>;
    };
    expect(r.listed).toBe(true);
    expect(Object.keys(r.found).sort()).toEqual(
      ['d', 'd/caf\u00e9.txt', 'd/link', 'd/old.txt', 'd/sticky', 'fifo', 'setuid'].sort(),
    );
    expect(r.found).toEqual(r.lstat);
    expect(r.walked).toEqual(r.lstat);
    expect(Number(r.found['setuid']![4]) & 0o7777).toBe(0o4755);
    expect(Number(r.found['d/sticky']![4]) & 0o7777).toBe(0o1777);
    // Python 3 has the nanoseconds exactly; Python 2's float time is off by a fraction of a microsecond.
    const ns = r.found['d/old.txt']![2]!;
    if (py.label === '2.7') expect(Number(ns.slice(-9))).toBeCloseTo(123456789, -3);
    else expect(ns.slice(-9)).toBe('123456789');
  });

  it("find's listing leaves out each path by its inode where that names it alone, exactly as by its path", async () => {
    // exclude_test: -samefile is an inode compared, -path an fnmatch of every entry's path. The
    // listing (and so every tree seal's digest) must be the same bytes either way, for every kind of
    // entry an operator may leave at an excluded path; a FIFO must not be opened (find would block).
    const dir = tempDir(`exclude-${py.label}`);
    const tree = path.join(dir, 'tree');
    mkdirSync(path.join(tree, 'sub', 'dir'), { recursive: true });
    writeFileSync(path.join(tree, 'ckan.ini'), '[app:main]\n');
    writeFileSync(path.join(tree, 'sub', 'linked.ini'), 'two names\n');
    linkSync(path.join(tree, 'sub', 'linked.ini'), path.join(tree, 'other-name.ini'));
    writeFileSync(path.join(tree, 'sub', 'dir', 'kept.txt'), 'under an excluded directory\n');
    symlinkSync('/nowhere/storage', path.join(tree, 'storage'));
    execFileSync('mkfifo', [path.join(tree, 'pipe')]);
    writeFileSync(path.join(tree, 'kept.txt'), 'listed\n');
    const exclude = ['ckan.ini', 'sub/linked.ini', 'sub/dir', 'storage', 'pipe', 'missing.ini'];
    const script = [
      `top = u${JSON.stringify(tree)}`,
      `exclude = ${JSON.stringify(exclude)}`,
      'tests = dict((rel, a.exclude_test(top + "/" + rel)[0]) for rel in exclude)',
      'listing = a.find_tree(top, [u"%s" % rel for rel in exclude])',
      'print(json.dumps({"tests": tests, "listing": listing.decode("utf-8")}))',
    ].join('\n');
    const r = agentScript(py, script) as { tests: Record<string, string>; listing: string };
    expect(r.tests).toEqual({
      'ckan.ini': '-samefile',
      'sub/linked.ini': '-path', // another name links it: by its inode that one would go too
      'sub/dir': '-samefile',
      storage: '-samefile',
      pipe: '-path',
      'missing.ini': '-false',
    });
    const byPath = execFileSync(
      'find',
      [tree, '-mindepth', '1', '('].concat(
        exclude.flatMap((rel, i) => [...(i ? ['-o'] : []), '-path', `${tree}/${rel}`]),
        [')', '-o', '-printf', '%P\\0%y %i %s %T@ %C@ %m %U %G\\0'],
      ),
      { encoding: 'utf8' },
    );
    expect(r.listing).toBe(byPath);
    const names = r.listing.split('\0').filter((_, i) => i % 2 === 0 && _ !== '');
    expect(names.sort()).toEqual(['kept.txt', 'other-name.ini', 'sub', 'sub/dir/kept.txt']);
  });

  it('a JSON file parsed once in a session is parsed again whenever it may have changed', async () => {
    // ParsedFiles: one session's delta, receive and finalize read the same manifest and seal. What it
    // keeps must never hide a change: a file another process wrote is kept only past the racy window,
    // and any rewrite after (in place, or a rename over it) is read again; a seal loaded is a copy.
    const dir = tempDir(`parsed-${py.label}`);
    const script = [
      `d = u${JSON.stringify(dir)}`,
      'path = d + u"/m.json"',
      'def put(obj):',
      '    with open(path, "w") as f:',
      '        f.write(json.dumps(obj))',
      'c = a.ParsedFiles()',
      'r = {}',
      'put({"v": 1})',
      'first = c.load(path)',
      'r["fresh_kept"] = c.load(path) is first',
      'time.sleep(0.15)',
      'old = c.load(path)',
      'r["old_kept"] = c.load(path) is old',
      'put({"v": 2})',
      'r["rewrite_seen"] = c.load(path)["v"]',
      'put({"v": 3})',
      'c.wrote(path)',
      'ours = c.load(path)',
      'r["ours_kept"] = c.load(path) is ours and ours["v"] == 3',
      'with open(path + ".tmp", "w") as f:',
      '    f.write(json.dumps({"v": 4}))',
      'os.rename(path + ".tmp", path)',
      'r["renamed_seen"] = c.load(path)["v"]',
      'a.Seal({u"x": [1, 2, 3, 4, 5, 6, 7]}).save(d + u"/s.seal")',
      'one = a.Seal.load(d + u"/s.seal")',
      'one.files[u"y"] = [1]',
      'two = a.Seal.load(d + u"/s.seal")',
      'r["seal"] = sorted(two.files.items())',
      'print(json.dumps(r))',
    ].join('\n');
    const r = agentScript(py, script) as Record<string, unknown>;
    expect(r).toEqual({
      fresh_kept: false, // written 0 s ago by another process: its stat may not show a rewrite yet
      old_kept: true,
      rewrite_seen: 2, // the same size, in place
      ours_kept: true,
      renamed_seen: 4,
      seal: [['x', [1, 2, 3, 4, 5, 6, 7]]],
    });
  });

  it("the tree seal is the check's own listing: a file written just before it is read again once past its racy window", async () => {
    // finalize seals the listing its check went by. A file the receive wrote within SEAL_RACY_NS of
    // that listing could have been written again in the same clock tick with the same stat: it is
    // read again after the window, and bytes other than the manifest's mean no tree seal at all.
    const dir = tempDir(`racy-${py.label}`);
    const script = [
      `top = u${JSON.stringify(path.join(dir, 'tree'))}`,
      `p = {"manifests": u${JSON.stringify(path.join(dir, 'manifests'))}}`,
      'os.makedirs(top + u"/sub")',
      'os.mkdir(p["manifests"])',
      'def write(rel, data):',
      '    with open(top + u"/" + rel, "wb") as f:',
      '        f.write(data)',
      '    return {"path": rel, "type": "file", "mode": "0644", "sha256": hashlib.sha256(data).hexdigest()}',
      'old = write(u"sub/old.txt", b"written long before\\n")',
      'time.sleep(0.25)',
      'new = write(u"new.txt", b"written just before the check\\n")',
      'start = a.now_ns()',
      'stats, listing = a.tree_stats(top, [])',
      'checked = a.Seal(dict((rel, key) for rel, key in stats.items() if stat.S_ISREG(key[4])))',
      'racy = a.racy_entries(stats, start)',
      'entries = {u"sub/old.txt": old, u"new.txt": new}',
      'right = a.save_tree_seal(p, "right", top, "m", checked, [], (listing, stats, start, entries))',
      'other = dict(new, sha256=hashlib.sha256(b"other bytes\\n").hexdigest())',
      'wrong = a.save_tree_seal(p, "wrong", top, "m", checked, [], (listing, stats, start, dict(entries, **{u"new.txt": other})))',
      'print(json.dumps({"racy": racy, "right": right, "wrong": wrong,',
      '                  "wrong_seal": os.path.exists(a.tree_seal_path(p, "wrong")),',
      '                  "unchanged": a.tree_unchanged(p, "right", top, "m", [])}))',
    ].join('\n');
    const r = agentScript(py, script) as Record<string, unknown>;
    expect(r).toEqual({ racy: ['new.txt'], right: true, wrong: false, wrong_seal: false, unchanged: true });
  });

  it('a check that finds a file wrong still seals the ones it found right: after the repair only that file is read', async () => {
    const { root, store } = await bed('verify-repair');
    const a = await stage(root, store, ID_A, 'op1');
    const sha = createHash('sha256')
      .update(readFileSync(path.join(a.dir, 'manifest.json')))
      .digest('hex');
    const args = { root, id: ID_A, manifest_sha256: sha, allowed_extra: ['ckan.ini'] };
    // A chmod to the same mode moves bin/tool's ctime: the staging's seal no longer vouches for it, so
    // the check reads it (and finds it right). a.txt gets other bytes of the same size.
    const release = path.join(root, 'releases', ID_A);
    chmodSync(path.join(release, 'bin', 'tool'), 0o755);
    writeFileSync(path.join(release, 'a.txt'), 'release a\n');
    // Past the racy window (SEAL_RACY_NS) of those changes, so the check's seal may vouch for them.
    await new Promise((r) => setTimeout(r, 250));
    const refusedCheck = await ok('verify', args);
    expect(refusedCheck).toMatchObject({ ok: false, by: 'seal', hashed: 2 });
    expect(refusedCheck.problems).toEqual(['a.txt: sha256 differs from the manifest']);
    writeFileSync(path.join(release, 'a.txt'), 'release A\n');
    expect(await ok('verify', args)).toMatchObject({ ok: true, by: 'seal', hashed: 1 });
  });

  it('delta never takes a file from an earlier release whose content changed; it is sent instead', async () => {
    const { root, store } = await bed('delta');
    const shared = { 'lib/same.txt': 'the same in A and B\n', 'lib/other.txt': 'also the same\n' };
    await stage(root, store, ID_A, 'op1', { ...TREE, ...shared });
    await ok('switch', { root, id: ID_A, op: 'op1' });
    // Changed on the host after A was verified (same size: only its content tells).
    writeFileSync(path.join(root, 'releases', ID_A, 'lib', 'same.txt'), 'THE SAME IN A AND B\n');
    const b = await writeRelease(store, ID_B, { ...TREE, ...shared, 'a.txt': 'release B\n' });
    const manifest = path.join(b.dir, 'manifest.json');
    const mtime = await archiveMtime(b.archive);
    const plan = await ok('delta', { root, id: ID_B, op: 'op2', manifest, mtime });
    expect(plan.delta).toBe(true);
    expect((plan.need as string[]).sort()).toEqual(['a.txt', 'lib/same.txt']);
    const d = await makeDeltaArchive(b.archive, plan.need as string[]);
    const sha = createHash('sha256').update(d.data).digest('hex');
    await ok(
      'receive',
      { root, id: ID_B, op: 'op2', manifest, delta: { mtime, bytes: d.data.length, sha256: sha } },
      d.data,
    );
    await ok(
      'finalize',
      { root, id: ID_B, op: 'op2', partial: plan.partial, manifest, config_file: 'ckan.ini', shared: [] },
      '',
    );
    const release = path.join(root, 'releases', ID_B);
    expect(readFileSync(path.join(release, 'lib', 'same.txt'), 'utf8')).toBe('the same in A and B\n');
    expect(readFileSync(path.join(release, 'lib', 'other.txt'), 'utf8')).toBe('also the same\n');
    expect(readFileSync(path.join(release, 'a.txt'), 'utf8')).toBe('release B\n');
    expect(readlinkSync(path.join(release, 'lib', 'link'))).toBe('../a.txt');
    expect(statSync(path.join(release, 'bin', 'tool')).mode & 0o777).toBe(0o755);
  });

  it('install-file installs by rename and keeps what it replaced; restore-file puts it back', async () => {
    const { dir, root } = await bed('server-files');
    const dest = path.join(dir, 'etc', 'site', 'ckan.conf');
    const file = (extra: object = {}) => ({ root, dest, owner: USER, group: GROUP, mode: 0o640, ...extra });
    const first = await ok('install-file', file(), 'one\n');
    expect(first).toMatchObject({ changed: true, existed: false, backup: null, made: path.dirname(dest) });
    expect(readFileSync(dest, 'utf8')).toBe('one\n');
    expect(statSync(dest).mode & 0o777).toBe(0o640);
    expect(await ok('install-file', file(), 'one\n')).toMatchObject({ changed: false });
    expect(await ok('install-file', file({ check: true }), 'two\n')).toMatchObject({ changed: true });
    expect(readFileSync(dest, 'utf8')).toBe('one\n');
    const second = await ok('install-file', file(), 'two\n');
    expect(second).toMatchObject({ changed: true, existed: true });
    expect(path.dirname(String(second.backup))).toBe(path.join(root, '.ckan-release', 'server-files'));
    expect(readFileSync(dest, 'utf8')).toBe('two\n');
    expect(readdirSync(path.dirname(dest))).toEqual(['ckan.conf']); // no temporary file left
    await ok('restore-file', { root, dest, backup: second.backup });
    expect(readFileSync(dest, 'utf8')).toBe('one\n');
    // No backup: there was no file before, so restoring removes it.
    await ok('restore-file', { root, dest, backup: null });
    expect(existsSync(dest)).toBe(false);
    // Refusals: a relative path, a symlink, a backup from elsewhere, a user the host lacks.
    expect((await refused('install-file', file({ dest: 'etc/x.conf' }), 'x')).kind).toBe('bad-input');
    symlinkSync(path.join(dir, 'elsewhere'), dest);
    expect((await refused('install-file', file(), 'x')).message).toMatch(/is a symlink/);
    expect(lstatSync(dest).isSymbolicLink()).toBe(true);
    expect(existsSync(path.join(dir, 'elsewhere'))).toBe(false);
    rmSync(dest);
    expect(
      (await refused('restore-file', { root, dest, backup: path.join(dir, 'etc', 'passwd') })).kind,
    ).toBe('bad-input');
    expect(
      (await refused('install-file', file({ owner: 'ckan-release-no-such-user' }), 'x')).message,
    ).toMatch(/no user u?'ckan-release-no-such-user'/);
  });

  it('health: the Host header and the query are sent, a redirect is followed, an error status named', async () => {
    const seen: { url?: string; host?: string; version: string }[] = [];
    const server = http.createServer((req, res) => {
      seen.push({ url: req.url, host: req.headers.host, version: req.httpVersion });
      if (req.url === '/moved') {
        res.writeHead(302, { Location: '/api/3/action/status_show?x=1' });
        return res.end();
      }
      if (req.url === '/broken') {
        res.writeHead(500);
        return res.end('no');
      }
      res.setHeader('Content-Type', 'application/json');
      // Written in two pieces, without a Content-Length: read to the end of the answer.
      res.write('{"success": true, "result": {"ckan_version": "2.11.5", ');
      res.end('"extensions": ["stats", "showcase"]}}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const plugins = ['stats', 'showcase'];
      const direct = await ok('health', {
        url: `${base}/api/3/action/status_show?x=1`,
        host: 'site.test',
        timeout: 1,
        plugins,
      });
      expect(direct).toMatchObject({ healthy: true, ckan_version: '2.11.5', extensions: plugins });
      expect(seen.pop()).toEqual({ url: '/api/3/action/status_show?x=1', host: 'site.test', version: '1.0' });
      expect(await ok('health', { url: `${base}/moved`, timeout: 1, plugins })).toMatchObject({
        healthy: true,
      });
      expect(seen.map((x) => x.url)).toEqual(['/moved', '/moved', '/api/3/action/status_show?x=1']);
      const r = await refused('health', { url: `${base}/broken`, timeout: 0, plugins });
      expect(r.message).toBe(`${base}/broken did not become healthy within 0s: HTTP 500`);
    } finally {
      server.close();
    }
  });

  it('health: unhealthy after the timeout, saying which plugin status_show lacks', async () => {
    const server = http.createServer((_req, res) => {
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ success: true, result: { ckan_version: '2.9.11', extensions: ['stats'] } }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/3/action/status_show`;
      const r = await refused('health', { url, timeout: 1, plugins: ['stats', 'showcase'] });
      expect(r.kind).toBe('unhealthy');
      expect(r.message).toBe(
        `${url} did not become healthy within 1s: status_show answered without plugins showcase`,
      );
    } finally {
      server.close();
    }
  });
});
