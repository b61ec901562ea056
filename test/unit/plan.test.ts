// Dry-run plans from host facts: the agent's prune and rollback-target rules replayed on the ledger as
// it would be after the operation, and the plan's text.
import { describe, expect, it } from 'vitest';
import { adoptedManifest } from '../../src/artifact/adopted.js';
import type { Manifest } from '../../src/artifact/manifest.js';
import {
  formatDeployPlan,
  formatSetupPlan,
  hostCompatibility,
  planDeploy,
  planSetup,
  commonRollbackTarget,
  formatUnlockPlan,
  planUnlock,
  promoteSource,
  pruneInstructions,
  prunePlan,
  pruneRefusal,
  rollbackTarget,
  type HostFacts,
  type PlanSettings,
} from '../../src/plan.js';

const [R1, R2, R3, R4] = [
  '20261101000000Z-aaaaaaaa',
  '20261102000000Z-bbbbbbbb',
  '20261103000000Z-cccccccc',
  '20261104000000Z-dddddddd',
];

const manifest = (id: string, files = 3): Manifest =>
  ({
    id,
    builder: { os: 'debian12', python: { path: '/usr/bin/python3', version: '3.11.2' } },
    archive: { file: 'release.tar.gz', bytes: 31_234_567, sha256: 'x' },
    files: Array.from({ length: files }, (_, i) => ({ path: `f${i}`, size: 1 })),
  }) as unknown as Manifest;

const settings: PlanSettings = {
  keepReleases: 2,
  beforeSwitch: [
    { run: 'ckan db upgrade', once: true },
    { run: 'echo each', once: false },
  ],
  afterSwitch: [],
  restart: 'apache-graceful',
  healthcheck: 'http://127.0.0.1/api/3/action/status_show',
};

function facts(over: Partial<HostFacts>): HostFacts {
  return {
    layout: true,
    current: null,
    releases: [],
    partials: [],
    lock: null,
    lock_expired: false,
    python: { path: '/usr/bin/python3', version: '3.11.2' },
    ledger: [],
    ...over,
  };
}

const healthy = (...ids: string[]) => ids.map((release) => ({ event: 'healthy', release }));

describe('rollbackTarget', () => {
  it('is the last healthy release before the current one, never a bad one', () => {
    expect(rollbackTarget(healthy(R1, R2, R3), R3)).toBe(R2);
    expect(rollbackTarget([...healthy(R1, R2, R3), { event: 'bad', release: R2 }], R3)).toBe(R1);
    // Healthy again after being bad: a target again.
    expect(rollbackTarget([...healthy(R1, R2), { event: 'bad', release: R1 }, ...healthy(R1, R3)], R3)).toBe(
      R1,
    );
    expect(rollbackTarget(healthy(R1), R1)).toBeNull();
  });
});

describe('prunePlan', () => {
  it('keeps keep_releases counting the current release and the rollback target, newest first', () => {
    expect(prunePlan([R1, R2, R3, R4], [], R4, R1, 3)).toEqual([
      { release: R2, why: `beyond keep_releases=3; kept: ${R4} (current), ${R1} (rollback target), ${R3}` },
    ]);
    expect(prunePlan([R1, R2], ['.partial-x-op1'], R2, null, 1)).toEqual([
      { release: R1, why: `beyond keep_releases=1; kept: ${R2} (current)` },
      { release: null, path: '.partial-x-op1', why: 'partial directory left by an interrupted operation' },
    ]);
    expect(prunePlan([R1, R2], [], R2, R1, 1)).toEqual([]);
  });
});

