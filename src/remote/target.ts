// Where and how to reach a host, as OpenSSH would: the environment's own ssh_config first, then
// ~/.ssh/config, then /etc/ssh/ssh_config (first value wins, as in ssh; IdentityFile accumulates), then
// the environment's user/port, then defaults. `Include` is followed; %-tokens and ${VAR} are expanded
// where OpenSSH expands them; ProxyJump chains are resolved into `jumps`, each jump host itself
// resolved through the same config files, as `ssh -J` does.
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import SSHConfig from 'ssh-config';
import type { Environment } from '../config/types.js';
import { UsageError } from '../errors.js';

export interface HostTarget {
  /** The host as written in ckan-release.yml (or in a ProxyJump list): what every message names. */
  name: string;
  hostname: string;
  port: number;
  user: string;
  identityFiles: string[];
  /** Whether identityFiles came from the config (false: OpenSSH's default ~/.ssh/id_* files). */
  identitiesConfigured: boolean;
  identitiesOnly: boolean;
  /** The agent socket: IdentityAgent if set, else $SSH_AUTH_SOCK; undefined: no agent. */
  identityAgent: string | undefined;
  knownHostsFiles: string[];
  /** Names to look the host key up by: HostKeyAlias if set, else [hostname]:port. */
  keyNames: string[];
  strictHostKeyChecking: 'yes' | 'accept-new' | 'no' | 'ask';
  /** HashKnownHosts: a key trusted on first use is written hashed. */
  hashKnownHosts: boolean;
  /** The ProxyJump value that applied (undefined or "none": direct). */
  proxyJump: string | undefined;
  /** The jump hosts, first hop first; empty for a direct connection. */
  jumps: HostTarget[];
}

export interface ResolveOptions {
  /** The home directory (~, %d, ~/.ssh/config). */
  home?: string;
  /** The system-wide client config, read last (default /etc/ssh/ssh_config; '' for none). */
  systemConfig?: string;
  /** Where $SSH_AUTH_SOCK and ${VAR} come from. */
  processEnv?: NodeJS.ProcessEnv;
}

/** OpenSSH's default identity files, in the order ssh tries them. */
const DEFAULT_IDENTITIES = ['id_rsa', 'id_ecdsa', 'id_ecdsa_sk', 'id_ed25519', 'id_ed25519_sk', 'id_dsa'];
const MAX_JUMPS = 8;

/** A glob of OpenSSH's kind (* and ?) as a RegExp. */
function globRe(pattern: string): RegExp {
  return new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
}

/**
 * A config file's text with its `Include` lines replaced by the files they name (globs in the last
 * path part; relative paths are under ~/.ssh for user files, /etc/ssh for the system file), as
 * OpenSSH reads them: in place, sorted, missing ones ignored.
 */
function withIncludes(file: string, base: string, home: string, depth = 0): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return ''; // an absent config file configures nothing
  }
  if (depth > 16) throw new UsageError(`${file}: Include nested too deeply (a loop?)`);
  return text
    .split('\n')
    .map((line) => {
      const m = /^\s*include\s+(.+?)\s*$/i.exec(line);
      if (!m) return line;
      const parts: string[] = [];
      for (const raw of m[1]!.split(/\s+/)) {
        const p = raw.replace(/^"|"$/g, '');
        const abs = p.startsWith('~') ? expandHome(p, home) : path.isAbsolute(p) ? p : path.join(base, p);
        const dir = path.dirname(abs);
        const leaf = path.basename(abs);
        let names: string[];
        if (/[*?]/.test(leaf)) {
          try {
            names = readdirSync(dir)
              .filter((n) => globRe(leaf).test(n))
              .sort();
          } catch {
            names = [];
          }
        } else names = [leaf];
        for (const n of names) parts.push(withIncludes(path.join(dir, n), base, home, depth + 1));
      }
      return parts.join('\n');
    })
    .join('\n');
}

function expandHome(p: string, home: string): string {
  return p === '~' ? home : p.startsWith('~/') ? path.join(home, p.slice(2)) : p;
}

interface Tokens {
  home: string;
  host: string; // %h: the HostName
  original: string; // %n: as given
  port: number;
  user: string; // %r
}

