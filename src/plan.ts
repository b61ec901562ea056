// The plans: what setup, ship, promote, rollback and unlock do on each host, decided by pure functions
// from the facts read from the hosts (no I/O here). The executors (deploy/deploy.ts, deploy/setup.ts,
// commands/unlock.ts) carry a plan out; --dry-run prints the same plan, as text or as one JSON object,
// and stops. Every decision lives here once: the preflight (hostCompatibility), the rollback target,
// prune (what to remove and why), the `once` hooks, whether a release is sent or verified in place,
// setup's adoption. The host agent is told what to do and keeps only its safety refusals (pruneRefusal).
import { adoptedSkips, isAdopted } from './artifact/adopted.js';
import { fileCount, type Manifest } from './artifact/manifest.js';
import { defaultVenv, setupDirs, tmpRelative } from './layout.js';

export { setupDirs };

/** A ledger entry as the tool reads it (the agent sends each whole; these fields are the ones decided on). */
export interface LedgerEntry {
  event: string;
  release?: string;
  time?: string;
}

/**
 * What the host agent's `facts` says about a host (the one type for it): read before every operation,
 * and the only input of its plan besides the config and the manifest.
 */
export interface HostFacts {
  /** The interpreter the agent ran with. */
  python: { path: string; version: string; implementation?: string };
  /** /etc/os-release ID and VERSION_ID (absent from agents before this field). */
  os?: { id: string | null; version_id: string | null };
  /** Of the libraries asked about (the manifest's), those the host's dynamic linker would not find. */
  missing_libraries?: string[];
  /** Whether releases/, shared/ and .ckan-release/ exist. */
  layout: boolean;
  current: string | null;
  /** adopted: setup's link to <root>/default (artifact/adopted.ts); absent from older agents. */
  releases: { id: string; state: string; time?: string | null; adopted?: boolean }[];
  /** Directories under releases/ of interrupted operations (.partial-*, .prune-*). */
  partials: string[];
  /** Names in .ckan-release/tmp (files of operations, this one's or interrupted ones'). */
  tmp?: string[];
  lock: Record<string, unknown> | null;
  lock_expired: boolean;
  disk_free?: number | null;
  /** The ledger's last 200 entries. */
  ledger: LedgerEntry[];
  /**
   * The ledger's last `healthy` and last `bad` entry of each release, in ledger order, however long the
   * ledger: all rollbackTarget needs (the agent only selects them; the rule is here).
   */
  verdicts?: LedgerEntry[];
  /** Which of the directories asked about (args `dirs`: setup's) exist. */
  existing?: string[];
  /** Whether <root>/default/bin/python exists (a CKAN installed the old way, for setup to adopt). */
  default_python?: boolean;
}

/** The Debian/Ubuntu and RPM packages of the sonames CKAN's compiled requirements need. */
const LIBRARY_PACKAGES: Record<string, [apt: string, rpm: string]> = {
  'libpq.so.5': ['libpq5', 'libpq'],
  'libxml2.so.2': ['libxml2', 'libxml2'],
  'libxslt.so.1': ['libxslt1.1', 'libxslt'],
  'libexslt.so.0': ['libxslt1.1', 'libxslt'],
  'libyaml-0.so.2': ['libyaml-0-2', 'libyaml'],
  'libmagic.so.1': ['libmagic1', 'file-libs'],
  'libffi.so.8': ['libffi8', 'libffi'],
  'libssl.so.3': ['libssl3', 'openssl-libs'],
  'libcrypto.so.3': ['libssl3', 'openssl-libs'],
  'libz.so.1': ['zlib1g', 'zlib'],
  'libgeos_c.so.1': ['libgeos-c1v5', 'geos'],
};

const RHEL_LIKE = new Set(['rhel', 'centos', 'rocky', 'almalinux', 'ol', 'fedora']);

/** Same OS release: the same ID and VERSION_ID; for RHEL and its rebuilds the major version (9.3 = 9.4). */
function sameOs(a: { id: string | null; version_id: string | null }, b: typeof a): boolean {
  if (a.id !== b.id) return false;
  const v = (x: string | null) => (x && RHEL_LIKE.has(a.id ?? '') ? x.split('.')[0]! : x);
  return v(a.version_id) === v(b.version_id);
}

