// The sandbox-fleet helper (test/support/sandbox-fleet.ts) itself, on its own ports (2440-2441 /
// 8440-8441) and host names (at-*): the hosts are up and set up before the tests, the environment it
// writes reaches them, and its diagnostics say what each host looks like. (That afterAll brings them
// down is checked by the next run's `sandbox up` of the same names, which refuses nothing left over.)
import { describe, expect, it } from 'vitest';
import { containerName } from '../../src/sandbox/sandbox.js';
import { useSandboxFleet } from '../support/sandbox-fleet.js';

const fleet = useSandboxFleet({
  env: 'atfleet',
  hosts: [
    { name: 'at-fleet1', sshPort: 2440, httpPort: 8440 },
    { name: 'at-fleet2', sshPort: 2441, httpPort: 8441, vars: { extra_var: 'x y' } },
  ],
  setup: true,
});

describe('useSandboxFleet', () => {
  it('brings the hosts up and sets them up through the environment it wrote', async () => {
    const f = fleet();
    for (const h of f.hosts) {
      expect(await f.sh(h.name, 'ls -A /usr/lib/ckan')).toBe('.ckan-release\nreleases\nshared\n');
      const running = await f.docker.getContainer(containerName(h.name)).inspect();
      expect(running.State.Running).toBe(true);
    }
    const again = await f.cli('setup', 'atfleet');
    expect(again.out.trim().split('\n').sort()).toEqual([
      'at-fleet1: already set up',
      'at-fleet2: already set up',
    ]);
    const status = await f.cli('status', 'atfleet');
    expect(status.code, status.err).toBe(0);
    expect(status.out).toMatch(/^at-fleet2\n {2}current: +none$/m);
  });

  it('says what each host looks like', async () => {
    const d = await fleet().diagnostics();
    expect(d).toMatch(
      /^-- at-fleet1 \(ssh 127\.0\.0\.1:2440, http 8440\)\ncurrent: none\nreleases: \nlock: none\n/m,
    );
    expect(d).toMatch(/^-- at-fleet2 /m);
    expect(d).toContain('-- its log:');
  });
});
