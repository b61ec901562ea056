// Where the host agent must enforce a rule of the plan too, or hands the plan its input, both sides run
// on one table of cases, on every Python the agent supports (2.7, 3.6, python3):
//   - prune's safety rule: plan.ts pruneRefusal and the agent's prune_refusal agree on every case, and
//     the agent's `prune` refuses the whole call (removing nothing) when told to remove one of them;
//   - the rollback target: decided in TS (plan.ts rollbackTarget) on the agent's `verdicts` (a selection
//     of the ledger) gives what the same rule gives on the whole ledger.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { pruneRefusal, rollbackTarget, type LedgerEntry } from '../../src/plan.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const [R1, R2, R3, R4] = [
  '20261101000000Z-aaaaaaaa',
  '20261102000000Z-bbbbbbbb',
  '20261103000000Z-cccccccc',
  '20261104000000Z-dddddddd',
];
const OP = 'f00dcafe';

/** [item, current, protect]: every kind of refusal, and items the agent may remove. */
const PRUNE_CASES: [{ release?: string | null; path?: string }, string | null, string[]][] = [
  [{ release: R1 }, R4, []],
  [{ release: R4 }, R4, []],
  [{ release: R2 }, R4, [R2]],
  [{ release: R2 }, null, [R3]],
  [{ release: '../etc' }, R4, []],
  [{ release: 'Releases' }, R4, []],
  [{ release: '', path: '.partial-x-0badf00d' }, R4, []],
  [{ release: 'a'.repeat(65) }, R4, []],
  [{ release: null, path: `.partial-${R3}-0badf00d` }, R4, []],
  [{ release: null, path: `.prune-${R3}-123` }, R4, []],
  [{ release: null, path: `.partial-${R3}-${OP}` }, R4, []],
  [{ release: null, path: R3 }, R4, []],
  [{ release: null, path: '../default' }, R4, []],
  [{ release: null, path: '.partial-x/../../etc' }, R4, []],
  [{ release: null, path: '.ckan-release/tmp/0badf00d-manifest.json' }, R4, []],
  [{ release: null, path: `.ckan-release/tmp/${OP}-manifest.json` }, R4, []],
  [{ release: null, path: '.ckan-release/tmp/' }, R4, []],
  [{ release: null, path: '.ckan-release/tmp/..' }, R4, []],
  [{ release: null, path: '.ckan-release/tmp/a/b' }, R4, []],
  [{ release: null, path: '.ckan-release/ledger.jsonl' }, R4, []],
  [{ release: null, path: '/etc/passwd' }, R4, []],
  [{ release: null, path: '' }, R4, []],
];

const h = (release: string): LedgerEntry => ({ event: 'healthy', release });
const bad = (release: string): LedgerEntry => ({ event: 'bad', release });
const other = (event: string, release: string): LedgerEntry => ({ event, release });

/** [ledger, current] */
const LEDGERS: [LedgerEntry[], string | null][] = [
  [[], null],
  [[h(R1)], R1],
  [[h(R1), h(R2), h(R3)], R3],
  [[h(R1), h(R2), bad(R2), h(R3)], R3],
  [[h(R1), h(R2), bad(R1), h(R1), h(R3)], R3],
  [[h(R1), bad(R1), h(R1), bad(R1), h(R2)], R2],
  [[h(R1), h(R2), h(R1), h(R3)], R3],
  [[h(R1), h(R2), h(R3), bad(R3), h(R2)], R2],
  [
    [other('adopted', R1), other('activated', R1), h(R1), other('staged', R2), other('failed', R2), h(R3)],
    R3,
  ],
  [[h(R1), h(R2), other('rolled_back', R1), bad(R2), h(R1), h(R4), bad(R4), h(R2)], R2],
  // A long ledger: the tool gets only its last 200 entries, but every verdict.
  [[h(R1), ...Array.from({ length: 300 }, (_, i) => (i % 2 ? h(R3) : bad(R2))), h(R4)], R4],
];