function majorMinor(version: string): string {
  return version.split('.').slice(0, 2).join('.');
}

/**
 * Whether a host can run the artifact: the OS release the builder ran, the Python (major.minor and
 * implementation: the binary interface; the patch level does not matter) and every shared library
 * the release's ELF files need. The one rule for the preflight of ship, promote and rollback, and for
 * their --dry-run plans. Facts of older agents or manifests without a field are not judged on it, nor
 * is a release setup adopted (no manifest: adoptedSkips says so).
 */
export function hostCompatibility(m: Manifest, f: HostFacts): string[] {
  const problems: string[] = [];
  if (isAdopted(m)) return problems;
  const built = m.builder.os_release;
  if (built && f.os && !sameOs(built, f.os))
    problems.push(
      `the host runs ${f.os.id ?? '?'} ${f.os.version_id ?? '?'}, the artifact was built on ${built.id ?? '?'} ${built.version_id ?? '?'} (builder ${m.builder.os})`,
    );
  const want = m.builder.python;
  const wrongImpl = !!(
    want.implementation &&
    f.python.implementation &&
    want.implementation !== f.python.implementation
  );
  if (majorMinor(f.python.version) !== majorMinor(want.version) || wrongImpl)
    problems.push(
      `the host's ${want.path} is ${f.python.implementation ?? ''}${f.python.implementation ? ' ' : ''}Python ${f.python.version}, the artifact was built for ${want.implementation ?? ''}${want.implementation ? ' ' : ''}Python ${majorMinor(want.version)} (builder ${m.builder.os})`,
    );
  const missing = f.missing_libraries ?? [];
  if (missing.length) {
    const apt = ['debian', 'ubuntu'].includes(f.os?.id ?? '');
    const packages = [
      ...new Set(missing.map((l) => LIBRARY_PACKAGES[l]?.[apt ? 0 : 1]).filter((p): p is string => !!p)),
    ];
    const hint = packages.length ? ` (${apt ? 'apt-get install' : 'yum install'} ${packages.join(' ')})` : '';
    problems.push(`releases need ${missing.join(', ')}, which this host lacks${hint}`);
  }
  return problems;
}

export interface ServerFilePlan {
  dest: string;
  /** install: its rendering differs from the host's file; unknown: the host has no agent to compare. */
  change: 'install' | 'unchanged' | 'unknown';
  reload?: string;
}

export interface HostPlan {
  host: string;
  current: string | null;
  target: string;
  transfer: { mode: 'none' | 'full archive'; bytes: number; files: number; why: string };
  lock: { holder: string; expired: boolean } | null;
  hooks: { before_switch: string[]; after_switch: string[] };
  server_files: ServerFilePlan[];
  restart: string;
  healthcheck: string;
  prune: PruneItem[];
  rollback_target_after: string | null;
  /** What would make the operation refuse or fail on this host. */
  problems: string[];
  /** Checks left out, and why: for a release setup adopted (artifact/adopted.ts adoptedSkips). */
  skipped: string[];
}

/** One thing prune removes: a release (release), or a leftover of an interrupted operation (path). */
export interface PruneItem {
  release: string | null;
  /** A partial directory under releases/, or .ckan-release/tmp/<name>. */
  path?: string;
  why: string;
}

/**
 * The plan of a ship, promote or rollback: what the executor (deploy/deploy.ts) carries out, and what
 * --dry-run prints. `dry_run` says which of the two it is; nothing else differs.
 */
export interface DeployPlan {
  operation: string;
  environment: string;
  release: string;
  dry_run: boolean;
  hosts: HostPlan[];
}

export interface PlanSettings {
  keepReleases: number;
  beforeSwitch: { run: string; once: boolean }[];
  afterSwitch: { run: string; once: boolean }[];
  restart: string;
  healthcheck: string;
}

/**
 * The rollback target: the last release found healthy before `current`, never one marked bad since
 * (healthy again after being bad: a target again). The one rule: status, rollback and every plan's
 * `rollback_target_after` use it; the agent only selects the entries (HostFacts.verdicts).
 */
