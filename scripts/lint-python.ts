// Part of `npm run check`: pyflakes over the project's Python files (the host agent, the builder
// script, the sandbox and fixture code, bench helpers): unused imports, undefined names, redefinitions.
// pyflakes only reads the code (it imports nothing), so it runs on any Python 3 and checks code that
// must also run on Python 2.7; whether the agent and the builder compile and run on 2.7 and 3.6 is
// the unit tests' part (test/unit/scripts-python-versions.test.ts, agent-*.test.ts).
// pyflakes is looked for as the `pyflakes` / `pyflakes3` command, then as a module of /usr/bin/python3
// (Debian's python3-pyflakes) and of the python3 on PATH; none: the check fails saying how to get it.
import { execFileSync, spawnSync } from 'node:child_process';

const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '*.py'], {
  encoding: 'utf8',
})
  .split('\n')
  .filter(Boolean);

const candidates: string[][] = [
  ['pyflakes'],
  ['pyflakes3'],
  ['/usr/bin/python3', '-m', 'pyflakes'],
  ['python3', '-m', 'pyflakes'],
];
const pyflakes = candidates.find(
  ([command, ...args]) => spawnSync(command!, [...args, '--version'], { stdio: 'ignore' }).status === 0,
);
if (!pyflakes) {
  console.error(
    'lint-python: pyflakes is not installed (tried the pyflakes and pyflakes3 commands, and the pyflakes\n' +
      'module of /usr/bin/python3 and of python3 on PATH).\n' +
      '  Debian/Ubuntu: apt-get install python3-pyflakes   elsewhere: python3 -m pip install pyflakes',
  );
  process.exit(1);
}
const [command, ...args] = pyflakes;
const r = spawnSync(command!, [...args, ...files], { stdio: 'inherit' });
if (r.status !== 0) {
  console.error(
    `lint-python: pyflakes found problems in the project's Python files (${files.length} checked)`,
  );
  process.exit(1);
}
console.log(`lint-python: pyflakes: ${files.length} Python files clean`);
