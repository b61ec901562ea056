// What the web server recipes and the shipped templates may use on one host, decided from the facts the
// host agent reads (`server-facts`: Apache's version and log directory, the mod_wsgi it loads) and the
// host's template variables. Pure: the same functions decide the dry run's "WOULD FAIL" lines, the real
// run's refusal (exit 2, before any host changes) and the template variables (README "Web servers").

/** The agent's `server-facts` answer. */
export interface ServerFacts {
  apache: {
    command: string;
    version: string;
    config: string;
    /** `${APACHE_LOG_DIR}` (Debian/Ubuntu's envvars define it), else the compiled-in one, e.g. `logs`. */
    log_dir: string;
    mod_wsgi: {
      module: string;
      version: string | null;
      /** How the version was read: "package NAME VERSION" or "the module's banner string". */
      source: string | null;
      /** The Python the module links (libpythonX.Y), when it says. */
      python: string | null;
    } | null;
  } | null;
  /** The commands tried to find Apache (when none answered). */
  apache_tried: string[];
  /** Whether each path asked about is an executable file. */
  paths: Record<string, boolean>;
}

/** First version with <IfFile> (httpd 2.4.34) and with graceful-timeout / graceful SIGUSR1 (mod_wsgi 4.1). */
export const APACHE_IFFILE = '2.4.34';
export const MOD_WSGI_GRACEFUL = '4.1';

const APACHE_TEMPLATES = ['builtin:apache-vhost.conf'];
const UWSGI_TEMPLATES = ['builtin:uwsgi.ini', 'builtin:supervisor-ckan-uwsgi.conf'];

