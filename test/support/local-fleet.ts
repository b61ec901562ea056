// Local "hosts" for in-process executor tests: a project config whose hosts are directories of this
// machine reached through LocalRemote (test/support/local-remote.ts), a health check served by the
// test that answers for the release each host's `current` really points at, and a restart command
// that records what `current` was at each restart. The executor (src/deploy/) runs against the real
// host agent; the tests assert the hosts' directories.
//
// One host: its directory is config.root itself. Several hosts: config.root is the same path on every
// host (as the tool requires), so each host's commands run in a mount namespace of their own where
// the host's directory is bind-mounted on the root (namespaceSupport says why it cannot be, if so).
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { environment, loadConfig } from '../../src/config/load.js';
import type { Config, Environment } from '../../src/config/types.js';
import type { HostSession, Session } from '../../src/deploy/deploy.js';
import { LocalRemote, namespaceSupport, type LocalRemoteOptions } from './local-remote.js';

/** A file in a release that makes the test's health check answer healthy for it. */
export const HEALTHY_FILE = 'HEALTHY';

export interface LocalHost {
  name: string;
  /** What this host's root holds (config.root itself with one host). */
  dir: string;
}

export interface LocalFleet {
  /** The project directory: ckan-release.yml, templates/, store/. */
  dir: string;
  store: string;
  config: Config;
  env: Environment;
  hosts: LocalHost[];
  /** A session over fresh LocalRemotes (one per host, each with its own faults) and a new op token. */
  session(faults?: Record<string, LocalRemoteOptions['faults']>, opts?: LocalRemoteOptions): LocalSession;
  /** readlink of a host's current (null: none). */
  current(host: string): string | null;
  /** The releases a host's current pointed at, at each restart. */
  restarts(host: string): string[];
  ledger(host: string): { event: string; release?: string; op?: string }[];
  close(): Promise<void>;
}

export interface LocalSession extends Session {
  remotes: Record<string, LocalRemote>;
  said: string[];
}

export async function localFleet(names: string[], opts: { keep?: number } = {}): Promise<LocalFleet> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-at-fleet-'));
  const shared = names.length > 1;
  if (shared) {
    const ns = namespaceSupport();
    if (ns.problem) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(ns.problem);
    }
  }
  const root = path.join(dir, shared ? 'root' : `host-${names[0]}`);
  const hosts = names.map((name) => ({ name, dir: shared ? path.join(dir, `host-${name}`) : root }));
  for (const h of [{ dir: root }, ...hosts]) mkdirSync(h.dir, { recursive: true });

  // The health check: healthy when the release the host's current points at has HEALTHY_FILE.
  const server = http.createServer((req, res) => {
    const host = hosts.find((h) => req.url?.startsWith(`/${h.name}/`));
    const target = host && safeReadlink(path.join(host.dir, 'current'));
    if (host && target && existsSync(path.join(host.dir, target, HEALTHY_FILE))) {
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ success: true, result: { ckan_version: '2.9.11', extensions: [] } }));
    } else {
      res.statusCode = 500;
      res.end('not healthy');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;

  mkdirSync(path.join(dir, 'templates'));
  writeFileSync(path.join(dir, 'templates', 'ckan.ini.j2'), '[app:main]\nckan.site_id = {{ release_id }}\n');
  const file = path.join(dir, 'ckan-release.yml');
  writeFileSync(
    file,
    `project: at-local
root: ${root}
ckan: { source: ./ckan, ref: ckan-2.9.11 }
builder: { os: debian12, python: python3 }
extensions: []
config: { template: templates/ckan.ini.j2, file: ckan.ini }
shared:
  - { path: storage, link: storage }
deploy:
  keep_releases: ${opts.keep ?? 2}
  restart: echo "$(readlink {{ current }})" >> {{ root }}/restarts.log
  healthcheck:
    url: http://127.0.0.1:${port}/{{ host }}/api/3/action/status_show
    timeout: 1
environments:
  at:
    hosts: [${names.join(', ')}]
`,
  );
  const config = loadConfig(file);
  const env = environment(config, 'at');
  const byName = (host: string) => {
    const h = hosts.find((x) => x.name === host);
    if (!h) throw new Error(`no local host ${host}`);
    return h;
  };
  return {
    dir,
    store: path.join(dir, 'store'),
    config,
    env,
    hosts,
    session(faults = {}, remoteOpts = {}) {
      const said: string[] = [];
      const remotes: Record<string, LocalRemote> = {};
      const hs: HostSession[] = hosts.map((h) => {
        remotes[h.name] = new LocalRemote(h.name, {
          ...remoteOpts,
          faults: faults[h.name] ?? [],
          ...(shared ? { namespace: { root, hostDir: h.dir } } : {}),
        });
        return { name: h.name, remote: remotes[h.name]!, sudo: false, locked: false };
      });
      return {
        config,
        env,
        secrets: {},
        say: (l: string) => said.push(l),
        op: randomBytes(4).toString('hex'),
        hosts: hs,
        remotes,
        said,
      };
    },
    current: (host) => safeReadlink(path.join(byName(host).dir, 'current')),
    restarts(host) {
      const f = path.join(byName(host).dir, 'restarts.log');
      return existsSync(f)
        ? readFileSync(f, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => path.basename(l))
        : [];
    },
    ledger(host) {
      const f = path.join(byName(host).dir, '.ckan-release', 'ledger.jsonl');
      return existsSync(f)
        ? readFileSync(f, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as { event: string; release?: string; op?: string })
        : [];
    },
    async close() {
      await new Promise<void>((r) => server.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function safeReadlink(p: string): string | null {
  try {
    return readlinkSync(p);
  } catch {
    return null;
  }
}
