// A release `setup` adopted from the old layout: releases/<time>Z-00000000 -> ../default, the venv the
// old playbooks installed by hand. It has no artifact, no manifest and no RELEASE.json, so a rollback
// to it goes through a stand-in manifest (adoptedManifest) that says so; every rule that needs a real
// manifest asks isAdopted: the preflight's OS/Python/library checks (plan.ts hostCompatibility), the
// file-by-file verification and the config rendering (deploy.ts), the server files' release
// variables (server.ts serverVars), the health check's plugin list (none), and the plan (plan.ts).
import { defaultVenv, releaseDir } from '../layout.js';
import { artifactId } from './id.js';
import type { Manifest } from './manifest.js';

/** The stand-in for the adopted release `id` under `root`; `python`: the interpreter the agent runs with. */
export function adoptedManifest(project: string, root: string, id: string, python: string): Manifest {
  const release = releaseDir(root, id);
  return {
    format: 1,
    id,
    created: '',
    project,
    root,
    release_path: release,
    inputs_digest: '',
    builder: {
      os: 'none (adopted)',
      image: '',
      image_id: '',
      base_image: '',
      base_venv: '',
      python: { version: '', path: python },
    },
    libraries: [],
    ckan: { source: '', ref: '', commit: '', version: null },
    extensions: [],
    plugins: {},
    patches: [],
    pip: { index_url: null, find_links: [], extra_args: [], freeze: [] },
    archive: { file: 'release.tar.gz', bytes: 0, sha256: '' },
    files: [],
    adopted: { from: defaultVenv(root) },
  };
}

export function isAdopted(m: Pick<Manifest, 'adopted'>): boolean {
  return m.adopted !== undefined;
}

/**
 * What ship/rollback leave out for an adopted release, and why: printed by the dry run's plan and said
 * by the real run, from this one list.
 */
export function adoptedSkips(m: Pick<Manifest, 'adopted'>): string[] {
  if (!m.adopted) return [];
  return [
    `the OS, Python and library checks (they compare the host with an artifact's manifest; ${m.adopted.from} has none and runs on this host already)`,
    `the file-by-file verification (no manifest to verify ${m.adopted.from} against)`,
    `rendering the config (${m.adopted.from} keeps the site's own config, e.g. the one its WSGI script names)`,
    "the health check's plugin list (the site's own config has it, not ckan-release): status_show must answer success, with any plugins",
  ];
}

/**
 * The ID `setup` gives the venv it adopts: the run's UTC time and eight zeros (no inputs digest: it
 * was not built). One ID for every host adopted by the same run, so an environment's hosts agree on
 * their rollback target, as they do for built releases.
 */
export function adoptedId(when: Date): string {
  return artifactId(when, '0'.repeat(8));
}
