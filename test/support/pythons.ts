// The interpreters the host agent and the builder script must run on (CentOS 7's Python 2.7 and 3.6,
// and today's python3), for unit tests that run the scripts' own code. Python 2.7 and 3.6 are pyenv
// builds: this machine image and CI's have them under /root/.pyenv/versions (PYENV_ROOT honoured).
// A missing one fails the test that needs it, saying how to get it; it is never skipped.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

export interface TestPython {
  /** What the test names it by: '2.7', '3.6', 'python3'. */
  label: string;
  /** The command to run: an absolute path, or python3 from PATH. */
  command: string;
}

const PYENV_ROOT = process.env.PYENV_ROOT ?? '/root/.pyenv';

/** Python 2.7, 3.6 (pyenv 2.7.18 and 3.6.15) and the default python3. */
export const TEST_PYTHONS: readonly TestPython[] = [
  { label: '2.7', command: path.join(PYENV_ROOT, 'versions', '2.7.18', 'bin', 'python') },
  { label: '3.6', command: path.join(PYENV_ROOT, 'versions', '3.6.15', 'bin', 'python') },
  { label: 'python3', command: 'python3' },
];

const resolved = new Map<string, string>();

/**
 * The interpreter's executable, after checking that it exists and is the version it says: the real
 * binary (sys.executable), not a pyenv shim, whose bash start costs ~150 ms on every call.
 */
export function requirePython(p: TestPython): string {
  const known = resolved.get(p.command);
  if (known) return known;
  const how =
    p.label === 'python3'
      ? 'install python3 (Debian: apt-get install python3)'
      : `install it with pyenv (\`pyenv install ${p.command.split('/').at(-3)}\`, PYENV_ROOT=${PYENV_ROOT}); ` +
        'the machine image of this project and of its CI has it';
  if (p.command.includes('/') && !existsSync(p.command))
    throw new Error(`Python ${p.label} is needed by this test and ${p.command} does not exist: ${how}`);
  let version: string;
  let executable: string;
  try {
    [version = '', executable = ''] = execFileSync(
      p.command,
      ['-c', 'import sys; print("%d.%d" % sys.version_info[:2]); print(sys.executable)'],
      { encoding: 'utf8' },
    )
      .trim()
      .split('\n');
  } catch (e) {
    throw new Error(`Python ${p.label} (${p.command}) does not run: ${(e as Error).message}; ${how}`, {
      cause: e,
    });
  }
  if (p.label !== 'python3' && version !== p.label)
    throw new Error(`${p.command} is Python ${version}, not ${p.label}: ${how}`);
  const command = executable && existsSync(executable) ? executable : p.command;
  resolved.set(p.command, command);
  return command;
}
