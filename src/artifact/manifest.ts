// manifest.json: what an artifact is, how it was made, and every file in it.

export interface ManifestFile {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  /** Permission bits as four octal digits, e.g. "0755". */
  mode: string;
  size: number;
  sha256: string | null;
  target: string | null;
}

export interface ArchiveChunk {
  bytes: number;
  sha256: string;
}

export interface Manifest {
  format: 1;
  id: string;
  created: string;
  project: string;
  root: string;
  /** <root>/releases/<id>: the path the release was built at and must be unpacked at. */
  release_path: string;
  inputs_digest: string;
  builder: {
    os: string;
    image: string;
    image_id: string;
    base_image: string;
    base_venv: string;
    /** implementation: "cpython" (absent in older artifacts). */
    python: { version: string; path: string; implementation?: string };
    /** The builder's /etc/os-release ID and VERSION_ID: the hosts must run the same (absent in older artifacts). */
    os_release?: { id: string | null; version_id: string | null };
  };
  /** Sonames the release's ELF files need and do not bring (DT_NEEDED): the hosts must have them. */
  libraries?: string[];
  ckan: { source: string; ref: string; commit: string; version: string | null };
  extensions: {
    name: string;
    source: string;
    ref: string;
    commit: string;
    plugins: string[];
    /** The requirements files pip installed (-r), relative to the extension's tree; [] for none. */
    requirements?: string[];
  }[];
  /** Every ckan.plugins entry point in the release: name -> distribution and object. */
  plugins: Record<string, { dist: string; target: string }>;
  patches: { file: string; target: string; sha256: string }[];
  pip: {
    index_url: string | null;
    find_links: string[];
    extra_args: string[];
    /** builder.pip.constraints, .overrides and builder.extra_requirements (absent in older artifacts). */
    constraints?: string[];
    overrides?: string[];
    extra_requirements?: string[];
    freeze: string[];
  };
  archive: {
    file: 'release.tar.gz';
    bytes: number;
    sha256: string;
    /**
     * The archive's gzip members in order (their sizes add up to bytes): the chunks an S3 store keeps
     * content-addressed. Absent in artifacts built before it was recorded: the whole archive is then one chunk.
     */
    chunks?: ArchiveChunk[];
  };
  files: ManifestFile[];
  /**
   * Only on the stand-in for a release `setup` adopted from <root>/default (artifact/adopted.ts), never in
   * a manifest.json: the venv it was adopted from.
   */
  adopted?: { from: string };
}

/** The chunks of an archive in order: the recorded gzip members, or the whole archive as one. */
export function chunksOf(m: Manifest): ArchiveChunk[] {
  return m.archive.chunks?.length ? m.archive.chunks : [{ bytes: m.archive.bytes, sha256: m.archive.sha256 }];
}

/**
 * How many files a manifest lists, known without its file list where the reader recorded it (the header
 * cache of artifact/manifest-file.ts, which parses `files` only when it is read).
 */
const countOf = new WeakMap<Manifest, number>();

export function fileCount(m: Manifest): number {
  return countOf.get(m) ?? m.files.length;
}

/** Records fileCount(m) for a manifest whose file list is not parsed yet. */
export function knownFileCount(m: Manifest, count: number): void {
  countOf.set(m, count);
}
