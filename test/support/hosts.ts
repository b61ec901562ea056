// Looking at a sandbox host from the outside: docker exec into its container, and HTTP to its Apache.
import type Docker from 'dockerode';
import { execInContainer } from '../../src/docker/run.js';
import { containerName } from '../../src/sandbox/sandbox.js';

export async function onHost(
  docker: Docker,
  host: string,
  script: string,
): Promise<{ code: number; out: string }> {
  const r = await execInContainer(docker, containerName(host), ['sh', '-c', script]);
  return { code: r.code, out: r.stdout + r.stderr };
}

/** Where <root>/current really points, as the host's own readlink -e says (none: no such link). */
export async function currentOf(docker: Docker, host: string): Promise<string> {
  return (await onHost(docker, host, 'readlink -e /usr/lib/ckan/current || echo none')).out.trim();
}

export async function ledgerOf(docker: Docker, host: string): Promise<{ event: string; release?: string }[]> {
  const r = await onHost(docker, host, 'cat /usr/lib/ckan/.ckan-release/ledger.jsonl 2>/dev/null || true');
  return r.out
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { event: string; release?: string });
}

export interface Served {
  status: number;
  extensions?: string[];
  ckanPath?: string;
  showcase?: string;
}

/** What Apache on the host serves at status_show. */
export async function served(port: number): Promise<Served> {
  const res = await fetch(`http://127.0.0.1:${port}/api/3/action/status_show`);
  if (res.status !== 200) return { status: res.status };
  const body = (await res.json()) as {
    result: {
      extensions: string[];
      fixture: { ckan_path: string; plugins: Record<string, { version: string }> };
    };
  };
  return {
    status: 200,
    extensions: body.result.extensions,
    ckanPath: body.result.fixture.ckan_path,
    showcase: body.result.fixture.plugins.showcase?.version,
  };
}