/** -1, 0 or 1, comparing dotted versions numerically ("2.4.6" < "2.4.34"; "4.1" = "4.1.0"). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map((x) => parseInt(x, 10) || 0);
  const pb = b.split('.').map((x) => parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return d < 0 ? -1 : 1;
  }
  return 0;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v ? v : typeof v === 'number' ? String(v) : undefined;
}

/** The host part of site_url (with its port, as a browser sends it), if site_url is a URL. */
export function siteHost(siteUrl: unknown): string | undefined {
  if (typeof siteUrl !== 'string') return undefined;
  try {
    return new URL(siteUrl).host || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The Host header of the health check: deploy.healthcheck.host when set (rendered; "" sends the URL's
 * own), else site_url's host. Sent so that a distribution's default site on the same port cannot answer
 * for CKAN.
 */
export function healthcheckHost(
  rendered: string | undefined,
  vars: Record<string, unknown>,
): string | undefined {
  if (rendered !== undefined) return rendered || undefined;
  return siteHost(vars.site_url);
}

/** The versions the templates and recipes go by: the host's variables win over the facts. */
function effective(facts: ServerFacts | null, vars: Record<string, unknown>) {
  return {
    apache: str(vars.apache_version) ?? facts?.apache?.version,
    modWsgi: str(vars.mod_wsgi_version) ?? facts?.apache?.mod_wsgi?.version ?? undefined,
  };
}

/**
 * Variables the shipped templates use, from the facts, under the host's own variables (which win: a
 * host may say `apache_has_iffile: false` itself). Without facts (no Apache there), only site_host.
 */
export function serverFactVars(
  facts: ServerFacts | null,
  vars: Record<string, unknown>,
): Record<string, unknown> {
  const v = effective(facts, vars);
  const derived: Record<string, unknown> = {};
  const host = siteHost(vars.site_url);
  if (host) derived.site_host = host.replace(/:\d+$/, '');
  if (v.apache) {
    derived.apache_version = v.apache;
    derived.apache_has_iffile = compareVersions(v.apache, APACHE_IFFILE) >= 0;
  }
  if (facts?.apache) derived.apache_log_dir = facts.apache.log_dir;
  if (v.modWsgi) derived.mod_wsgi_version = v.modWsgi;
  // Unknown: the vhost leaves graceful-timeout out (what every mod_wsgi accepts); apache-graceful
  // refuses such a host anyway (serverProblems).
  derived.mod_wsgi_has_graceful_timeout = !!v.modWsgi && compareVersions(v.modWsgi, MOD_WSGI_GRACEFUL) >= 0;
  return { ...derived, ...vars };
}

export interface ServerCheck {
  restart: string;
  /** server.files template sources as written (builtin:NAME or a path). */
  templates: string[];
  facts: ServerFacts | null;
  /** The host's template variables (environment vars, host_vars...). */
  vars: Record<string, unknown>;
  /** <root>/current. */
  current: string;
  /** The release to be served, when known: its Python (X.Y.Z) and its files (null: not known here). */
  release?: { python: string; files: string[] | null };
}

/** The uwsgi binary the shipped uwsgi templates run: uwsgi_binary, default <current>/bin/uwsgi. */
export function uwsgiBinary(vars: Record<string, unknown>, current: string): string {
  return str(vars.uwsgi_binary) ?? `${current}/bin/uwsgi`;
}

/** The paths the agent is asked about (is it an executable?) for these checks. */
export function pathsToCheck(c: Omit<ServerCheck, 'facts'>): string[] {
  if (!c.templates.some((t) => UWSGI_TEMPLATES.includes(t))) return [];
  const bin = uwsgiBinary(c.vars, c.current);
  return bin.startsWith(`${c.current}/`) ? [] : [bin];
}

/**
 * Why the configured restart recipe or shipped templates cannot work on this host (empty: they can).
 * Each line reads after "HOST: ".
 */
export function serverProblems(c: ServerCheck): string[] {
  const problems: string[] = [];
  const apache = c.facts?.apache ?? null;
  const wsgi = apache?.mod_wsgi ?? null;
  const v = effective(c.facts, c.vars);
  const usesVhost = c.templates.some((t) => APACHE_TEMPLATES.includes(t));
  const graceful = c.restart === 'apache-graceful';
  const noApache = `no Apache found on this host (tried ${(c.facts?.apache_tried ?? []).join(', ') || 'apachectl'} -V)`;
  const noWsgi = apache
    ? `Apache on this host loads no mod_wsgi (no LoadModule wsgi_module in ${apache.config} or the files it includes)`
    : noApache;
  if (graceful) {
    const need = `restart apache-graceful needs mod_wsgi >= ${MOD_WSGI_GRACEFUL} (graceful daemon restart by SIGUSR1)`;
    if (!apache && !v.modWsgi) problems.push(`${need}: ${noApache}`);
    else if (!wsgi && !v.modWsgi) problems.push(`${need}: ${noWsgi}`);
    else if (!v.modWsgi)
      problems.push(
        `${need}: cannot tell the version of ${wsgi!.module} (no package owns it, and the file does not say): set the variable mod_wsgi_version for this host`,
      );
    else if (compareVersions(v.modWsgi, MOD_WSGI_GRACEFUL) < 0)
      problems.push(
        `restart apache-graceful needs mod_wsgi >= ${MOD_WSGI_GRACEFUL}, this host has ${v.modWsgi} (${wsgi ? `${wsgi.module}, ${wsgi.source ?? 'version source unknown'}` : 'the variable mod_wsgi_version'}): install a mod_wsgi 4.x built for the releases' Python (e.g. python3-mod_wsgi, or mod_wsgi-express install-module), or set deploy.restart to a command`,
      );
  }
  if (usesVhost && !graceful) {
    if (!apache && !v.apache)
      problems.push(`server.files builtin:apache-vhost.conf needs Apache: ${noApache}`);
    else if (!wsgi && !v.modWsgi)
      problems.push(`server.files builtin:apache-vhost.conf needs mod_wsgi: ${noWsgi}`);
  }
  if ((usesVhost || graceful) && wsgi?.python && c.release) {
    const py = c.release.python.split('.').slice(0, 2).join('.');
    if (py !== wsgi.python)
      problems.push(
        `${wsgi.module} is built for Python ${wsgi.python}, the release runs Python ${py}: mod_wsgi can serve only releases of its own Python`,
      );
  }
  if (c.templates.some((t) => UWSGI_TEMPLATES.includes(t))) {
    const bin = uwsgiBinary(c.vars, c.current);
    if (bin.startsWith(`${c.current}/`)) {
      const rel = bin.slice(c.current.length + 1);
      if (c.release?.files && !c.release.files.includes(rel))
        problems.push(
          `the uwsgi templates run ${bin} (uwsgi_binary), but the release has no ${rel}: add uwsgi to builder.extra_requirements, or set uwsgi_binary to the host's uWSGI (e.g. /usr/bin/uwsgi with uwsgi_plugin: python3)`,
        );
    } else if (c.facts && c.facts.paths[bin] === false) {
      problems.push(`uwsgi_binary ${bin} is not an executable file on this host`);
    }
  }
  return problems;
}