/** %-tokens and ${VAR} as OpenSSH expands them in IdentityFile, UserKnownHostsFile, IdentityAgent. */
function expandTokens(value: string, t: Tokens, env: NodeJS.ProcessEnv, what: string): string {
  const withEnv = value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
    const v = env[name];
    if (v === undefined)
      throw new UsageError(`ssh config: ${what} "${value}" uses \${${name}}, which is not set`);
    return v;
  });
  const expanded = withEnv.replace(/%(.)/g, (all, c: string) => {
    switch (c) {
      case '%':
        return '%';
      case 'd':
        return t.home;
      case 'h':
        return t.host;
      case 'n':
        return t.original;
      case 'p':
        return String(t.port);
      case 'r':
        return t.user;
      case 'u':
        return os.userInfo().username;
      case 'l':
        return os.hostname().split('.')[0]!;
      case 'L':
        return os.hostname();
      case 'i':
        return String(os.userInfo().uid);
      default:
        throw new UsageError(`ssh config: ${what} "${value}": unsupported token ${all}`);
    }
  });
  return expandHome(expanded, t.home);
}

/** Splits "user@host:port" as allowed in ckan-release.yml hosts (and ProxyJump, with ssh://). */
export function splitHost(spec: string): { user?: string; host: string; port?: number } {
  const m = /^(?:ssh:\/\/)?(?:([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(spec);
  if (!m) return { host: spec };
  return { user: m[1], host: m[2]!.replace(/^\[|\]$/g, ''), port: m[3] ? Number(m[3]) : undefined };
}

type Computed = Record<string, string | string[]>;

function computeFor(configs: SSHConfig[], host: string, user: string | undefined): Computed {
  const computed: Computed = {};
  for (const cfg of configs) {
    const c = cfg.compute(user ? { Host: host, User: user } : { Host: host }, {
      ignoreCase: true,
    }) as Computed;
    for (const [k, v] of Object.entries(c)) {
      const key = k.toLowerCase();
      if (key === 'identityfile')
        computed[key] = [...((computed[key] as string[] | undefined) ?? []), ...(Array.isArray(v) ? v : [v])];
      else if (!(key in computed)) computed[key] = v;
    }
  }
  return computed;
}

interface Ctx {
  configs: SSHConfig[];
  home: string;
  env: NodeJS.ProcessEnv;
  /** The environment's user and port: for the environment's own hosts, never for jump hosts. */
  envUser: string | undefined;
  envPort: number | undefined;
}

function loadConfigs(env: Pick<Environment, 'sshConfig'>, home: string, system: string): SSHConfig[] {
  const files: { file: string; base: string }[] = [
    ...(env.sshConfig ? [{ file: env.sshConfig, base: path.dirname(env.sshConfig) }] : []),
    { file: path.join(home, '.ssh', 'config'), base: path.join(home, '.ssh') },
    ...(system ? [{ file: system, base: path.dirname(system) }] : []),
  ];
  return files.map(({ file, base }) => {
    try {
      return SSHConfig.parse(withIncludes(file, base, home));
    } catch (e) {
      throw new UsageError(`${file}: cannot parse this ssh config: ${(e as Error).message}`);
    }
  });
}

/** One host without its jumps: the config's values for it, the spec's user/port over them. */
function resolveOne(ctx: Ctx, spec: string, isEnvHost: boolean): Omit<HostTarget, 'jumps'> {
  const { user: specUser, host, port: specPort } = splitHost(spec);
  const computed = computeFor(ctx.configs, host, specUser);
  const one = (k: string): string | undefined => {
    const v = computed[k];
    return Array.isArray(v) ? v[0] : v;
  };
  const hostname = (one('hostname') ?? host).replace(/%(%|h)/g, (_, c: string) => (c === '%' ? '%' : host));
  const portText = one('port');
  const port =
    specPort ?? (portText ? Number(portText) : undefined) ?? (isEnvHost ? ctx.envPort : undefined) ?? 22;
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new UsageError(`ssh config for ${host}: Port "${portText}" is not a TCP port number`);
  const user = specUser ?? one('user') ?? (isEnvHost ? ctx.envUser : undefined) ?? os.userInfo().username;
  const tokens: Tokens = { home: ctx.home, host: hostname, original: host, port, user };
  const knownHostsFiles = (one('userknownhostsfile') ?? '~/.ssh/known_hosts ~/.ssh/known_hosts2')
    .split(/\s+/)
    .filter(Boolean)
    .map((f) => expandTokens(f, tokens, ctx.env, 'UserKnownHostsFile'));
  const configured = ((computed.identityfile as string[] | undefined) ?? []).filter(
    (f) => f.toLowerCase() !== 'none',
  );
  const identityFiles = (configured.length ? configured : DEFAULT_IDENTITIES.map((f) => `~/.ssh/${f}`)).map(
    (f) => expandTokens(f, tokens, ctx.env, 'IdentityFile'),
  );
  const agentSetting = one('identityagent');
  const identityAgent =
    agentSetting === undefined || agentSetting === 'SSH_AUTH_SOCK'
      ? ctx.env.SSH_AUTH_SOCK || undefined
      : agentSetting.toLowerCase() === 'none'
        ? undefined
        : agentSetting.startsWith('$')
          ? ctx.env[agentSetting.slice(1)] || undefined
          : expandTokens(agentSetting, tokens, ctx.env, 'IdentityAgent');
  const alias = one('hostkeyalias');
  const strict = (one('stricthostkeychecking') ?? 'ask').toLowerCase();
  const proxyJump = one('proxyjump');
  const proxyCommand = one('proxycommand');
  if (proxyCommand && proxyCommand.toLowerCase() !== 'none' && !proxyJump)
    throw new UsageError(
      `ssh config for ${host}: ProxyCommand is not supported ("${proxyCommand}")`,
      'use ProxyJump for hosts behind a bastion (ProxyJump bastion, or a chain: ProxyJump b1,b2)',
    );
  return {
    name: spec,
    hostname,
    port,
    user,
    identityFiles,
    identitiesConfigured: configured.length > 0,
    identitiesOnly: (one('identitiesonly') ?? 'no').toLowerCase() === 'yes',
    identityAgent,
    knownHostsFiles,
    keyNames: alias ? [alias] : [port === 22 ? hostname : `[${hostname}]:${port}`],
    strictHostKeyChecking:
      strict === 'yes' || strict === 'accept-new' || strict === 'no'
        ? strict
        : strict === 'off'
          ? 'no'
          : 'ask',
    hashKnownHosts: (one('hashknownhosts') ?? 'no').toLowerCase() === 'yes',
    proxyJump,
  };
}

/**
 * A host with its jump chain. As OpenSSH does for `ProxyJump a,b,c`: c is reached through `-J a,b`
 * (c's own ProxyJump is overridden), and the first hop a through its own ProxyJump, if any.
 */
function resolveChain(
  ctx: Ctx,
  spec: string,
  isEnvHost: boolean,
  jumpOverride: string | undefined,
  seen: string[],
): HostTarget {
  const t = resolveOne(ctx, spec, isEnvHost);
  const via = jumpOverride ?? t.proxyJump;
  if (!via || via.toLowerCase() === 'none') return { ...t, proxyJump: via, jumps: [] };
  const hops = via
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
  const chain = [...seen, spec];
  const last = hops.pop()!;
  if (chain.includes(last) || chain.length > MAX_JUMPS) {
    throw new UsageError(
      `ssh config: ProxyJump loops: ${[...chain, last].join(' -> ')}`,
      `give the jump host its own block with \`ProxyJump none\` (before any \`Host *\`), or exclude it: \`Host * !${splitHost(last).host}\``,
    );
  }
  const lastHop = resolveChain(ctx, last, false, hops.length ? hops.join(',') : undefined, chain);
  return { ...t, proxyJump: via, jumps: [...lastHop.jumps, { ...lastHop, jumps: [] }] };
}

export function resolveTarget(
  env: Pick<Environment, 'sshConfig' | 'user' | 'port'>,
  spec: string,
  opts: string | ResolveOptions = {},
): HostTarget {
  const o: ResolveOptions = typeof opts === 'string' ? { home: opts } : opts;
  const home = o.home ?? os.homedir();
  const ctx: Ctx = {
    configs: loadConfigs(env, home, o.systemConfig ?? '/etc/ssh/ssh_config'),
    home,
    env: o.processEnv ?? process.env,
    envUser: env.user,
    envPort: env.port,
  };
  return resolveChain(ctx, spec, true, undefined, []);
}

/** "deploy@127.0.0.1:2222" for messages. */
export function describeHop(t: Pick<HostTarget, 'user' | 'hostname' | 'port'>): string {
  return `${t.user}@${t.hostname}:${t.port}`;
}
