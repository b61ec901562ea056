// The preflight of a ship against the artifact (issue 13, item 5): a release whose ELF files need a
// shared library the host lacks is refused before any change on the host, exit 2, and the dry run
// shows the same refusal. Real engine, debian12 builder, one sandbox host (sshd + Apache).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/artifact/manifest.js';
import { commitFile } from '../support/fixtures.js';
import { useSandboxFleet } from '../support/sandbox-fleet.js';

// This helper's port range and host name prefix (no other test uses them).
const HOST = 'bc-web1';
const SSH_PORT = 2340;
const HTTP_PORT = 8340;

let id: string;
let manifest: Manifest;

/** An extension with a C module linked against libpq (the builder has libpq-dev; hosts need libpq5). */
async function pqExtension(dir: string): Promise<void> {
  execFileSync('git', ['init', '-q', '-b', 'main', dir]);
  const files: Record<string, string> = {
    'ckanext/__init__.py': "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n",
    'ckanext/pqlink/__init__.py': '"""Test fixture of ckan-release: a compiled module that needs libpq."""\n',
    'ckanext/pqlink/_pq.c': [
      '#include <Python.h>',
      '#include <libpq-fe.h>',
      'static PyObject *version(PyObject *self, PyObject *args) { return PyLong_FromLong(PQlibVersion()); }',
      'static PyMethodDef methods[] = {{"version", version, METH_NOARGS, "libpq version"}, {NULL, NULL, 0, NULL}};',
      'static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pq", NULL, -1, methods};',
      'PyMODINIT_FUNC PyInit__pq(void) { return PyModule_Create(&module); }',
      '',
    ].join('\n'),
    'setup.py': [
      'from setuptools import Extension, setup',
      'setup(',
      "    name='ckanext-pqlink', version='0.1.0', packages=['ckanext', 'ckanext.pqlink'],",
      "    ext_modules=[Extension('ckanext.pqlink._pq', ['ckanext/pqlink/_pq.c'],",
      "                           include_dirs=['/usr/include/postgresql'], libraries=['pq'])],",
      ')',
      '',
    ].join('\n'),
  };
  for (const [rel, text] of Object.entries(files)) await commitFile(dir, rel, text, `Add ${rel}`);
  execFileSync('git', ['-C', dir, 'tag', 'v0.1.0']);
}

const fleet = useSandboxFleet({
  env: 'bc',
  hosts: [{ name: HOST, sshPort: SSH_PORT, httpPort: HTTP_PORT }],
  vars: { site_url: 'http://bc.test', site_title: 'Preflight' },
  prepare: (project) => pqExtension(path.join(project.dir, 'ckanext-pqlink')),
  head: (text) =>
    text.replace(
      'extensions:\n',
      'extensions:\n  - name: ckanext-pqlink\n    source: ./ckanext-pqlink\n    ref: v0.1.0\n',
    ),
  setup: true,
});

/** Everything under the root and the Apache config: what "the host untouched" is compared on. */
function hostState(): Promise<string> {
  return fleet().sh(
    HOST,
    "find /usr/lib/ckan /etc/apache2 /etc/ckan -printf '%p %y %s %m %l\\n' | sort; md5sum /usr/lib/ckan/.ckan-release/ledger.jsonl 2>/dev/null; readlink /usr/lib/ckan/current || echo 'no current'",
  );
}

beforeAll(async () => {
  id = await fleet().build();
  manifest = JSON.parse(
    readFileSync(path.join(fleet().project.dir, '.ckan-release/artifacts', id, 'manifest.json'), 'utf8'),
  ) as Manifest;
  // Whatever the sandbox image brings, this host has no libpq.
  await fleet().sh(HOST, 'rm -f /usr/lib/x86_64-linux-gnu/libpq.so.5* /usr/lib/libpq.so.5*; ldconfig');
}, 900_000);

describe('a release that needs a library the host lacks', () => {
  it('records the libraries, the OS release and the Python it needs at build', () => {
    // The only ELF file of this release is the extension's module (the venv's python is a link to
    // the system's); it needs libpq and nothing else (--as-needed drops an unused libc).
    expect(manifest.libraries).toEqual(['libpq.so.5']);
    expect(manifest.builder.os_release).toEqual({ id: 'debian', version_id: '12' });
    expect(manifest.builder.python.implementation).toBe('cpython');
  });

  it('the dry run shows the refusal', async () => {
    const r = await fleet().cli('ship', 'bc', '--dry-run');
    expect(r.out).toContain(
      `    WOULD FAIL: releases need libpq.so.5, which this host lacks (apt-get install libpq5)\n`,
    );
  });

  it('is refused before any change: exit 2, the host untouched', async () => {
    const before = await hostState();
    expect(before).toContain('no current');
    const r = await fleet().cli('ship', 'bc');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      new RegExp(
        `^(?:ckan-release: |  )${HOST}: releases need libpq\\.so\\.5, which this host lacks \\(apt-get install libpq5\\)$`,
        'm',
      ),
    );
    expect(r.err).not.toMatch(/unexpected error/);
    expect(await hostState()).toBe(before);
    expect((await fleet().sh(HOST, 'ls -A /usr/lib/ckan/releases')).trim()).toBe('');
  });
});