export function rollbackTarget(entries: LedgerEntry[], current: string | null): string | null {
  const bad = new Set<string>();
  const candidates: string[] = [];
  for (const e of entries) {
    if (!e.release) continue;
    if (e.event === 'bad') bad.add(e.release);
    if (e.event === 'healthy') {
      bad.delete(e.release);
      if (e.release !== current) {
        const at = candidates.indexOf(e.release);
        if (at >= 0) candidates.splice(at, 1);
        candidates.push(e.release);
      }
    }
  }
  return [...candidates].reverse().find((id) => !bad.has(id) && id !== current) ?? null;
}

/** The entries the rollback target is decided on: the verdicts (whole ledger) when the agent sends them. */
export function verdictsOf(f: Pick<HostFacts, 'ledger' | 'verdicts'>): LedgerEntry[] {
  return f.verdicts ?? f.ledger;
}

/** The host's rollback target now. */
export function hostRollbackTarget(f: Pick<HostFacts, 'ledger' | 'verdicts' | 'current'>): string | null {
  return rollbackTarget(verdictsOf(f), f.current);
}

/** Whether the ledger records `id` healthy on the host (promote, `requires:`). */
export function healthyOn(f: Pick<HostFacts, 'ledger' | 'verdicts'>, id: string): boolean {
  return verdictsOf(f).some((e) => e.event === 'healthy' && e.release === id);
}

/** Why a release is pruned: also what the ledger's `pruned` entry says. */
export function keepRule(keep: number): string {
  return `beyond keep_releases=${keep}`;
}

export const PARTIAL_WHY = 'partial directory left by an interrupted operation';
export const TMP_WHY = 'temporary file left by an interrupted operation';

/**
 * The prune rule: keep the newest `keep` releases by ID (by build time, never by mtime), counting the
 * current release and the rollback target, which are never removed; remove partial directories and
 * temporary files of interrupted operations (`tmp`: names in .ckan-release/tmp). Run on the facts read
 * before the operation, with the release it installs among `releases`: the operation holds the lock,
 * so nothing else changes them in between, and what it writes itself is not among them.
 */
export function prunePlan(
  releases: string[],
  partials: string[],
  current: string | null,
  target: string | null,
  keep: number,
  tmp: string[] = [],
): PruneItem[] {
  const protect = new Set([current, target].filter((x): x is string => !!x));
  const newestFirst = [...new Set(releases)].sort().reverse();
  const kept = newestFirst.filter((id) => !protect.has(id)).slice(0, Math.max(0, keep - protect.size));
  const keptSay = [
    ...(current ? [`${current} (current)`] : []),
    ...(target && target !== current ? [`${target} (rollback target)`] : []),
    ...kept,
  ].join(', ');
  return [
    ...newestFirst
      .filter((id) => !protect.has(id) && !kept.includes(id))
      .map((id) => ({ release: id, why: `${keepRule(keep)}; kept: ${keptSay}` })),
    ...partials.map((p) => ({ release: null, path: p, why: PARTIAL_WHY })),
    ...tmp.map((name) => ({ release: null, path: tmpRelative(name), why: TMP_WHY })),
  ];
}

/** The release IDs the tool accepts (the agent's check_id: the same characters, at most 64). */
const ID_CHARS = /^[0-9a-zZ-]{1,64}$/;

/**
 * The prune safety rule, which the host agent enforces too (ckan_release_host.py prune_refusal; a unit
 * test runs both on one table of cases): why an item must not be removed, or null. Never `current`,
 * nor a release the running operation protects (its new release, the rollback target), nor a leftover
 * of the running operation (`op` in its name), nor anything that is not a release ID, a partial
 * directory directly under releases/, or a file directly in .ckan-release/tmp.
 */
export function pruneRefusal(
  item: { release?: string | null; path?: string },
  ctx: { current: string | null; protect: string[]; op: string },
): 'current' | 'protected' | 'running operation' | 'outside the layout' | null {
  if (item.release) {
    if (!ID_CHARS.test(item.release)) return 'outside the layout';
    if (item.release === ctx.current) return 'current';
    if (ctx.protect.includes(item.release)) return 'protected';
    return null;
  }
  const p = item.path ?? '';
  const prefix = tmpRelative('');
  const tmp = p.startsWith(prefix) ? p.slice(prefix.length) : null;
  const name = tmp ?? p;
  const plain = name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0');
  if (!plain || (tmp === null && !/^\.(partial|prune)-/.test(name))) return 'outside the layout';
  if (tmp !== null ? name.startsWith(`${ctx.op}-`) : name.includes(ctx.op)) return 'running operation';
  return null;
}

