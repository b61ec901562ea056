// `ckan-release diff A B`: what changed between two artifacts, from their manifests alone (pure), plus
// the commit subjects of each changed source when this machine's git mirror has both commits.
import type { Manifest } from './manifest.js';

export interface SourceChange {
  name: string;
  status: 'same' | 'changed' | 'added' | 'removed';
  from: { ref: string; commit: string } | null;
  to: { ref: string; commit: string } | null;
  /** The commits from..to, newest first, when the mirror has them; null when unknown. */
  commits: { commit: string; subject: string }[] | null;
}

export interface ArtifactDiff {
  from: string;
  to: string;
  sources: SourceChange[];
  patches: { added: string[]; removed: string[]; changed: string[] };
  pip: { added: string[]; removed: string[]; changed: { name: string; from: string; to: string }[] };
  files: {
    added: number;
    removed: number;
    changed: number;
    /** Bytes of the files added or changed in B (what a delta ship of B over A sends, uncompressed). */
    bytes_changed: number;
    bytes_from: number;
    bytes_to: number;
  };
  archive: { bytes_from: number; bytes_to: number };
}

const norm = (name: string) => name.toLowerCase().replace(/[-_.]+/g, '-');

/**
 * pip freeze as name -> what follows it ("==1.0", " @ file://..."). Editable installs come as a comment
 * "# Editable install with no version control (name==1.0)" and a "-e <release path>" line: the path
 * names the release, so the version from the comment stands for them ("==1.0 (editable)").
 */
