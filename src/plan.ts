// Plans for --dry-run: what ship, promote, rollback and setup would do on each host, decided by pure
// functions from the facts read from the hosts (no I/O here), and printed as text or as one JSON object.
// The prune and rollback-target rules are the host agent's (assets/host/ckan_release_host.py), replayed
// on the ledger as it would be after the operation.
import { adoptedSkips, isAdopted } from './artifact/adopted.js';
import type { Manifest } from './artifact/manifest.js';

export interface PlanFacts {
  layout: boolean;
  current: string | null;
  rollback_target: string | null;
  releases: { id: string; state: string; adopted?: boolean }[];
  partials: string[];
  lock: Record<string, unknown> | null;
  lock_expired: boolean;
  python: { path: string; version: string; implementation?: string };
  /** /etc/os-release ID and VERSION_ID (absent from agents before this field). */
  os?: { id: string | null; version_id: string | null };
  /** Of the libraries asked about (the manifest's), those the host's dynamic linker would not find. */
  missing_libraries?: string[];
  ledger: { event: string; release?: string }[];
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
export function hostCompatibility(m: Manifest, f: PlanFacts): string[] {
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
  prune: { release: string | null; path?: string; why: string }[];
  rollback_target_after: string | null;
  /** What would make the operation refuse or fail on this host. */
  problems: string[];
  /** Checks left out, and why: for a release setup adopted (artifact/adopted.ts adoptedSkips). */
  skipped: string[];
}

export interface DeployPlan {
  operation: string;
  environment: string;
  release: string;
  dry_run: true;
  hosts: HostPlan[];
}

export interface PlanSettings {
  keepReleases: number;
  beforeSwitch: { run: string; once: boolean }[];
  afterSwitch: { run: string; once: boolean }[];
  restart: string;
  healthcheck: string;
}

/** The agent's rule: the last release found healthy before `current`, never one marked bad since. */
export function rollbackTarget(
  entries: { event: string; release?: string }[],
  current: string | null,
): string | null {
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

/**
 * The agent's prune rule: keep the newest `keep` releases by ID, counting the current release and the
 * rollback target, which are never removed; remove partial directories of interrupted operations.
 */
export function prunePlan(
  releases: string[],
  partials: string[],
  current: string | null,
  target: string | null,
  keep: number,
): HostPlan['prune'] {
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
      .map((id) => ({ release: id, why: `beyond keep_releases=${keep}; kept: ${keptSay}` })),
    ...partials.map((p) => ({
      release: null,
      path: p,
      why: 'partial directory left by an interrupted operation',
    })),
  ];
}

export function describeLock(o: Record<string, unknown>): string {
  const since =
    typeof o.since === 'number' ? new Date(o.since * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z') : '?';
  return `${String(o.user ?? '?')}@${String(o.machine ?? '?')} (pid ${String(o.pid ?? '?')}, ${String(o.operation ?? '?')}, since ${since})`;
}

/** The plan of a ship, promote or rollback of manifest `m` from every host's facts. */
export function planDeploy(
  operation: string,
  environment: string,
  m: Manifest,
  hosts: {
    name: string;
    facts: PlanFacts;
    serverFiles: ServerFilePlan[];
    /** Why the web server recipe or templates cannot work on the host (server-facts.ts). */
    serverProblems?: string[];
    /** The Host header the health check sends. */
    healthHost?: string;
  }[],
  settings: PlanSettings,
  opts: { markPreviousBad?: boolean } = {},
): DeployPlan {
  return {
    operation,
    environment,
    release: m.id,
    dry_run: true,
    hosts: hosts.map(({ name, facts: f, serverFiles, serverProblems, healthHost }, i) => {
      const has = f.releases.some((r) => r.id === m.id);
      const previous = f.current;
      // The ledger as it would be after success: the release healthy, and for a rollback the release
      // switched away from marked bad.
      const after = [
        ...f.ledger,
        { event: 'healthy', release: m.id },
        ...(opts.markPreviousBad && previous && previous !== m.id
          ? [{ event: 'bad', release: previous }]
          : []),
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
      else if (!has && m.files.length === 0)
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
              files: m.files.length,
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
        ),
        rollback_target_after: target,
        problems,
        skipped: adoptedSkips(m),
      };
    }),
  };
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

export interface SetupHostFacts {
  /** Directories that exist, of those setup makes. */
  existing: string[];
  current: string | null;
  /** Whether <root>/default/bin/python exists (a CKAN installed the old way, to adopt). */
  default_python: boolean;
}

export interface SetupPlan {
  operation: 'setup';
  environment: string;
  dry_run: true;
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

/** The directories setup makes (if missing): the layout, the agent's directory, the shared paths. */
export function setupDirs(root: string, shared: string[]): string[] {
  return [
    root,
    `${root}/.ckan-release`,
    `${root}/.ckan-release/agent`,
    `${root}/releases`,
    `${root}/shared`,
    ...shared.map((x) => `${root}/shared/${x}`),
  ];
}

/** What `setup` would make on each host, and whether it would adopt <root>/default. */
export function planSetup(
  environment: string,
  root: string,
  shared: string[],
  owner: string | null,
  hosts: { name: string; facts: SetupHostFacts; serverFiles: ServerFilePlan[]; serverProblems?: string[] }[],
): SetupPlan {
  const dirs = setupDirs(root, shared);
  return {
    operation: 'setup',
    environment,
    dry_run: true,
    hosts: hosts.map(({ name, facts, serverFiles, serverProblems }) => {
      const adopt = !facts.current && facts.default_python ? `${root}/default` : null;
      return {
        host: name,
        make: dirs.filter((d) => !facts.existing.includes(d)),
        adopt,
        adopt_why: facts.current
          ? `no: the host already runs release ${facts.current}`
          : facts.default_python
            ? `${root}/default has bin/python and there is no current release`
            : `nothing to adopt: no ${root}/default/bin/python`,
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