describe('planDeploy', () => {
  it('ship: current -> target, the full archive when the host lacks the release, once-hooks on the first host', () => {
    const p = planDeploy(
      'ship',
      'production',
      manifest(R4),
      [
        {
          name: 'web1',
          facts: facts({
            current: R3,
            releases: [R1, R2, R3].map((id) => ({ id, state: 'healthy' })),
            ledger: healthy(R1, R2, R3),
          }),
          serverFiles: [],
        },
        {
          name: 'web2',
          facts: facts({
            current: R3,
            releases: [R3, R4].map((id) => ({ id, state: 'healthy' })),
            ledger: healthy(R3),
          }),
          serverFiles: [{ dest: '/etc/x', change: 'install', reload: 'reload x' }],
        },
      ],
      settings,
    );
    const [w1, w2] = p.hosts;
    expect(w1).toMatchObject({
      current: R3,
      target: R4,
      transfer: { mode: 'full archive', bytes: 31_234_567, files: 3 },
      hooks: { before_switch: ['ckan db upgrade', 'echo each'] },
      rollback_target_after: R3,
      prune: [
        { release: R2, why: expect.stringContaining('beyond keep_releases=2') },
        { release: R1, why: expect.stringContaining('beyond keep_releases=2') },
      ],
      problems: [],
    });
    expect(w2).toMatchObject({
      transfer: { mode: 'none', bytes: 0 },
      hooks: { before_switch: ['echo each'] },
      prune: [],
    });
    const text = formatDeployPlan(p);
    expect(text).toContain(
      `plan: ship ${R4} to production (dry run: nothing is changed)\n  web1: current ${R3} -> ${R4}\n`,
    );
    expect(text).toContain(
      '    transfer: 31.2 MB (31234567 bytes, 3 files): at most the full archive; only the files the host lacks when it holds earlier releases\n',
    );
    expect(text).toContain('    transfer: none (already on the host)\n');
    expect(text).toContain(
      `    prune: ${R2} (beyond keep_releases=2; kept: ${R4} (current), ${R3} (rollback target))\n`,
    );
    expect(text).toContain('    server file /etc/x: would be installed before the switch, then: reload x\n');
    expect(text).toContain(`    rollback target afterwards: ${R3}\n`);
    expect(text).toContain('  total to send: 31.2 MB (31234567 bytes) to 1 of 2 host(s)\n');
  });

  it('rollback: the release switched away from becomes bad, so it is neither kept as target nor spared', () => {
    const f = facts({
      current: R3,
      releases: [R1, R2, R3].map((id) => ({ id, state: 'healthy' })),
      ledger: healthy(R1, R2, R3),
    });
    const p = planDeploy(
      'rollback',
      'prod',
      manifest(R2, 0),
      [{ name: 'web1', facts: f, serverFiles: [] }],
      settings,
    );
    expect(p.hosts[0]).toMatchObject({
      current: R3,
      target: R2,
      transfer: { mode: 'none' },
      rollback_target_after: R1,
      prune: [{ release: R3 }],
      problems: [],
    });
  });

  it('names what would make it fail: no layout, another python, a live lock, nothing to send', () => {
    const lock = { user: 'alice', machine: 'laptop', pid: 1, operation: 'ship', since: 1700000000 };
    const p = planDeploy(
      'ship',
      'prod',
      manifest(R1, 0),
      [
        { name: 'a', facts: facts({ layout: false }), serverFiles: [] },
        { name: 'b', facts: facts({ python: { path: 'p', version: '3.9.2' }, lock }), serverFiles: [] },
      ],
      settings,
    );
    expect(p.hosts[0]!.problems).toEqual([
      'not set up: run `ckan-release setup prod` first',
      `${R1} is neither on the host nor in the local store: it cannot be sent`,
    ]);
    expect(p.hosts[1]!.problems[0]).toBe(
      "the host's /usr/bin/python3 is Python 3.9.2, the artifact was built for Python 3.11 (builder debian12)",
    );
    expect(p.hosts[1]!.problems[1]).toBe('locked by alice@laptop (pid 1, ship, since 2023-11-14T22:13:20Z)');
    expect(formatDeployPlan(p)).toContain(
      '    WOULD FAIL: not set up: run `ckan-release setup prod` first\n',
    );
  });
});

