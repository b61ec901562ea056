// The web server's side of a deploy: the files that wire the server to <root>/current (server.files:
// WSGI script, vhost, uwsgi ini, supervisor program), installed by `setup` and by `ship` when their
// rendering changes; and the restart, by a named recipe (apache-graceful, uwsgi-reload) or a command.
import path from 'node:path';
import { Readable } from 'node:stream';
import { isAdopted } from '../artifact/adopted.js';
import type { Manifest } from '../artifact/manifest.js';
import { RESTART_RECIPES, type RestartRecipe } from '../config/schema.js';
import type { ServerFile } from '../config/types.js';
import { OperationError, UsageError } from '../errors.js';
import { currentFile, currentLink } from '../layout.js';
import { renderFile, renderString } from '../render/template.js';
import { callAgent, callAgentReadOnly } from './agent.js';
import { pathsToCheck, serverFactVars, serverProblems, type ServerFacts } from './server-facts.js';
import { agentFor, type HostSession, type Session } from './session.js';
import { cmd } from './shell.js';
import { shellVars, templateVars } from './vars.js';

/** A server file as this run found or left it on one host. */
export interface ServerFileChange {
  dest: string;
  changed: boolean;
  /** Where the host kept the file it replaced (null: there was none, or nothing changed). */
  backup: string | null;
  existed: boolean;
  reload: string | undefined;
}

/**
 * Template variables for server files. With a manifest, the same as the CKAN config's; without one
 * (setup, before any release is known), the release variables name <root>/current and the release's
 * lists are empty, so a server file that names only `current` renders the same both ways. A release
 * setup adopted counts as none: its server files are those setup installed with it live (they fall
 * back to `legacy_config`, the site's own config). Over them, under the host's own variables: what the
 * host's web server supports (serverFactVars), from `facts`.
 */
export function serverVars(
  s: Pick<Session, 'config' | 'env' | 'secrets'>,
  host: string,
  m: Manifest | null,
  facts: ServerFacts | null = null,
): Record<string, unknown> {
  const current = currentLink(s.config.root);
  const vars =
    m && !isAdopted(m)
      ? templateVars(s, host, m)
      : {
          ...templateVars(s, host, { id: '', extensions: [] }),
          release: current,
          release_id: '',
          config_file: currentFile(s.config.root, s.env.configFile),
        };
  return serverFactVars(facts, vars);
}

/** The host's variables as the server checks see them (no secrets: they are not needed there). */
function hostVars(s: Pick<Session, 'env'>, host: string): Record<string, unknown> {
  return { ...s.env.vars, ...(s.env.hostVars[host] ?? {}) };
}

/** Whether this config depends on the host's web server facts at all. */
function needsServerFacts(s: Pick<Session, 'config'>): boolean {
  return s.config.server.files.length > 0 || restartRecipe(s.config.deploy.restart) !== undefined;
}

const factsCache = new WeakMap<HostSession, Promise<ServerFacts | null>>();

/**
 * The host's web server facts (the agent's `server-facts`), read once per session and host, without
 * writing anything to the host; null when this config uses no recipe and no server file.
 */
export function readServerFacts(s: Session, h: HostSession, python: string): Promise<ServerFacts | null> {
  let p = factsCache.get(h);
  if (!p) {
    p = needsServerFacts(s)
      ? callAgentReadOnly<ServerFacts>(agentFor(s, h, python), 'read the web server facts', 'server-facts', {
          command: s.config.server.apache.command,
          paths: pathsToCheck({
            restart: s.config.deploy.restart,
            templates: s.config.server.files.map((f) => f.source),
            vars: hostVars(s, h.name),
            current: currentLink(s.config.root),
          }),
        })
      : Promise.resolve(null);
    factsCache.set(h, p);
  }
  return p;
}

/**
 * Per host, why the restart recipe or the shipped server templates cannot work there (serverProblems),
 * for the release of `m` (null: setup, no release known). Read-only: plans and refusals alike.
 */
export async function serverChecks(
  s: Session,
  python: string,
  m: Manifest | null,
): Promise<{ host: string; facts: ServerFacts | null; problems: string[]; unread?: string }[]> {
  return Promise.all(
    s.hosts.map(async (h) => {
      let facts: ServerFacts | null;
      try {
        facts = await readServerFacts(s, h, python);
      } catch (e) {
        // Not a verdict on the web server (the host may lack the artifact's python, say): the
        // preflight names such a problem; a later read tries again.
        factsCache.delete(h);
        return {
          host: h.name,
          facts: null,
          problems: [],
          unread: e instanceof Error ? e.message : String(e),
        };
      }
      if (!facts) return { host: h.name, facts, problems: [] };
      const problems = serverProblems({
        restart: s.config.deploy.restart,
        templates: s.config.server.files.map((f) => f.source),
        facts,
        vars: hostVars(s, h.name),
        current: currentLink(s.config.root),
        // An adopted release has no manifest to check against: it runs on the host already.
        ...(m && !isAdopted(m)
          ? {
              release: {
                python: m.builder.python.version,
                files: m.files.length ? m.files.map((f) => f.path) : null,
              },
            }
          : {}),
      });
      return { host: h.name, facts, problems };
    }),
  );
}

