// The Python 2.7 and 3.6 test bed (test/fixtures/python-hosts/): builder and sandbox host images of a
// Debian 11 whose only Python is 2.7 and of a Debian 12 whose only Python is pyenv's 3.6.15, and the
// py2.py3 wheel of the fixture CKAN's one requirement.
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type Docker from 'dockerode';
import { ensureBaseImage } from '../../src/docker/engine.js';
import { ensureImage } from '../../src/docker/images.js';
import { FIXTURE_SOURCES_DIR } from './fixtures.js';
import { TEST_PYTHONS } from './pythons.js';

const run = promisify(execFile);
const say = (line: string) => process.stderr.write(`[python-hosts] ${line}\n`);

export const PYTHON_HOSTS_DIR = path.resolve('test/fixtures/python-hosts');

export type PythonFlavour = 'py2-debian11' | 'py36-debian12';

const FLAVOURS: Record<PythonFlavour, { dockerfile: string; base: string; python: string }> = {
  'py2-debian11': {
    dockerfile: 'Dockerfile.py2',
    base: 'debian:bullseye-slim',
    python: 'python2',
  },
  'py36-debian12': {
    dockerfile: 'Dockerfile.py36',
    base: 'debian:bookworm-slim',
    python: 'python3',
  },
};

/** builder.python of the flavour's builder (its Dockerfile accepts only that one). */
export function flavourPython(f: PythonFlavour): string {
  return FLAVOURS[f].python;
}

/**
 * Writes the flavour's build context to `<projectDir>/docker/<flavour>/` (a project's own builder
 * image, found by builder.os): its Dockerfile and the shared files, and for 3.6 the pyenv build as
 * python3.6/ (its test suite left out).
 */
export function writeFlavour(projectDir: string, f: PythonFlavour): string {
  const dest = path.join(projectDir, 'docker', f);
  rmSync(dest, { recursive: true, force: true });
  mkdirSync(dest, { recursive: true });
  for (const name of readdirSync(PYTHON_HOSTS_DIR)) {
    if (name.startsWith('Dockerfile')) continue;
    cpSync(path.join(PYTHON_HOSTS_DIR, name), path.join(dest, name));
  }
  cpSync(path.join(PYTHON_HOSTS_DIR, FLAVOURS[f].dockerfile), path.join(dest, 'Dockerfile'));
  // CKAN's WSGI entry point, as the Debian 12 sandbox host has it.
  cpSync(path.resolve('docker/sandbox-host/wsgi.py'), path.join(dest, 'wsgi.py'));
  if (f === 'py36-debian12') {
    const py36 = path.dirname(path.dirname(TEST_PYTHONS.find((p) => p.label === '3.6')!.command));
    if (!existsSync(py36))
      throw new Error(`${py36} is missing: pyenv install 3.6.15 (this project's machine image has it)`);
    cpSync(py36, path.join(dest, 'python3.6'), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => !src.startsWith(path.join(py36, 'lib/python3.6/test')) && !src.includes('__pycache__'),
    });
  }
  return dest;
}

/** The flavour's image for a role; the builder one has the tag `ckan-release build` computes itself. */
export async function flavourImage(
  docker: Docker,
  context: string,
  f: PythonFlavour,
  role: 'builder' | 'host',
): Promise<string> {
  await ensureBaseImage(docker, say, FLAVOURS[f].base);
  const image = await ensureImage(
    docker,
    {
      context,
      repository: role === 'builder' ? 'ckan-release-builder' : 'ckan-release-test-host',
      flavour: f,
      buildArgs:
        role === 'builder' ? { PYTHON: flavourPython(f) } : { PYTHON: flavourPython(f), ROLE: 'host' },
      labels: role === 'builder' ? { 'org.ckan-release.builder-os': f } : {},
    },
    say,
  );
  return image.tag;
}

/** <fixturesDir>/wheelhouse-py2: fixturelib-markup 1.0.0 as a py2.py3 wheel, for pip on Python 2. */
export async function ensurePy2Wheelhouse(fixturesDir: string): Promise<string> {
  const dest = path.join(fixturesDir, 'wheelhouse-py2');
  const wheel = path.join(dest, 'fixturelib_markup-1.0.0-py2.py3-none-any.whl');
  if (existsSync(wheel)) return dest;
  const work = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-py2-wheel-'));
  try {
    cpSync(path.join(FIXTURE_SOURCES_DIR, 'wheels', 'fixturelib-markup-1.0.0'), work, { recursive: true });
    mkdirSync(dest, { recursive: true });
    const env = { ...process.env, SOURCE_DATE_EPOCH: '1700000000', PYTHONDONTWRITEBYTECODE: '1' };
    try {
      const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
      await run(python, ['setup.py', '-q', 'bdist_wheel', '--universal', '-d', dest], { cwd: work, env });
    } catch (e) {
      throw new Error(
        'cannot build the py2.py3 fixture wheel with python3 (apt-get install python3-setuptools python3-wheel)',
        { cause: e },
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  if (!existsSync(wheel)) throw new Error(`building ${wheel} made no such file`);
  return dest;
}