describe('planDeploy: rollback to the release setup adopted from <root>/default', () => {
  const ADOPTED = '20261201210315Z-00000000';
  const m = adoptedManifest('demo', '/usr/lib/ckan', ADOPTED, 'python3|python2|python');
  const onHost = facts({
    current: R1,
    // Another python and OS than any builder's: not judged, there is no manifest to judge by.
    python: { path: '/usr/bin/python3', version: '3.7.3' },
    os: { id: 'debian', version_id: '10' },
    releases: [
      { id: ADOPTED, state: 'healthy', adopted: true },
      { id: R1, state: 'healthy' },
    ],
    ledger: [{ event: 'adopted', release: ADOPTED }, ...healthy(ADOPTED, R1)],
  });

  it('switches without sending or verifying, says what it skips, and marks the release left bad', () => {
    const p = planDeploy('rollback', 'prod', m, [{ name: 'web1', facts: onHost, serverFiles: [] }], settings);
    expect(p.hosts[0]).toMatchObject({
      current: R1,
      target: ADOPTED,
      transfer: {
        mode: 'none',
        why: `the release setup adopted (releases/${ADOPTED} -> /usr/lib/ckan/default): not verified, its own config kept`,
      },
      rollback_target_after: null,
      problems: [],
    });
    expect(p.hosts[0]!.skipped).toHaveLength(4);
    const text = formatDeployPlan(p);
    expect(text).toContain(
      `    transfer: none (the release setup adopted (releases/${ADOPTED} -> /usr/lib/ckan/default): not verified, its own config kept)\n`,
    );
    expect(text).toMatch(/^ {4}skipped: the OS, Python and library checks \(they compare/m);
    expect(text).toMatch(
      /^ {4}skipped: rendering the config \(\/usr\/lib\/ckan\/default keeps the site's own config/m,
    );
    expect(text).toMatch(
      /^ {4}skipped: the health check's plugin list .*: status_show must answer success, with any plugins$/m,
    );
    // A real release's plan skips nothing.
    expect(
      planDeploy('ship', 'prod', manifest(R1), [{ name: 'web1', facts: onHost, serverFiles: [] }], settings)
        .hosts[0]!.skipped,
    ).toEqual([]);
  });

  it('would fail on a host where that release is not the adopted link (it cannot be sent)', () => {
    const other = facts({ current: R1, releases: [{ id: R1, state: 'healthy' }] });
    const p = planDeploy('rollback', 'prod', m, [{ name: 'web2', facts: other, serverFiles: [] }], settings);
    expect(p.hosts[0]!.problems).toEqual([
      `${ADOPTED} is not the release setup adopted on this host (releases/${ADOPTED} -> ../default): it cannot be sent`,
    ]);
  });

  it('hostCompatibility judges nothing for it', () => {
    expect(hostCompatibility(m, onHost)).toEqual([]);
  });
});

describe('hostCompatibility: the preflight rule of ship, promote, rollback and their plans', () => {
  const built = (over: Partial<Manifest['builder']> = {}, libraries?: string[]): Manifest =>
    ({
      ...manifest(R1),
      builder: {
        os: 'debian12',
        python: { path: '/usr/bin/python3', version: '3.11.2', implementation: 'cpython' },
        os_release: { id: 'debian', version_id: '12' },
        ...over,
      },
      libraries,
    }) as unknown as Manifest;
  const host = (over: Partial<HostFacts> = {}) =>
    facts({
      python: { path: '/usr/bin/python3', version: '3.11.2', implementation: 'cpython' },
      os: { id: 'debian', version_id: '12' },
      missing_libraries: [],
      ...over,
    });

  it('accepts another patch level of the same Python: binary compatibility is major.minor', () => {
    expect(
      hostCompatibility(
        built(),
        host({ python: { path: '/usr/bin/python3', version: '3.11.9', implementation: 'cpython' } }),
      ),
    ).toEqual([]);
  });

  it('refuses another minor version or another implementation', () => {
    expect(
      hostCompatibility(
        built(),
        host({ python: { path: '/usr/bin/python3', version: '3.12.1', implementation: 'cpython' } }),
      ),
    ).toEqual([
      "the host's /usr/bin/python3 is cpython Python 3.12.1, the artifact was built for cpython Python 3.11 (builder debian12)",
    ]);
    expect(
      hostCompatibility(
        built(),
        host({ python: { path: '/usr/bin/python3', version: '3.11.2', implementation: 'pypy' } }),
      ),
    ).toEqual([
      "the host's /usr/bin/python3 is pypy Python 3.11.2, the artifact was built for cpython Python 3.11 (builder debian12)",
    ]);
  });

  it("refuses another OS release than the builder's; RHEL rebuilds compare the major version", () => {
    expect(hostCompatibility(built(), host({ os: { id: 'debian', version_id: '11' } }))).toEqual([
      'the host runs debian 11, the artifact was built on debian 12 (builder debian12)',
    ]);
    expect(hostCompatibility(built(), host({ os: { id: 'ubuntu', version_id: '24.04' } }))[0]).toMatch(
      /^the host runs ubuntu 24\.04/,
    );
    const el9 = built({ os: 'el9', os_release: { id: 'rocky', version_id: '9.3' } });
    expect(hostCompatibility(el9, host({ os: { id: 'rocky', version_id: '9.5' } }))).toEqual([]);
  });

  it('names the libraries the host lacks, with the package that brings them', () => {
    const m = built({}, ['libc.so.6', 'libpq.so.5', 'libxslt.so.1']);
    expect(hostCompatibility(m, host({ missing_libraries: ['libpq.so.5', 'libxslt.so.1'] }))).toEqual([
      'releases need libpq.so.5, libxslt.so.1, which this host lacks (apt-get install libpq5 libxslt1.1)',
    ]);
    const el = built({ os: 'centos7', os_release: { id: 'centos', version_id: '7' } });
    expect(
      hostCompatibility(
        el,
        host({ os: { id: 'centos', version_id: '7' }, missing_libraries: ['libpq.so.5', 'libfoo.so.1'] }),
      ),
    ).toEqual(['releases need libpq.so.5, libfoo.so.1, which this host lacks (yum install libpq)']);
  });

  it('does not judge what an older manifest or agent does not say', () => {
    expect(hostCompatibility(manifest(R1), facts({}))).toEqual([]);
  });

  it('is what the dry-run plan says would fail', () => {
    const p = planDeploy(
      'ship',
      'prod',
      built({}, ['libpq.so.5']),
      [{ name: 'web1', facts: host({ missing_libraries: ['libpq.so.5'] }), serverFiles: [] }],
      settings,
    );
    expect(formatDeployPlan(p)).toContain(
      '    WOULD FAIL: releases need libpq.so.5, which this host lacks (apt-get install libpq5)\n',
    );
  });
});

describe('planSetup', () => {
  it('lists what is missing, and whether <root>/default would be adopted', () => {
    const p = planSetup('staging', '/r', ['storage'], 'ckan:www-data', [
      { name: 'new', facts: { existing: [], current: null, default_python: true }, serverFiles: [] },
      {
        name: 'done',
        facts: {
          existing: [
            '/r',
            '/r/.ckan-release',
            '/r/.ckan-release/agent',
            '/r/releases',
            '/r/shared',
            '/r/shared/storage',
          ],
          current: R1,
          default_python: true,
        },
        serverFiles: [{ dest: '/etc/x', change: 'unchanged' }],
      },
    ]);
    expect(formatSetupPlan(p, '/r')).toBe(
      'plan: setup staging (dry run: nothing is changed)\n' +
        '  new: would make /r, /r/.ckan-release, /r/.ckan-release/agent, /r/releases, /r/shared, /r/shared/storage\n' +
        '    adopt: /r/default as the first release (/r/default has bin/python and there is no current release)\n' +
        '    chown ckan:www-data: the shared directories\n' +
        '  done: /r is already set up\n' +
        `    adopt: no: the host already runs release ${R1}\n` +
        '    chown ckan:www-data: the shared directories\n' +
        '    server file /etc/x: unchanged\n',
    );
  });
});

describe('prune: the plan says exactly what the agent is told', () => {
  it('removes the leftovers of interrupted operations: partial directories and temporary files', () => {
    expect(prunePlan([R1], ['.partial-x-op1'], R1, null, 3, ['op1-manifest.json'])).toEqual([
      { release: null, path: '.partial-x-op1', why: 'partial directory left by an interrupted operation' },
      {
        release: null,
        path: '.ckan-release/tmp/op1-manifest.json',
        why: 'temporary file left by an interrupted operation',
      },
    ]);
  });

  it("tells the agent the plan's items, and to protect the rollback target; nothing the agent refuses", () => {
    const f = facts({
      current: R3,
      releases: [R1, R2, R3].map((id) => ({ id, state: 'healthy' })),
      ledger: healthy(R1, R2, R3),
      partials: ['.partial-x-0badf00d'],
      tmp: ['0badf00d-need.json'],
    });
    const p = planDeploy(
      'ship',
      'prod',
      manifest(R4),
      [{ name: 'web1', facts: f, serverFiles: [] }],
      settings,
    );
    const hp = p.hosts[0]!;
    const told = pruneInstructions(hp, settings.keepReleases);
    expect(told).toEqual({
      remove: [
        { release: R2, why: 'beyond keep_releases=2' },
        { release: R1, why: 'beyond keep_releases=2' },
      ],
      paths: [
        { path: '.partial-x-0badf00d', why: 'partial directory left by an interrupted operation' },
        {
          path: '.ckan-release/tmp/0badf00d-need.json',
          why: 'temporary file left by an interrupted operation',
        },
      ],
      protect: [R3],
    });
    for (const item of [...told.remove, ...told.paths])
      expect(pruneRefusal(item, { current: R4, protect: told.protect, op: 'f00dcafe' })).toBeNull();
  });

  it('the rollback target is decided on the verdicts when the agent sends them (the whole ledger)', () => {
    // The last 200 entries hold no healthy R1; the verdicts do.
    const f = facts({ current: R2, ledger: healthy(R2), verdicts: healthy(R1, R2) });
    const p = planDeploy(
      'ship',
      'prod',
      manifest(R3),
      [{ name: 'web1', facts: f, serverFiles: [] }],
      settings,
    );
    expect(p.hosts[0]!.rollback_target_after).toBe(R2);
    expect(commonRollbackTarget([{ name: 'web1', facts: f }])).toEqual({ id: R1 });
  });
});

describe('commonRollbackTarget and promoteSource: what rollback and promote switch to', () => {
  const at = (current: string, ...ids: string[]) => facts({ current, ledger: healthy(...ids) });
  it('rollback: the target every host agrees on, else the refusal names each host', () => {
    expect(
      commonRollbackTarget([
        { name: 'a', facts: at(R3, R1, R2, R3) },
        { name: 'b', facts: at(R3, R2, R3) },
      ]),
    ).toEqual({ id: R2 });
    expect(
      commonRollbackTarget([
        { name: 'a', facts: at(R3, R1, R3) },
        { name: 'b', facts: at(R3, R3) },
      ]),
    ).toEqual({ refusal: `a=${R1}, b=none` });
  });
  it('promote: the one release every host runs and recorded healthy', () => {
    expect(promoteSource('staging', [{ name: 'a', facts: at(R2, R1, R2) }])).toEqual({ id: R2 });
    expect(
      promoteSource('staging', [
        { name: 'a', facts: at(R2, R2) },
        { name: 'b', facts: at(R1, R1) },
      ]),
    ).toEqual({ refusal: `staging does not run one release on every host: a=${R2}, b=${R1}` });
    expect(promoteSource('staging', [{ name: 'a', facts: at(R2, R1) }])).toEqual({
      refusal: `${R2} is not recorded healthy on a of staging`,
    });
  });
});

describe('planUnlock', () => {
  it('names the lock each host holds, with its token (the executor removes that lock only)', () => {
    const lock = {
      user: 'alice',
      machine: 'laptop',
      pid: 1,
      operation: 'ship',
      since: 1700000000,
      token: 't0',
    };
    const p = planUnlock('prod', [
      { name: 'a', facts: facts({ lock, lock_expired: true }) },
      { name: 'b', facts: facts({}) },
    ]);
    expect(p.hosts).toEqual([
      {
        host: 'a',
        lock: {
          holder: 'alice@laptop (pid 1, ship, since 2023-11-14T22:13:20Z)',
          expired: true,
          token: 't0',
        },
      },
      { host: 'b', lock: null },
    ]);
    expect(formatUnlockPlan(p)).toBe(
      'plan: unlock prod (dry run: nothing is changed)\n' +
        '  a: would remove the lock of alice@laptop (pid 1, ship, since 2023-11-14T22:13:20Z) (expired)\n' +
        '  b: not locked\n',
    );
  });
});
