// The debian12 builder image, built on the real engine, keeps the image contract the builder relies on.
import { beforeAll, describe, expect, it } from 'vitest';
import type Docker from 'dockerode';
import { runInContainer } from '../../src/docker/run.js';
import { builderImage, testDocker } from '../support/docker.js';

let docker: Docker;
let tag: string;

beforeAll(async () => {
  docker = await testDocker();
  tag = (await builderImage('debian12')).tag;
}, 900_000);

describe('docker/debian12 builder image', () => {
  it('is reused when its inputs did not change', async () => {
    const again = await builderImage('debian12');
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
          '/tmp/v/bin/python -W ignore -c "import setuptools; print(setuptools.__version__)"; ' +
          'for t in git patch tar gzip sha256sum find gcc; do command -v $t; done; ' +
          'cat /sys/class/net/*/operstate 2>/dev/null | sort | uniq -c | tr -s " "; ls /sys/class/net',
      ],
      { network: 'none' },
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^Python 3\.11\.\d+$/);
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
    // --network none: the container has only a loopback interface.
    expect(lines[lines.length - 1]).toBe('lo');
  });

  it('reports a failing command with its exit code and stderr', async () => {
    const r = await runInContainer(docker, tag, ['sh', '-c', 'echo oops >&2; exit 3']);
    expect(r).toEqual({ code: 3, stdout: '', stderr: 'oops\n' });
  });
});
