// Every step of a ship, cut: the executor run in-process against the real host agent on one local
// host (test/support/fault-bed.ts), with the connection cut before and after each command of a ship
// in turn (the commands of a fault-free ship of the same release, recorded first). After each cut the
// host must be as the guarantees demand and the next run must succeed (fault-bed's cutShip checks).
// No Docker and no SSH, but about two minutes: the selection of steps in
// test/unit/executor-faults.test.ts is what runs in `npm run test:unit`.
import { afterAll, describe, expect, it } from 'vitest';
import { ship } from '../support/executor.js';
import { faultBed } from '../support/fault-bed.js';

const bed = await faultBed('at-sweep');
afterAll(() => bed.close());

// The commands of a ship of B onto a host where A is live, as the executor runs them.
bed.restore();
const recorded = bed.fleet.session();
await ship(recorded, bed.B);
const steps = recorded.remotes['at-sweep']!.log.map((c, i) => {
  const agent = /\.py ([a-z-]+) '/.exec(c.command)?.[1];
  const shell: [RegExp, string][] = [
    [/test -f .*agent/, 'install the agent'],
    [/cat > .*-manifest\.json/, 'upload the manifest'],
    [/^rm -f /, 'remove the uploaded manifest'],
    [/restarts\.log/, 'restart'],
  ];
  const label = agent ? `agent ${agent}` : (shell.find(([re]) => re.test(c.command))?.[1] ?? c.command);
  return { i, name: `${i}: ${label}` };
});

describe.each(['before', 'after'] as const)('the connection cut %s each command of a ship', (when) => {
  it('records the steps it cuts', () => {
    expect(steps.length).toBeGreaterThan(10);
    expect(steps.map((s) => s.name.split(': ')[1])).toEqual(
      expect.arrayContaining(['agent receive', 'agent switch', 'restart']),
    );
  });
  it.each(steps)('$name', async ({ i }) => {
    const { s, failed } = await bed.cutShip({ match: (_text, index) => index === i, when });
    const cut = s.remotes['at-sweep']!.log.findIndex((c) => c.outcome !== 'ok');
    expect(cut, failed?.message).toBe(i);
  });
});
