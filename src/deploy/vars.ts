// Template variables of a deploy: for the config file and server files, for hooks and the restart
// command (shell-quoted), and the health check's URL and Host header.
import path from 'node:path';
import { isAdopted } from '../artifact/adopted.js';
import type { Manifest } from '../artifact/manifest.js';
import { currentFile, currentLink, releaseDir } from '../layout.js';
import { renderString } from '../render/template.js';
import { healthcheckHost } from './server-facts.js';
import type { Session } from './session.js';
import { shq } from './shell.js';

/** Template variables for one host: environment vars, secrets, host_vars, and the deploy's own. */
export function templateVars(
  s: Pick<Session, 'config' | 'env' | 'secrets'>,
  host: string,
  manifest: Pick<Manifest, 'id' | 'extensions' | 'adopted'>,
): Record<string, unknown> {
  const release = releaseDir(s.config.root, manifest.id);
  const own = { ...s.env.vars, ...s.secrets, ...(s.env.hostVars[host] ?? {}) };
  // A release setup adopted has no config of ckan-release's inside it: its config is the site's own,
  // `legacy_config` (the one the builtin WSGI scripts fall back to), when the environment names it.
  const legacy = isAdopted(manifest) && typeof own.legacy_config === 'string' ? own.legacy_config : null;
  return {
    ...own,
    project: s.config.project,
    release,
    release_id: manifest.id,
    root: s.config.root,
    current: currentLink(s.config.root),
    config_file: legacy ?? path.posix.join(release, s.env.configFile),
    // For server files, which point at current and so need no re-rendering at a switch.
    current_config_file: currentFile(s.config.root, s.env.configFile),
    deploy_owner: s.config.deploy.owner ?? 'root',
    deploy_group: s.config.deploy.group ?? s.config.deploy.owner ?? 'root',
    wsgi_process_group: s.config.server.apache.processGroup,
    uwsgi_pidfile: s.config.server.uwsgi.pidfile,
    environment: s.env.name,
    host,
    extensions: manifest.extensions,
    plugins: manifest.extensions.flatMap((x) => x.plugins),
  };
}

/**
 * The same variables for templates that become shell commands (hooks, restart): every string is
 * shell-quoted, so a value with spaces, quotes or $(...) stays one literal word. Safe paths such as
 * {{ release }} are left as they are, so `{{ release }}/bin/ckan` still works.
 */
export function shellVars(vars: Record<string, unknown>): Record<string, unknown> {
  const quote = (v: unknown): unknown =>
    typeof v === 'string' ? shq(v) : Array.isArray(v) ? v.map(quote) : v;
  return Object.fromEntries(Object.entries(vars).map(([k, v]) => [k, quote(v)]));
}

/** The health check of one host: its URL and the Host header it is sent with (healthcheckHost). */
export function healthcheckFor(
  s: Pick<Session, 'config' | 'env' | 'secrets'>,
  host: string,
  m: Pick<Manifest, 'id' | 'extensions'>,
): { url: string; host: string | undefined } {
  const vars = templateVars(s, host, m);
  const hc = s.config.deploy.healthcheck;
  return {
    url: renderString(hc.url, vars, 'deploy.healthcheck.url'),
    host: healthcheckHost(
      hc.host === undefined ? undefined : renderString(hc.host, vars, 'deploy.healthcheck.host'),
      vars,
    ),
  };
}
