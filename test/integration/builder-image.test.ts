// The Debian builder images (debian11, debian12, debian13), built on the real engine, keep the image
// contract the builder relies on: the interpreter, an offline seeded venv, and PEP 517 / PEP 660 builds
// with isolation from /opt/ckan-release/wheels alone.
import { beforeAll, describe, expect, it } from 'vitest';
import type Docker from 'dockerode';
import { runInContainer } from '../../src/docker/run.js';
import { builderImage, testDocker } from '../support/docker.js';

let docker: Docker;

beforeAll(async () => {
  docker = await testDocker();
}, 900_000);

// Editable installs as the builder makes them of extensions: a pyproject.toml-only project (PEP 621
// metadata: setuptools >= 61; PEP 660: pip >= 21.3) with build isolation, and a setup.py-only one
// (`setup.py develop` in the venv itself, with the venv's setuptools).
const EDITABLE = [
  'mkdir -p /tmp/p/demo_pkg',
  'printf "VALUE = 42\\n" > /tmp/p/demo_pkg/__init__.py',
  `printf '[build-system]\\nrequires = ["setuptools>=61", "wheel"]\\nbuild-backend = "setuptools.build_meta"\\n[project]\\nname = "demo-pkg"\\nversion = "1.0"\\n' > /tmp/p/pyproject.toml`,
  '/tmp/v/bin/python -m pip install --quiet --no-index --find-links /opt/ckan-release/wheels -e /tmp/p >&2',
  'mkdir -p /tmp/q/old_pkg',
  'printf "VALUE = 7\\n" > /tmp/q/old_pkg/__init__.py',
  `printf 'from setuptools import setup\\nsetup(name="old-pkg", version="1.0", packages=["old_pkg"])\\n' > /tmp/q/setup.py`,
  '/tmp/v/bin/python -m pip install --quiet --no-index --find-links /opt/ckan-release/wheels -e /tmp/q >&2',
  'cd / && /tmp/v/bin/python -c "import demo_pkg, old_pkg; print(demo_pkg.VALUE, old_pkg.VALUE)"',
].join('; ');

describe.each([
  { os: 'debian11', python: /^Python 3\.9\.\d+$/ },
  { os: 'debian12', python: /^Python 3\.11\.\d+$/ },
  { os: 'debian13', python: /^Python 3\.13\.\d+$/ },
])('docker/$os builder image', ({ os, python }) => {
  let tag: string;
  beforeAll(async () => {
    const t = Date.now();
    const built = await builderImage(os);
    tag = built.tag;
    process.stderr.write(
      `[builder-image] ${os}: ${built.reused ? 'reused' : 'built'} in ${((Date.now() - t) / 1000).toFixed(1)} s\n`,
    );
  }, 900_000);

  it('is reused when its inputs did not change', async () => {
    const again = await builderImage(os);
    expect(again.tag).toBe(tag);
    expect(again.reused).toBe(true);
  });

  it('names its python and makes a seeded venv with no network', async () => {
    const r = await runInContainer(
      docker,
      tag,
      [
        'sh',
        '-c',
        'set -e; "$CKAN_RELEASE_PYTHON" --version; /opt/ckan-release/bin/make-venv /tmp/v; ' +
          '/tmp/v/bin/python -W ignore -c "import setuptools, pkg_resources; print(setuptools.__version__)"; ' +
          'for t in git patch tar gzip sha256sum find gcc; do command -v $t; done; ' +
          `"$CKAN_RELEASE_PYTHON" -c "import ctypes.util; print(ctypes.util.find_library('magic'))"; ` +
          'cat /sys/class/net/*/operstate 2>/dev/null | sort | uniq -c | tr -s " "; ls /sys/class/net',
      ],
      { network: 'none' },
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(python);
    // setuptools below 82: CKAN still imports pkg_resources.
    expect(Number(lines[1]!.split('.')[0])).toBeLessThan(82);
    expect(lines.slice(2, 9)).toEqual([
      '/usr/bin/git',
      '/usr/bin/patch',
      '/usr/bin/tar',
      '/usr/bin/gzip',
      '/usr/bin/sha256sum',
      '/usr/bin/find',
      '/usr/bin/gcc',
    ]);
    // python-magic loads libmagic through ctypes at import; the build's plugin check imports plugins.
    expect(lines[9]).toBe('libmagic.so.1');
    // --network none: the container has only a loopback interface.
    expect(lines[lines.length - 1]).toBe('lo');
  });

  it('installs a pyproject.toml-only and a setup.py-only project editable, offline', async () => {
    const r = await runInContainer(
      docker,
      tag,
      [
        'sh',
        '-c',
        `set -e; /opt/ckan-release/bin/make-venv /tmp/v; ${EDITABLE}; /tmp/v/bin/python -m pip freeze --all`,
      ],
      { network: 'none' },
    );
    // pip 25.1 (debian13) warns that `setup.py develop` editables end with pip 25.3; nothing else.
    expect(
      r.stderr.split('\n').filter((l) => l.trim() && !/^\s*DEPRECATION: Legacy editable install/.test(l)),
    ).toEqual([]);
    expect(r.code).toBe(0);
    const [value, ...freeze] = r.stdout.trim().split('\n');
    expect(value).toBe('42 7');
    // Only what make-venv seeds (and its dependencies) and the project: no Debian placeholder such as
    // pkg-resources==0.0.0.
    const names = freeze.map((l) =>
      l
        .replace(/^-e .*#egg=/, '')
        .split(/[=@ ]/)[0]!
        .toLowerCase(),
    );
    expect(names.filter((n) => !n.startsWith('#'))).toEqual(
      expect.arrayContaining(['pip', 'setuptools', 'wheel']),
    );
    expect(freeze.join('\n')).not.toMatch(/pkg[-_]resources/i);
  });

  it('reports a failing command with its exit code and stderr', async () => {
    const r = await runInContainer(docker, tag, ['sh', '-c', 'echo oops >&2; exit 3']);
    expect(r).toEqual({ code: 3, stdout: '', stderr: 'oops\n' });
  });
});