export function describeLock(o: Record<string, unknown>): string {
  const since =
    typeof o.since === 'number' ? new Date(o.since * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z') : '?';
  return `${String(o.user ?? '?')}@${String(o.machine ?? '?')} (pid ${String(o.pid ?? '?')}, ${String(o.operation ?? '?')}, since ${since})`;
}

/** One host's input to planDeploy. */
export interface PlanHost {
  name: string;
  facts: HostFacts;
  serverFiles: ServerFilePlan[];
  /** Why the web server recipe or templates cannot work on the host (server-facts.ts). */
  serverProblems?: string[];
  /** The Host header the health check sends. */
  healthHost?: string;
}

/** A rollback marks the release it switches away from bad (no rollback target again unless named). */
export function marksPreviousBad(operation: string): boolean {
  return operation === 'rollback';
}

/** The plan of a ship, promote or rollback of manifest `m` from every host's facts. */
export function planDeploy(
  operation: string,
  environment: string,
  m: Manifest,
  hosts: PlanHost[],
  settings: PlanSettings,
  opts: { dryRun?: boolean } = {},
): DeployPlan {
  const markPreviousBad = marksPreviousBad(operation);
  return {
    operation,
    environment,
    release: m.id,
    dry_run: opts.dryRun ?? true,
    hosts: hosts.map(({ name, facts: f, serverFiles, serverProblems, healthHost }, i) => {
      const has = f.releases.some((r) => r.id === m.id);
      const previous = f.current;
      // The ledger as it would be after success: the release healthy, and for a rollback the release
      // switched away from marked bad.
      const after = [
        ...verdictsOf(f),
        { event: 'healthy', release: m.id },
        ...(markPreviousBad && previous && previous !== m.id ? [{ event: 'bad', release: previous }] : []),
      ];
      const target = rollbackTarget(after, m.id);
      const problems: string[] = [];
      if (!f.layout) problems.push(`not set up: run \`ckan-release setup ${environment}\` first`);
      else problems.push(...hostCompatibility(m, f));
      if (f.lock && !f.lock_expired) problems.push(`locked by ${describeLock(f.lock)}`);
      const adopted = isAdopted(m);
      if (adopted && !f.releases.some((r) => r.id === m.id && r.adopted))
        problems.push(
          `${m.id} is not the release setup adopted on this host (releases/${m.id} -> ../default): it cannot be sent`,
        );
      else if (!has && fileCount(m) === 0)
        problems.push(`${m.id} is neither on the host nor in the local store: it cannot be sent`);
      problems.push(...(serverProblems ?? []));
      return {
        host: name,
        current: previous,
        target: m.id,
        transfer: has
          ? {
              mode: 'none',
              bytes: 0,
              files: 0,
              why: adopted
                ? `the release setup adopted (releases/${m.id} -> ${m.adopted!.from}): not verified, its own config kept`
                : 'already on the host: verified against the manifest, config rendered anew',
            }
          : {
              mode: 'full archive',
              bytes: m.archive.bytes,
              files: fileCount(m),
              why: 'not on the host: at most the whole release archive is sent (only the files it lacks when it holds earlier releases)',
            },
        lock: f.lock ? { holder: describeLock(f.lock), expired: f.lock_expired } : null,
        hooks: {
          before_switch: settings.beforeSwitch.filter((h) => !h.once || i === 0).map((h) => h.run),
          after_switch: settings.afterSwitch.filter((h) => !h.once || i === 0).map((h) => h.run),
        },
        server_files: serverFiles,
        restart: settings.restart,
        healthcheck: healthHost ? `${settings.healthcheck} (Host: ${healthHost})` : settings.healthcheck,
        prune: prunePlan(
          [...f.releases.map((r) => r.id), m.id],
          f.partials,
          m.id,
          target,
          settings.keepReleases,
          f.tmp ?? [],
        ),
        rollback_target_after: target,
        problems,
        skipped: adoptedSkips(m),
      };
    }),
  };
}

/**
 * What the agent's `prune` is told to do on one host, from the plan: the releases to remove and the
 * leftovers, with what it must protect whatever it is told (the new current release's rollback target).
 */
export function pruneInstructions(
  h: HostPlan,
  keep: number,
): { remove: { release: string; why: string }[]; paths: { path: string; why: string }[]; protect: string[] } {
  return {
    remove: h.prune.flatMap((x) => (x.release ? [{ release: x.release, why: keepRule(keep) }] : [])),
    paths: h.prune.flatMap((x) => (!x.release && x.path ? [{ path: x.path, why: x.why }] : [])),
    protect: h.rollback_target_after ? [h.rollback_target_after] : [],
  };
}

/**
 * The release a rollback without --to switches to: the rollback target every host agrees on. A string
 * is the refusal (the hosts disagree, or have none).
 */
export function commonRollbackTarget(
  hosts: { name: string; facts: Pick<HostFacts, 'ledger' | 'verdicts' | 'current'> }[],
): { id: string } | { refusal: string } {
  const each = hosts.map((h) => ({ name: h.name, target: hostRollbackTarget(h.facts) }));
  const targets = [...new Set(each.map((x) => x.target))];
  if (targets.length !== 1 || !targets[0])
    return { refusal: each.map((x) => `${x.name}=${x.target ?? 'none'}`).join(', ') };
  return { id: targets[0] };
}

/**
 * The release promote ships from FROM: the one every host of FROM runs and recorded healthy. A
 * string is the refusal, worded for the error.
 */
export function promoteSource(
  from: string,
  hosts: { name: string; facts: Pick<HostFacts, 'ledger' | 'verdicts' | 'current'> }[],
): { id: string } | { refusal: string } {
  const currents = [...new Set(hosts.map((h) => h.facts.current))];
  if (currents.length !== 1 || !currents[0])
    return {
      refusal: `${from} does not run one release on every host: ${hosts.map((h) => `${h.name}=${h.facts.current ?? 'none'}`).join(', ')}`,
    };
  const id = currents[0];
  const notHealthy = hosts.flatMap((h) => (healthyOn(h.facts, id) ? [] : [h.name]));
  if (notHealthy.length)
    return { refusal: `${id} is not recorded healthy on ${notHealthy.join(', ')} of ${from}` };
  return { id };
}

/** The plan of `unlock`: whose lock each host holds, which the executor removes (that lock only). */
export interface UnlockPlan {
  operation: 'unlock';
  environment: string;
  dry_run: boolean;
  hosts: { host: string; lock: { holder: string; expired: boolean; token: string | null } | null }[];
}

export function planUnlock(
  environment: string,
  hosts: { name: string; facts: Pick<HostFacts, 'lock' | 'lock_expired'> }[],
  dryRun = true,
): UnlockPlan {
  return {
    operation: 'unlock',
    environment,
    dry_run: dryRun,
    hosts: hosts.map(({ name, facts: f }) => ({
      host: name,
      lock: f.lock
        ? {
            holder: describeLock(f.lock),
            expired: f.lock_expired,
            token: typeof f.lock.token === 'string' ? f.lock.token : null,
          }
        : null,
    })),
  };
}

export function formatUnlockPlan(p: UnlockPlan): string {
  const lines = [`plan: unlock ${p.environment} (dry run: nothing is changed)`];
  for (const h of p.hosts)
    lines.push(
      `  ${h.host}: ${h.lock ? `would remove the lock of ${h.lock.holder}${h.lock.expired ? ' (expired)' : ''}` : 'not locked'}`,
    );
  return lines.map((l) => `${l}\n`).join('');
}

function size(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** The plan as text; the first lines of each host keep the format scripts already read. */
export function formatDeployPlan(p: DeployPlan): string {
  const lines = [`plan: ${p.operation} ${p.release} to ${p.environment} (dry run: nothing is changed)`];
  const total = p.hosts.reduce((n, h) => n + h.transfer.bytes, 0);
  for (const h of p.hosts) {
    lines.push(`  ${h.host}: current ${h.current ?? 'none'} -> ${h.target}`);
    lines.push(
      h.transfer.mode === 'none'
        ? `    transfer: none (${h.skipped.length ? h.transfer.why : 'already on the host'})`
        : `    transfer: ${size(h.transfer.bytes)} (${h.transfer.bytes} bytes, ${h.transfer.files} files): at most the full archive; only the files the host lacks when it holds earlier releases`,
    );
    for (const x of h.problems) lines.push(`    WOULD FAIL: ${x}`);
    for (const x of h.skipped) lines.push(`    skipped: ${x}`);
    if (h.lock)
      lines.push(`    LOCKED by ${h.lock.holder}${h.lock.expired ? ' (expired: would be taken over)' : ''}`);
    for (const run of h.hooks.before_switch) lines.push(`    before_switch: ${run}`);
    for (const f of h.server_files)
      lines.push(
        `    server file ${f.dest}: ${
          f.change === 'install'
            ? `would be installed before the switch${f.reload ? `, then: ${f.reload}` : ''}`
            : f.change === 'unchanged'
              ? 'unchanged'
              : 'would be compared and installed if different (the host agent is not installed yet)'
        }`,
      );
    lines.push(`    restart: ${h.restart}`, `    health check: ${h.healthcheck}`);
    for (const run of h.hooks.after_switch) lines.push(`    after_switch: ${run}`);
    for (const x of h.prune) lines.push(`    prune: ${x.release ?? x.path} (${x.why})`);
    if (!h.prune.length) lines.push('    prune: nothing');
    lines.push(`    rollback target afterwards: ${h.rollback_target_after ?? 'none'}`);
  }
  lines.push(
    `  total to send: ${size(total)} (${total} bytes) to ${p.hosts.filter((h) => h.transfer.bytes).length} of ${p.hosts.length} host(s)`,
  );
  return lines.map((l) => `${l}\n`).join('');
}

export interface SetupPlan {
  operation: 'setup';
  environment: string;
  dry_run: boolean;
  hosts: {
    host: string;
    make: string[];
    adopt: string | null;
    adopt_why: string;
    chown: string | null;
    server_files: ServerFilePlan[];
    /** What would make setup refuse on this host. */
    problems: string[];
  }[];
}

/** What `setup` would make on each host, and whether it would adopt <root>/default. */
export function planSetup(
  environment: string,
  root: string,
  shared: string[],
  owner: string | null,
  hosts: {
    name: string;
    facts: Pick<HostFacts, 'current' | 'existing' | 'default_python'>;
    serverFiles: ServerFilePlan[];
    serverProblems?: string[];
  }[],
  dryRun = true,
): SetupPlan {
  const dirs = setupDirs(root, shared);
  return {
    operation: 'setup',
    environment,
    dry_run: dryRun,
    hosts: hosts.map(({ name, facts, serverFiles, serverProblems }) => {
      // The agent's setup adopts under the same condition (and refuses to otherwise).
      const adopt = !facts.current && facts.default_python ? defaultVenv(root) : null;
      return {
        host: name,
        make: dirs.filter((d) => !(facts.existing ?? []).includes(d)),
        adopt,
        adopt_why: facts.current
          ? `no: the host already runs release ${facts.current}`
          : facts.default_python
            ? `${defaultVenv(root)} has bin/python and there is no current release`
            : `nothing to adopt: no ${defaultVenv(root)}/bin/python`,
        chown: owner && shared.length ? owner : null,
        server_files: serverFiles,
        problems: serverProblems ?? [],
      };
    }),
  };
}

export function formatSetupPlan(p: SetupPlan, root: string): string {
  const lines = [`plan: setup ${p.environment} (dry run: nothing is changed)`];
  for (const h of p.hosts) {
    lines.push(
      `  ${h.host}: ${h.make.length ? `would make ${h.make.join(', ')}` : `${root} is already set up`}`,
    );
    for (const x of h.problems) lines.push(`    WOULD FAIL: ${x}`);
    lines.push(`    adopt: ${h.adopt ? `${h.adopt} as the first release (${h.adopt_why})` : h.adopt_why}`);
    if (h.chown) lines.push(`    chown ${h.chown}: the shared directories`);
    for (const f of h.server_files)
      lines.push(
        `    server file ${f.dest}: ${
          f.change === 'unchanged'
            ? 'unchanged'
            : f.change === 'install'
              ? `would be installed${f.reload ? `, then: ${f.reload}` : ''}`
              : `would be installed if different${f.reload ? `, then: ${f.reload}` : ''} (not compared: the host agent is not installed yet)`
        }`,
      );
  }
  return lines.map((l) => `${l}\n`).join('');
}
