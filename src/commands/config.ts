// config ENV [--host H]: the CKAN config file as ship would render it for one host, secrets masked.
import type { Command } from 'commander';
import type { Manifest } from '../artifact/manifest.js';
import { listArtifacts } from '../artifact/store.js';
import type { Io } from '../io.js';
import { environment, loadConfig } from '../config/load.js';
import { loadSecrets, secretValues } from '../config/secrets.js';
import { templateVars } from '../deploy/vars.js';
import { UsageError } from '../errors.js';
import { renderFile } from '../render/template.js';
import { globals } from './common.js';

export const MASK = '********';

/** Replaces every secret value in the text, longest first (secretValues' order). */
export function maskSecrets(text: string, secrets: Record<string, unknown>): string {
  let out = text;
  for (const value of secretValues(secrets)) out = out.split(value).join(MASK);
  return out;
}

export function configCommand(
  io: Io,
  envName: string,
  opts: { host?: string; showSecrets?: boolean },
  c: Command,
): void {
  const g = globals(c);
  const config = loadConfig(g.config);
  const env = environment(config, envName);
  const host = opts.host ?? env.hosts[0]!;
  if (!env.hosts.includes(host)) {
    throw new UsageError(`${host} is not a host of ${envName}: expected one of ${env.hosts.join(', ')}`);
  }
  const secrets = env.secrets
    ? loadSecrets(env.secrets, { vaultPasswordFile: g.vaultPasswordFile, env: process.env })
    : {};
  // Rendered for the artifact ship would send by default (the newest); before any build, for the
  // extensions of the config and a placeholder ID.
  const newest = listArtifacts(config.store)[0]?.manifest;
  const manifest =
    newest ??
    ({
      id: 'RELEASE-ID',
      extensions: config.extensions.map((x) => ({
        name: x.name,
        source: x.source,
        ref: x.ref,
        commit: '',
        plugins: x.plugins,
      })),
    } as unknown as Manifest);
  if (!newest) io.err(`no artifact built yet: rendering with release ID "RELEASE-ID"\n`);
  const text = renderFile(
    config.config.template,
    templateVars({ config, env, secrets }, host, manifest),
    config.config.template,
  );
  io.out(opts.showSecrets ? text : maskSecrets(text, secrets));
}
