// Where and how to reach a host, as OpenSSH would: the environment's own ssh_config first, then
// ~/.ssh/config (first value wins, as in ssh), then the environment's user/port, then defaults.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import SSHConfig from 'ssh-config';
import type { Environment } from '../config/types.js';

export interface HostTarget {
  /** The host as written in ckan-release.yml: what every message names. */
  name: string;
  hostname: string;
  port: number;
  user: string;
  identityFiles: string[];
  identitiesOnly: boolean;
  knownHostsFiles: string[];
  /** Names to look the host key up by: HostKeyAlias if set, else [hostname]:port. */
  keyNames: string[];
  strictHostKeyChecking: 'yes' | 'accept-new' | 'no' | 'ask';
  proxyJump: string | undefined;
}

function expandHome(p: string): string {
  return p === '~' ? os.homedir() : p.startsWith('~/') ? path.join(os.homedir(), p.slice(2)) : p;
}

function readConfigs(files: string[]): SSHConfig[] {
  const out: SSHConfig[] = [];
  for (const f of files) {
    try {
      out.push(SSHConfig.parse(readFileSync(f, 'utf8')));
    } catch {
      // an absent config file configures nothing
    }
  }
  return out;
}

/** Splits "user@host:port" as allowed in ckan-release.yml hosts. */
export function splitHost(spec: string): { user?: string; host: string; port?: number } {
  const m = /^(?:([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(spec);
  if (!m) return { host: spec };
  return { user: m[1], host: m[2]!.replace(/^\[|\]$/g, ''), port: m[3] ? Number(m[3]) : undefined };
}

export function resolveTarget(env: Environment, spec: string, home = os.homedir()): HostTarget {
  const { user: specUser, host, port: specPort } = splitHost(spec);
  const files = [...(env.sshConfig ? [env.sshConfig] : []), path.join(home, '.ssh', 'config')];
  const computed: Record<string, string | string[]> = {};
  for (const cfg of readConfigs(files)) {
    const c = cfg.compute(host, { ignoreCase: true }) as Record<string, string | string[]>;
    for (const [k, v] of Object.entries(c)) {
      const key = k.toLowerCase();
      if (key === 'identityfile')
        computed[key] = [...((computed[key] as string[] | undefined) ?? []), ...(Array.isArray(v) ? v : [v])];
      else if (!(key in computed)) computed[key] = v;
    }
  }
  const one = (k: string): string | undefined => {
    const v = computed[k];
    return Array.isArray(v) ? v[0] : v;
  };
  const hostname = one('hostname') ?? host;
  const port = specPort ?? (one('port') ? Number(one('port')) : undefined) ?? env.port ?? 22;
  const user = specUser ?? one('user') ?? env.user ?? os.userInfo().username;
  const knownHostsFiles = (one('userknownhostsfile') ?? '~/.ssh/known_hosts ~/.ssh/known_hosts2')
    .split(/\s+/)
    .filter(Boolean)
    .map(expandHome);
  const alias = one('hostkeyalias');
  const strict = (one('stricthostkeychecking') ?? 'ask').toLowerCase();
  return {
    name: spec,
    hostname,
    port,
    user,
    identityFiles: ((computed.identityfile as string[] | undefined) ?? []).map(expandHome),
    identitiesOnly: (one('identitiesonly') ?? 'no').toLowerCase() === 'yes',
    knownHostsFiles,
    keyNames: alias ? [alias] : [port === 22 ? hostname : `[${hostname}]:${port}`],
    strictHostKeyChecking: strict === 'yes' || strict === 'accept-new' || strict === 'no' ? strict : 'ask',
    proxyJump: one('proxyjump'),
  };
}
