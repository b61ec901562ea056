// The host layout (README "Host layout"), as pure path functions: every path the tool names on a host
// is spelled here once. The host agent has its own `paths()` for the same names.
import path from 'node:path';

const join = path.posix.join;

/** <root>/releases */
export const releasesDir = (root: string): string => join(root, 'releases');
/** <root>/releases/<ID>: one release, also the path it was built at. */
export const releaseDir = (root: string, id: string): string => join(root, 'releases', id);
/** <root>/releases/<ID>/RELEASE.json: the manifest's header inside the release. */
export const releaseJson = (root: string, id: string): string => join(releaseDir(root, id), 'RELEASE.json');
/** <root>/current -> releases/<ID> */
export const currentLink = (root: string): string => join(root, 'current');
/** <root>/current/<file>: a file of whatever release is current (server files point here). */
export const currentFile = (root: string, file: string): string => join(root, 'current', file);
/** <root>/shared and <root>/shared/<path> */
export const sharedDir = (root: string, sub?: string): string =>
  sub === undefined ? join(root, 'shared') : join(root, 'shared', sub);
/** <root>/default: the old playbooks' venv, which setup adopts. */
export const defaultVenv = (root: string): string => join(root, 'default');
/** <root>/.ckan-release: the tool's own state on the host. */
export const metaDir = (root: string): string => join(root, '.ckan-release');
/** <root>/.ckan-release/ledger.jsonl */
export const ledgerFile = (root: string): string => join(metaDir(root), 'ledger.jsonl');
/** <root>/.ckan-release/agent: the host agent, one version per digest. */
export const agentDir = (root: string): string => join(metaDir(root), 'agent');
/** A tmp file's name as prune reports it: relative to the root. */
export const tmpRelative = (name: string): string => `.ckan-release/tmp/${name}`;

/** The directories setup makes (if missing): the layout, the agent's directory, the shared paths. */
export function setupDirs(root: string, shared: string[]): string[] {
  return [
    root,
    metaDir(root),
    agentDir(root),
    releasesDir(root),
    sharedDir(root),
    ...shared.map((x) => sharedDir(root, x)),
  ];
}
