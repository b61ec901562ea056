// The host agent's facts for the preflight (assets/host/ckan_release_host.py `facts`): the OS release,
// the Python implementation and the libraries the dynamic linker would not find, on every Python the
// agent must run on (2.7 and 3.6 for CentOS 7, and the machine's python3).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';

const PYTHONS = [
  'python3',
  '/root/.pyenv/versions/2.7.18/bin/python',
  '/root/.pyenv/versions/3.6.15/bin/python',
];

describe.each(PYTHONS)('facts under %s', (python) => {
  it('says the OS release, the implementation, and which asked-for libraries are missing', () => {
    if (python.startsWith('/'))
      expect(existsSync(python), `${python} is missing: install it with \`pyenv install\``).toBe(true);
    const out = execFileSync(python, [
      AGENT_SCRIPT,
      'facts',
      JSON.stringify({ root: '/nonexistent', libraries: ['libc.so.6', 'libckanrelease-none.so.9'] }),
    ]).toString();
    const facts = JSON.parse(out) as {
      os: { id: string; version_id: string };
      python: { implementation: string };
      missing_libraries: string[];
    };
    const osRelease = execFileSync('sh', ['-c', '. /etc/os-release; echo "$ID $VERSION_ID"'])
      .toString()
      .trim();
    expect(`${facts.os.id} ${facts.os.version_id}`).toBe(osRelease);
    expect(facts.python.implementation).toBe('cpython');
    expect(facts.missing_libraries).toEqual(['libckanrelease-none.so.9']);
  });

  it('says which release is the one setup adopted from <root>/default (a link, no manifest)', () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-adopt-'));
    try {
      mkdirSync(path.join(root, 'default', 'bin'), { recursive: true });
      writeFileSync(path.join(root, 'default', 'bin', 'python'), '');
      const agent = (command: string, args: object) =>
        JSON.parse(
          execFileSync(python, [AGENT_SCRIPT, command, JSON.stringify({ root, ...args })]).toString(),
        ) as {
          adopted: string;
          current: string;
          releases: { id: string; adopted: boolean }[];
        };
      const { adopted } = agent('setup', { shared: [], adopt: true });
      mkdirSync(path.join(root, 'releases', '20261101000000Z-aaaaaaaa'));
      const f = agent('facts', {});
      expect(f.current).toBe(adopted);
      expect(f.releases.map((r) => [r.id, r.adopted])).toEqual([
        ['20261101000000Z-aaaaaaaa', false],
        [adopted, true],
      ]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