export function freezeEntries(lines: string[]): Map<string, string> {
  const out = new Map<string, string>();
  let pending: [string, string] | undefined;
  for (const raw of lines) {
    const line = raw.trim();
    const editable = /^#.*\(([A-Za-z0-9][A-Za-z0-9._-]*)==([^)\s]+)\)\s*$/.exec(line);
    if (editable) {
      pending = [norm(editable[1]!), `==${editable[2]} (editable)`];
      continue;
    }
    if (!line || line.startsWith('#')) continue;
    if (line.startsWith('-e ')) {
      if (pending) out.set(...pending);
      else {
        const egg = /[#&]egg=([A-Za-z0-9._-]+)/.exec(line)?.[1] ?? line.split('/').pop()!;
        out.set(norm(egg), ' (editable)');
      }
      pending = undefined;
      continue;
    }
    pending = undefined;
    const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$/.exec(line);
    if (m) out.set(norm(m[1]!), m[2]!.startsWith('@') ? ` ${m[2]}` : m[2]!);
  }
  return out;
}

export function diffManifests(a: Manifest, b: Manifest): ArtifactDiff {
  const src = (m: Manifest) =>
    new Map([
      ['ckan', { ref: m.ckan.ref, commit: m.ckan.commit }],
      ...m.extensions.map((x) => [x.name, { ref: x.ref, commit: x.commit }] as const),
    ]);
  const sa = src(a);
  const sb = src(b);
  const names = [...new Set([...sa.keys(), ...sb.keys()])];
  const sources: SourceChange[] = names.map((name) => {
    const from = sa.get(name) ?? null;
    const to = sb.get(name) ?? null;
    const status = !from ? 'added' : !to ? 'removed' : from.commit === to.commit ? 'same' : 'changed';
    return { name, status, from, to, commits: status === 'same' ? [] : null };
  });

  const pa = new Map(a.patches.map((p) => [p.file, p.sha256]));
  const pb = new Map(b.patches.map((p) => [p.file, p.sha256]));
  const patches = {
    added: [...pb.keys()].filter((f) => !pa.has(f)),
    removed: [...pa.keys()].filter((f) => !pb.has(f)),
    changed: [...pb.keys()].filter((f) => pa.has(f) && pa.get(f) !== pb.get(f)),
  };

  const fa = freezeEntries(a.pip.freeze);
  const fb = freezeEntries(b.pip.freeze);
  const pip = {
    added: [...fb.keys()].filter((n) => !fa.has(n)).map((n) => `${n}${fb.get(n)}`),
    removed: [...fa.keys()].filter((n) => !fb.has(n)).map((n) => `${n}${fa.get(n)}`),
    changed: [...fb.keys()]
      .filter((n) => fa.has(n) && fa.get(n) !== fb.get(n))
      .map((n) => ({ name: n, from: fa.get(n)!, to: fb.get(n)! })),
  };

  const key = (f: Manifest['files'][number]) => `${f.type}|${f.mode}|${f.sha256 ?? ''}|${f.target ?? ''}`;
  const ma = new Map(a.files.map((f) => [f.path, f]));
  const mb = new Map(b.files.map((f) => [f.path, f]));
  const files = { added: 0, removed: 0, changed: 0, bytes_changed: 0, bytes_from: 0, bytes_to: 0 };
  for (const f of a.files) {
    files.bytes_from += f.size;
    if (!mb.has(f.path)) files.removed++;
  }
  for (const f of b.files) {
    files.bytes_to += f.size;
    const old = ma.get(f.path);
    if (!old) {
      files.added++;
      files.bytes_changed += f.size;
    } else if (key(old) !== key(f)) {
      files.changed++;
      files.bytes_changed += f.size;
    }
  }
  return {
    from: a.id,
    to: b.id,
    sources,
    patches,
    pip,
    files,
    archive: { bytes_from: a.archive.bytes, bytes_to: b.archive.bytes },
  };
}

/** One line for notifications and the end of `diff`: the sources that changed and the file counts. */
export function diffSummary(d: ArtifactDiff): string {
  const changed = d.sources.filter((s) => s.status !== 'same');
  const parts = changed.map((s) =>
    s.status === 'added'
      ? `+${s.name} ${s.to!.ref}`
      : s.status === 'removed'
        ? `-${s.name}`
        : `${s.name} ${s.from!.ref === s.to!.ref ? s.from!.commit.slice(0, 8) : s.from!.ref} -> ${s.from!.ref === s.to!.ref ? s.to!.commit.slice(0, 8) : s.to!.ref}${s.commits ? ` (${s.commits.length} commit${s.commits.length === 1 ? '' : 's'})` : ''}`,
  );
  const p = d.patches.added.length + d.patches.removed.length + d.patches.changed.length;
  const pip = d.pip.added.length + d.pip.removed.length + d.pip.changed.length;
  if (p) parts.push(`${p} patch${p === 1 ? '' : 'es'} changed`);
  if (pip) parts.push(`pip: ${pip} package${pip === 1 ? '' : 's'} changed`);
  parts.push(
    `files: ${d.files.changed} changed, ${d.files.added} added, ${d.files.removed} removed (${(d.files.bytes_changed / 1e6).toFixed(1)} MB)`,
  );
  return changed.length || p || pip || d.files.changed || d.files.added || d.files.removed
    ? parts.join('; ')
    : 'no change';
}

/** The diff as text, one section per kind. */
export function formatDiff(d: ArtifactDiff): string {
  const out = [`${d.from} -> ${d.to}`];
  out.push('sources:');
  for (const s of d.sources) {
    if (s.status === 'same') {
      out.push(`  ${s.name} ${s.to!.ref} (${s.to!.commit.slice(0, 12)}): unchanged`);
      continue;
    }
    if (s.status === 'added') out.push(`  ${s.name}: added at ${s.to!.ref} (${s.to!.commit.slice(0, 12)})`);
    else if (s.status === 'removed') out.push(`  ${s.name}: removed (was ${s.from!.ref})`);
    else
      out.push(
        `  ${s.name}: ${s.from!.ref} (${s.from!.commit.slice(0, 12)}) -> ${s.to!.ref} (${s.to!.commit.slice(0, 12)})`,
      );
    if (s.commits) for (const c of s.commits) out.push(`    ${c.commit.slice(0, 12)} ${c.subject}`);
    else if (s.status === 'changed')
      out.push('    (commit subjects unknown: the git mirror lacks one of the commits)');
  }
  const list = (title: string, xs: string[]) => xs.length && out.push(`  ${title}: ${xs.join(', ')}`);
  out.push('patches:');
  list('added', d.patches.added);
  list('removed', d.patches.removed);
  list('changed', d.patches.changed);
  if (!d.patches.added.length && !d.patches.removed.length && !d.patches.changed.length)
    out.push('  unchanged');
  out.push('pip freeze:');
  for (const x of d.pip.added) out.push(`  + ${x}`);
  for (const x of d.pip.removed) out.push(`  - ${x}`);
  for (const x of d.pip.changed) out.push(`  ~ ${x.name}: ${x.from} -> ${x.to}`);
  if (!d.pip.added.length && !d.pip.removed.length && !d.pip.changed.length) out.push('  unchanged');
  const f = d.files;
  out.push(
    `files: ${f.changed} changed, ${f.added} added, ${f.removed} removed; ${f.bytes_changed} bytes in the changed and added files; release ${f.bytes_from} -> ${f.bytes_to} bytes, archive ${d.archive.bytes_from} -> ${d.archive.bytes_to} bytes`,
  );
  return out.join('\n') + '\n';
}
