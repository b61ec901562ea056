// Every step of a ship, cut: the executor run in-process against the real host agent on one local
// host (test/support/fault-bed.ts), with the connection cut before and after each command of a ship
// in turn, and each request and piece of data of its agent session (what a fault-free ship of the same
// release asked, recorded first). After each cut the
// host must be as the guarantees demand and the next run must succeed (fault-bed's cutShip checks).
// No Docker and no SSH, but about two minutes: the selection of steps in
// test/unit/executor-faults.test.ts is what runs in `npm run test:unit`.
import { afterAll, describe, expect, it } from 'vitest';
import { ship } from '../support/executor.js';
import { faultBed } from '../support/fault-bed.js';

const bed = await faultBed('at-sweep');
afterAll(() => bed.close());

// What a ship of B onto a host where A is live asks of the host, as the executor runs it: its shell
// commands and, on its agent session's channel, every request and every piece of data, in order.
bed.restore();
const recorded = bed.fleet.session();
await ship(recorded, bed.B);
const steps = recorded.remotes['at-sweep']!.seen.map((text, i) => {
  const request = /^\{"id": ?\d+, ?"command": ?"([a-z-]+)"/.exec(text)?.[1];
  const shell: [RegExp, string][] = [
    [/ serve\b/, 'open the agent session'],
    [/cat > .*-manifest\.json/, 'upload the manifest'],
    [/^rm -f /, 'remove the uploaded manifest'],
    [/restarts\.log/, 'restart'],
  ];
  const label = request
    ? `agent ${request}`
    : (shell.find(([re]) => re.test(text))?.[1] ?? `data (${text.length} bytes)`);
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
    const { s } = await bed.cutShip({ match: (_text, index) => index === i, when });
    // The cut came where it was asked for (cutShip checks what it left on the host).
    expect(s.remotes['at-sweep']!.fired).toEqual([{ index: i, when }]);
  });
});