/** Runs the agent's own functions on the cases, as the agent module (imported, not run). */
function agentAnswers(python: string, script: string, input: unknown): unknown {
  const out = execFileSync(python, ['-c', script, path.dirname(AGENT_SCRIPT)], {
    input: JSON.stringify(input),
    encoding: 'utf8',
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

const PRUNE_CHECK = `
import json, sys
sys.path.insert(0, sys.argv[1])
import ckan_release_host as a
cases = json.load(sys.stdin)
print(json.dumps([a.prune_refusal(c["item"], c["current"], set(c["protect"]), c["op"]) for c in cases]))
`;

const VERDICTS = `
import json, sys
sys.path.insert(0, sys.argv[1])
import ckan_release_host as a
print(json.dumps([a.verdicts(ledger) for ledger in json.load(sys.stdin)]))
`;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.each(TEST_PYTHONS)('the plan and the agent on Python $label', (py) => {
  it("prune's safety rule: the same answer on every case", () => {
    const python = requirePython(py);
    const cases = PRUNE_CASES.map(([item, current, protect]) => ({ item, current, protect, op: OP }));
    const agent = agentAnswers(python, PRUNE_CHECK, cases) as (string | null)[];
    const ts = cases.map((c) => pruneRefusal(c.item, c));
    expect(agent).toEqual(ts);
    // The table covers every answer.
    expect(new Set(ts)).toEqual(
      new Set([null, 'current', 'protected', 'running operation', 'outside the layout']),
    );
  });

  it('the rollback target from the verdicts is the one from the whole ledger', () => {
    const python = requirePython(py);
    const verdicts = agentAnswers(
      python,
      VERDICTS,
      LEDGERS.map(([l]) => l),
    ) as LedgerEntry[][];
    LEDGERS.forEach(([ledger, current], i) => {
      expect(rollbackTarget(verdicts[i]!, current), JSON.stringify(ledger).slice(0, 200)).toBe(
        rollbackTarget(ledger, current),
      );
      expect(verdicts[i]!.length).toBeLessThanOrEqual(8);
    });
  });

  it('prune removes what it is told, and refuses the whole call for one refused item', () => {
    const python = requirePython(py);
    const root = mkdtempSync(path.join(os.tmpdir(), `ckan-release-prune-${py.label}-`));
    dirs.push(root);
    for (const d of ['releases', 'shared', '.ckan-release/tmp'])
      mkdirSync(path.join(root, d), { recursive: true });
    for (const id of [R1, R2, R3]) mkdirSync(path.join(root, 'releases', id));
    mkdirSync(path.join(root, 'releases', '.partial-x-0badf00d'));
    writeFileSync(path.join(root, '.ckan-release/tmp/0badf00d-manifest.json'), '{}');
    symlinkSync(`releases/${R3}`, path.join(root, 'current'));
    const prune = (args: Record<string, unknown>) => {
      try {
        return {
          code: 0,
          json: JSON.parse(
            execFileSync(python, [AGENT_SCRIPT, 'prune', JSON.stringify({ root, op: OP, ...args })], {
              encoding: 'utf8',
            }),
          ) as Record<string, unknown>,
        };
      } catch (e) {
        const err = e as { status: number; stdout: string };
        return { code: err.status, json: JSON.parse(err.stdout) as Record<string, unknown> };
      }
    };
    // Told to remove the current release (with another one): refused, nothing removed.
    const refused = prune({
      remove: [
        { release: R1, why: 'x' },
        { release: R3, why: 'x' },
      ],
    });
    expect(refused.code).toBe(3);
    expect(refused.json).toMatchObject({ error: 'protected' });
    expect(String(refused.json.message)).toContain(`refusing to prune ${R3}: current`);
    expect(readdirSync(path.join(root, 'releases')).sort()).toEqual(
      ['.partial-x-0badf00d', R1, R2, R3].sort(),
    );
    expect(prune({ paths: [{ path: '../default', why: 'x' }] }).json).toMatchObject({ error: 'protected' });
    // What the plan says: removed, and said back with the plan's reasons.
    const done = prune({
      remove: [{ release: R1, why: 'beyond keep_releases=2' }],
      paths: [
        { path: '.partial-x-0badf00d', why: 'partial' },
        { path: '.ckan-release/tmp/0badf00d-manifest.json', why: 'tmp' },
      ],
      protect: [R2],
    });
    expect(done.json).toEqual({
      removed: [
        { release: R1, why: 'beyond keep_releases=2' },
        { release: null, path: '.partial-x-0badf00d', why: 'partial' },
        { release: null, path: '.ckan-release/tmp/0badf00d-manifest.json', why: 'tmp' },
      ],
    });
    expect(readdirSync(path.join(root, 'releases')).sort()).toEqual([R2, R3]);
    expect(existsSync(path.join(root, '.ckan-release/tmp/0badf00d-manifest.json'))).toBe(false);
    // Again: already gone, nothing to do.
    expect(prune({ remove: [{ release: R1, why: 'x' }] }).json).toEqual({ removed: [] });
  });
});