/** Refuses (exit 2, nothing touched) when serverChecks finds a problem on any host. */
export async function refuseUnfitServers(
  s: Session,
  python: string,
  m: Manifest | null,
  operation: string,
): Promise<void> {
  const checks = await serverChecks(s, python, m);
  const lines = checks.flatMap((c) => c.problems.map((p) => `  ${c.host}: ${p}`));
  if (lines.length)
    throw new UsageError(
      `${operation} refused before any host changed: the web server setup cannot work there:\n${lines.join('\n')}`,
    );
}

export function renderServerFile(f: ServerFile, vars: Record<string, unknown>): string {
  const shown = f.source.startsWith('builtin:') ? f.source : path.relative(process.cwd(), f.template);
  return renderFile(f.template, vars, shown);
}

/**
 * Renders every server file for host `h` and installs those that differ (content, mode, owner, group),
 * each by rename(2) of a temp file beside it. With `check`, only reports what would change.
 * On a failure halfway, what was installed is put back before the error is thrown.
 */
export async function installServerFiles(
  s: Session,
  h: HostSession,
  python: string,
  m: Manifest | null,
  check = false,
): Promise<ServerFileChange[]> {
  const vars = serverVars(s, h.name, m, await readServerFacts(s, h, python));
  // Render all first: a template error changes nothing on any file.
  const texts = s.config.server.files.map((f) => renderServerFile(f, vars));
  const done: ServerFileChange[] = [];
  try {
    for (const [i, f] of s.config.server.files.entries()) {
      const r = await callAgent<{ changed: boolean; existed: boolean; backup: string | null }>(
        agentFor(s, h, python),
        `install ${f.dest}`,
        'install-file',
        { root: s.config.root, dest: f.dest, mode: f.mode, owner: f.owner, group: f.group, check },
        { stdin: Readable.from([Buffer.from(texts[i]!)]) },
      );
      done.push({ dest: f.dest, changed: r.changed, backup: r.backup, existed: r.existed, reload: f.reload });
    }
    // Inside the try: a reload that fails (say, the server's config test refuses the new vhost) puts
    // the files back and reloads again, so the host is left as it was.
    if (!check) await runReloads(s, h, done, m);
  } catch (e) {
    if (!check && done.some((f) => f.changed)) {
      try {
        await restoreServerFiles(s, h, python, done, m);
      } catch (r) {
        throw new OperationError(
          `${h.name}: ${e instanceof Error ? e.message : String(e)}; putting the server files back ALSO failed: ${r instanceof Error ? r.message : String(r)}`,
        );
      }
    }
    throw e;
  }
  return done;
}

/** Runs the `reload` command of each changed file once per host (the same command only once). */
async function runReloads(
  s: Session,
  h: HostSession,
  files: ServerFileChange[],
  m: Manifest | null,
): Promise<void> {
  const commands = [...new Set(files.filter((f) => f.changed && f.reload).map((f) => f.reload!))];
  for (const c of commands) {
    const line = renderString(c, shellVars(serverVars(s, h.name, m)), 'server.files.reload');
    await h.remote.run(`reload after installing server files ("${c}")`, cmd(['sh', '-c', line]));
  }
}

/** Puts back what installServerFiles changed on one host (newest first), then runs the reloads. */
export async function restoreServerFiles(
  s: Session,
  h: HostSession,
  python: string,
  files: ServerFileChange[],
  m: Manifest | null,
): Promise<void> {
  const changed = files.filter((f) => f.changed);
  for (const f of [...changed].reverse()) {
    await callAgent(agentFor(s, h, python), `restore ${f.dest}`, 'restore-file', {
      root: s.config.root,
      dest: f.dest,
      backup: f.existed ? f.backup : null,
    });
  }
  await runReloads(s, h, changed, m);
}

export function restartRecipe(restart: string): RestartRecipe | undefined {
  return (RESTART_RECIPES as readonly string[]).includes(restart) ? (restart as RestartRecipe) : undefined;
}

/**
 * Restarts the web server on one host so that it serves what `current` points at. `full`: there was no
 * release before (a first activation) or there is none now (a first deploy switched back): the server's
 * config must be re-read, which only a full graceful does.
 */
export async function restartHost(
  s: Session,
  h: HostSession,
  m: Manifest,
  python: string,
  opts: { full: boolean },
): Promise<void> {
  const restart = s.config.deploy.restart;
  const recipe = restartRecipe(restart);
  if (!recipe) {
    const line = renderString(restart, shellVars(templateVars(s, h.name, m)), 'deploy.restart');
    await h.remote.run(`restart ("${restart}")`, cmd(['sh', '-c', line]));
    return;
  }
  const { apache, uwsgi, timeout } = s.config.server;
  const r = await callAgent<{ method: string; seconds: number; old: number[]; new: number[] }>(
    agentFor(s, h, python),
    `restart (${recipe})`,
    'restart',
    recipe === 'apache-graceful'
      ? { recipe, process_group: apache.processGroup, command: apache.command, timeout, first: opts.full }
      : {
          recipe,
          pidfile: uwsgi.pidfile,
          start: uwsgi.start
            ? renderString(uwsgi.start, shellVars(templateVars(s, h.name, m)), 'server.uwsgi.start')
            : null,
          timeout,
        },
  );
  s.say(
    `${h.name}: restarted (${recipe}: ${r.method}; ${r.old.length} old processes replaced by ${r.new.length} in ${r.seconds.toFixed(1)} s)`,
  );
}
