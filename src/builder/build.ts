// ckan-release build: resolve and pin the inputs, make (or reuse) the builder image and the base venv
// image, run the release step in a container without network, and store the artifact atomically.
import {
  cpSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  type WriteStream,
} from 'node:fs';
import os from 'node:os';
import { PassThrough } from 'node:stream';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type Docker from 'dockerode';
import tar from 'tar-fs';
import type { ArchiveChunk, Manifest, ManifestFile } from '../artifact/manifest.js';
import type { Config } from '../config/types.js';
import { imageExists } from '../docker/engine.js';
import { ensureImage } from '../docker/images.js';
import { endedWithin } from '../docker/run.js';
import { CkanReleaseError, OperationError } from '../errors.js';
import { redactUrls } from '../redact.js';
import { exportTree } from './git.js';
import { artifactId } from '../artifact/id.js';
import { digest, findLinksListing, resolveInputs, type BuildInputs } from './inputs.js';
import { assembleArchive, localMembers } from './members.js';

export const BUILD_SCRIPT = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../assets/builder/ckan_release_build.py',
);
/** Where the base venv lives in the base image. Distinctive, so that any leftover mention is found. */
export const BASE_VENV = '/opt/ckan-release/base-venv';

/** The Docker volume that keeps the archive's compressed chunks between builds (see pack() in the script). */
export const PACK_CACHE_VOLUME = 'ckan-release-pack-cache';
const PACK_CACHE_MOUNT = '/cache';
/**
 * The Docker volume mounted at <root>/releases in the release container: copies of base venvs, one
 * per base image, of which each release is made by hard links (see BaseCopy in the script).
 */
export const BASE_COPIES_VOLUME = 'ckan-release-base-copies';

export type BuildStep =
  | 'resolve'
  | 'image'
  | 'base venv'
  | 'clone'
  | 'extensions'
  | 'patches'
  | 'install'
  | 'compile'
  | 'verify'
  | 'manifest'
  | 'pack'
  | 'store';

export type BuildEvent =
  | { kind: 'step'; step: BuildStep; detail?: string }
  | { kind: 'info'; message: string }
  | { kind: 'log'; text: string };

export interface BuildOptions {
  config: Config;
  docker: Docker;
  /** Mirrors and work directories; default ~/.cache/ckan-release. */
  cacheDir?: string;
  /** The Docker volume of compressed archive chunks; default $CKAN_RELEASE_PACK_CACHE_VOLUME or PACK_CACHE_VOLUME. */
  packCacheVolume?: string;
  /** The Docker volume of base venv copies; default $CKAN_RELEASE_BASE_COPIES_VOLUME or BASE_COPIES_VOLUME. */
  baseCopiesVolume?: string;
  onEvent?: (event: BuildEvent) => void;
  now?: () => Date;
}

export interface BuildResult {
  id: string;
  dir: string;
  archive: string;
  bytes: number;
  sha256: string;
  baseReused: boolean;
  imageReused: boolean;
  manifest: Manifest;
}

export class BuildFailedError extends OperationError {
  readonly logFile: string;
  constructor(message: string, logFile: string, tail: string) {
    super(
      `${message}${tail ? `\n--- last lines of the build log ---\n${tail}` : ''}`,
      `the whole build log: ${logFile}`,
    );
    this.logFile = logFile;
  }
}

export function defaultCacheDir(): string {
  return (
    process.env.CKAN_RELEASE_CACHE ??
    path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'ckan-release')
  );
}

interface ScriptEvent {
  event: 'step' | 'info' | 'error' | 'result' | 'done';
  name?: string;
  kind?: string;
  message?: string;
  [k: string]: unknown;
}

export async function build(opts: BuildOptions): Promise<BuildResult> {
  const { config, docker } = opts;
  const emit = opts.onEvent ?? (() => undefined);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const now = opts.now ?? (() => new Date());
  const scriptText = readFileSync(BUILD_SCRIPT);

  // The log exists from the first step so a failure at any point has one to show.
  mkdirSync(path.join(config.store, '.logs'), { recursive: true });
  const started = now();
  const logFile = path.join(
    config.store,
    '.logs',
    `build-${started.toISOString().replace(/[:.]/g, '')}-${process.pid}.log`,
  );
  const log = createWriteStream(logFile);
  const work = path.join(cacheDir, 'work', `${process.pid}-${Date.now()}`);
  let staging: string | undefined;

  try {
    emit({ kind: 'step', step: 'resolve' });
    const inputs = await resolveInputs(config, path.join(cacheDir, 'git'));
    for (const s of [inputs.ckan, ...inputs.extensions]) {
      emit({
        kind: 'info',
        message: `${s.name} ${s.ref} -> ${s.commit.slice(0, 12)}${s.fetched ? '' : ' (cached mirror, no fetch)'}`,
      });
    }

    emit({ kind: 'step', step: 'image' });
    const image = await ensureImage(
      docker,
      {
        context: path.dirname(config.builder.dockerfile),
        repository: 'ckan-release-builder',
        flavour: config.builder.os,
        buildArgs: { PYTHON: config.builder.python },
        labels: { 'org.ckan-release.builder-os': config.builder.os },
      },
      (m) => emit({ kind: 'info', message: m }),
      (chunk) => log.write(chunk),
    );
    const imageInfo = await docker.getImage(image.tag).inspect();
    const pythonPath = (imageInfo.Config.Env ?? [])
      .find((e) => e.startsWith('CKAN_RELEASE_PYTHON='))
      ?.slice(20);
    if (!pythonPath)
      throw new OperationError(
        `builder image ${image.tag} does not set CKAN_RELEASE_PYTHON (see docker/debian12/Dockerfile)`,
      );

    const pipSettings = {
      index_url: config.builder.pip.indexUrl ?? null,
      find_links: config.builder.pip.findLinks,
      extra_args: config.builder.pip.extraArgs,
      constraints: config.builder.pip.constraints,
      overrides: config.builder.pip.overrides,
    };
    // Core patches go into the base: applied to CKAN's tree before its requirements are installed.
    const corePatches = inputs.patches.filter((p) => p.target === 'ckan');
    const extensionPatches = inputs.patches.filter((p) => p.target !== 'ckan');
    const pipDigestPart = { ...pipSettings, find_links: findLinksListing(config.builder.pip.findLinks) };

    emit({ kind: 'step', step: 'base venv' });
    // The root too: the base's bytecode names its sources by <root>/current/... (see the script).
    const baseDigest = digest({
      image: image.id,
      root: config.root,
      ckan: inputs.ckan.commit,
      patches: corePatches.map((p) => ({ file: p.file, sha256: p.sha256 })),
      pip: pipDigestPart,
      extra_requirements: config.builder.extraRequirements,
      script: digest(scriptText.toString()),
    });
    const baseTag = `ckan-release-base:${config.builder.os}-${baseDigest.slice(0, 16)}`;
    const baseReused = await imageExists(docker, baseTag);
    if (baseReused) {
      emit({
        kind: 'info',
        message: `base venv: reused ${baseTag} (ckan ${inputs.ckan.commit.slice(0, 12)})`,
      });
    } else {
      emit({
        kind: 'info',
        message: `base venv: building ${baseTag} (ckan ${inputs.ckan.commit.slice(0, 12)} and its requirements)`,
      });
      const input = path.join(work, 'base', 'input');
      await exportTree(inputs.ckan.mirror, inputs.ckan.commit, path.join(input, 'ckan'), 'ckan');
      const findLinks = await moving(`copying builder.pip.find_links into ${input}`, () =>
        stageFindLinks(config.builder.pip.findLinks, input),
      );
      writeFileSync(
        path.join(input, 'spec.json'),
        JSON.stringify({
          base: BASE_VENV,
          current: path.posix.join(config.root, 'current'),
          ckan_source: '/input/ckan',
          pip: { ...pipSettings, find_links: findLinks },
          extra_requirements: config.builder.extraRequirements,
          patches: await moving(`copying the patches into ${input}`, () => stagePatches(corePatches, input)),
        }),
      );
      writeFileSync(path.join(input, 'build.py'), scriptText);
      await runStep(docker, image.tag, 'base', path.join(work, 'base'), {
        network: config.builder.network,
        log,
        emit,
        commitAs: baseTag,
        logFile,
      });
    }

    const inputsDigest = digest({
      // Everything the base is made of (core patches, pins, extra requirements), then the rest.
      base: baseDigest,
      image: image.id,
      root: config.root,
      python: config.builder.python,
      ckan: inputs.ckan.commit,
      extensions: inputs.extensions.map((x) => ({
        name: x.name,
        commit: x.commit,
        plugins: x.plugins,
        requirements: x.requirements,
      })),
      patches: inputs.patches.map((p) => ({ target: p.target, file: p.file, sha256: p.sha256 })),
      pip: pipDigestPart,
      script: digest(scriptText.toString()),
    });
    const id = artifactId(now(), inputsDigest);
    const releasesDir = path.posix.join(config.root, 'releases');
    const releasePath = path.posix.join(releasesDir, id);
    emit({ kind: 'info', message: `artifact ${id}, built at ${releasePath}` });

    const localArchiveMembers = localMembers(config.store);
    // The release step's input: extension trees, patches, find-links, the spec and the script.
    const input = path.join(work, 'release', 'input');
    await Promise.all(
      inputs.extensions.map((x) =>
        exportTree(x.mirror, x.commit, path.join(input, 'src', x.name), `extensions.${x.name}`),
      ),
    );
    const releasePatches = await moving(`copying the patches into ${input}`, () =>
      stagePatches(extensionPatches, input),
    );
    const findLinks = await moving(`copying builder.pip.find_links into ${input}`, () =>
      stageFindLinks(config.builder.pip.findLinks, input),
    );
    const created = now().toISOString();
    const releaseJson = releaseHeader(
      config,
      id,
      created,
      releasePath,
      inputs,
      image.tag,
      imageInfo.Id,
      baseTag,
    );
    writeFileSync(
      path.join(input, 'spec.json'),
      JSON.stringify({
        base: BASE_VENV,
        release: releasePath,
        current: path.posix.join(config.root, 'current'),
        output: '/output',
        pack_cache: PACK_CACHE_MOUNT,
        // The members the newest local artifacts hold: the container sends only the others.
        local_members: [...localArchiveMembers.keys()],
        base_copies: releasesDir,
        // Keyed by the base image's id, not its tag: a base rebuilt under the same tag is a new copy.
        base_copy_key: (await docker.getImage(baseTag).inspect()).Id.replace(/^sha256:/, '').slice(0, 32),
        python_path: pythonPath,
        pip: { ...pipSettings, find_links: findLinks },
        extensions: inputs.extensions.map((x) => ({
          name: x.name,
          plugins: x.plugins,
          requirements: x.requirements,
          path: `/input/src/${x.name}`,
        })),
        patches: releasePatches,
        // RELEASE.json on the host: the manifest's header. Not the base venv's path: no file may name it.
        release_json: { ...releaseJson, builder: { ...releaseJson.builder, base_venv: undefined } },
      }),
    );
    writeFileSync(path.join(input, 'build.py'), scriptText);

    const packCache = await ensureVolume(
      docker,
      opts.packCacheVolume ?? process.env.CKAN_RELEASE_PACK_CACHE_VOLUME ?? PACK_CACHE_VOLUME,
      'pack-cache',
    );
    const baseCopies = await ensureVolume(
      docker,
      opts.baseCopiesVolume ?? process.env.CKAN_RELEASE_BASE_COPIES_VOLUME ?? BASE_COPIES_VOLUME,
      'base-copies',
    );

    staging = path.join(config.store, `.staging-${id}-${process.pid}`);
    const stagingDir = staging;
    rmSync(staging, { recursive: true, force: true });
    let archiveSha = '';
    const result = await runStep(docker, baseTag, 'release', path.join(work, 'release'), {
      network: config.builder.network,
      log,
      emit,
      fetchOutputTo: staging,
      // The archive is assembled while the container still removes the release from its volume.
      onOutput: async (out) => {
        emit({ kind: 'step', step: 'store' });
        const sent = path.join(stagingDir, 'members.gz');
        archiveSha = await moving(`assembling the archive in ${stagingDir}`, () =>
          assembleArchive(
            (out.archive_chunks as ArchiveChunk[] | undefined) ?? [],
            localArchiveMembers,
            sent,
            path.join(stagingDir, 'release.tar.gz'),
          ),
        );
        rmSync(sent);
      },
      logFile,
      volumes: [
        { name: packCache, target: PACK_CACHE_MOUNT },
        { name: baseCopies, target: releasesDir },
      ],
    });
    // The container hashes the whole archive only when it read every member; the members it did not
    // read (the build machine has them) are checked here one by one, as all the others.
    if (result.archive_sha256 != null && archiveSha !== result.archive_sha256) {
      throw new OperationError(
        `the archive copied out of the build container is corrupt (sha256 ${archiveSha}, expected ${String(result.archive_sha256)})`,
      );
    }
    const files = JSON.parse(readFileSync(path.join(staging, 'files.json'), 'utf8')) as ManifestFile[];
    rmSync(path.join(staging, 'files.json'));
    const manifest: Manifest = {
      ...releaseJson,
      builder: {
        ...releaseJson.builder,
        python: {
          version: String(result.python_version),
          path: pythonPath,
          implementation: String(result.python_implementation),
        },
        os_release: result.os_release as NonNullable<Manifest['builder']['os_release']>,
      },
      libraries: result.libraries as string[],
      ckan: { ...releaseJson.ckan, version: (result.ckan_version as string | null) ?? null },
      extensions: releaseJson.extensions.map((x) => ({
        ...x,
        requirements: (result.requirements as Record<string, string[]> | undefined)?.[x.name] ?? [],
      })),
      plugins: result.plugins as Manifest['plugins'],
      pip: { ...releaseJson.pip, freeze: result.freeze as string[] },
      archive: {
        file: 'release.tar.gz',
        bytes: result.archive_bytes as number,
        sha256: archiveSha,
        chunks: result.archive_chunks as ArchiveChunk[],
      },
      files,
    };
    writeFileSync(path.join(staging, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    await new Promise<void>((r) => log.end(r));
    renameSync(logFile, path.join(staging, 'build.log'));
    const dir = path.join(config.store, id);
    renameSync(staging, dir);
    staging = undefined;
    return {
      id,
      dir,
      archive: path.join(dir, 'release.tar.gz'),
      bytes: manifest.archive.bytes,
      sha256: manifest.archive.sha256,
      baseReused,
      imageReused: image.reused,
      manifest,
    };
  } catch (e) {
    if (!log.closed) await new Promise<void>((r) => log.end(r));
    // A file system error anywhere on this machine's side (a full disk, a permission): say what it was.
    if (!(e instanceof CkanReleaseError) && (e as NodeJS.ErrnoException).syscall)
      throw new BuildFailedError(`build: ${(e as Error).message}`, logFile, '');
    if (e instanceof OperationError && !(e instanceof BuildFailedError) && existsSync(logFile)) {
      throw new BuildFailedError(e.message, logFile, '');
    }
    throw e;
  } finally {
    rmSync(work, { recursive: true, force: true });
    if (staging) rmSync(staging, { recursive: true, force: true });
  }
}

/**
 * Runs one step of moving files between this machine and a container; a failure (a disk, a tar
 * stream, the engine) becomes an OperationError saying what was being done, never an unexpected one.
 */
async function moving<T>(what: string, fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CkanReleaseError) throw e;
    throw new OperationError(`${what} failed: ${(e as Error).message}`);
  }
}

type ReleaseHeader = Omit<Manifest, 'plugins' | 'archive' | 'files'>;

function releaseHeader(
  config: Config,
  id: string,
  created: string,
  releasePath: string,
  inputs: BuildInputs,
  imageTag: string,
  imageId: string,
  baseTag: string,
): ReleaseHeader {
  return {
    format: 1,
    id,
    created,
    project: config.project,
    root: config.root,
    release_path: releasePath,
    inputs_digest: id.split('-')[1]!,
    builder: {
      os: config.builder.os,
      image: imageTag,
      image_id: imageId,
      base_image: baseTag,
      base_venv: BASE_VENV,
      python: { version: '', path: '' },
    },
    ckan: {
      source: redactUrls(inputs.ckan.source),
      ref: inputs.ckan.ref,
      commit: inputs.ckan.commit,
      version: null,
    },
    extensions: inputs.extensions.map((x) => ({
      name: x.name,
      source: redactUrls(x.source),
      ref: x.ref,
      commit: x.commit,
      plugins: x.plugins,
    })),
    patches: inputs.patches.map((p) => ({ file: p.file, target: p.target, sha256: p.sha256 })),
    pip: {
      index_url: config.builder.pip.indexUrl ? redactUrls(config.builder.pip.indexUrl) : null,
      find_links: config.builder.pip.findLinks.map(redactUrls),
      extra_args: config.builder.pip.extraArgs.map(redactUrls),
      constraints: config.builder.pip.constraints,
      overrides: config.builder.pip.overrides,
      extra_requirements: config.builder.extraRequirements,
      freeze: [],
    },
  };
}

/** Copies the patches into the container input; returns what the script's spec says of them. */
function stagePatches(
  patches: BuildInputs['patches'],
  input: string,
): { target: string; file: string; path: string }[] {
  return patches.map((p) => {
    cpSync(p.abs, path.join(input, 'patches', p.target, path.basename(p.abs)));
    return { target: p.target, file: p.file, path: `/input/patches/${p.target}/${path.basename(p.abs)}` };
  });
}

/** Copies local find-links directories into the container input; URLs pass through. */
function stageFindLinks(links: string[], input: string): string[] {
  return links.map((link, i) => {
    if (/^[a-z]+:\/\//i.test(link)) return link;
    cpSync(link, path.join(input, 'find-links', String(i)), { recursive: true, dereference: true });
    return `/input/find-links/${i}`;
  });
}

interface StepOptions {
  network: 'none' | 'default' | 'host';
  log: WriteStream;
  emit: (e: BuildEvent) => void;
  logFile: string;
  /** Commit the finished container as this image (the base venv layer). */
  commitAs?: string;
  /** Copy the container's /output into this directory. */
  fetchOutputTo?: string;
  /**
   * Runs once /output is copied out (after the script's result), while the container finishes; the
   * step waits for it, and fails if it fails or if the container then fails.
   */
  onOutput?: (result: ScriptEvent) => Promise<void>;
  /** Named volumes to mount (the pack cache and the base copies; the release step only). */
  volumes?: { name: string; target: string }[];
}

/** A volume of the build (pack-cache, base-copies), created (labelled as ckan-release's) if missing. */
async function ensureVolume(docker: Docker, name: string, kind: string): Promise<string> {
  try {
    await docker.getVolume(name).inspect();
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode !== 404) throw e;
    await docker.createVolume({
      Name: name,
      Labels: { 'ckan-release': '1', 'ckan-release.volume': kind },
    });
  }
  return name;
}

/** Runs build.py base|release in a container whose /input is `workDir/input`; returns the result event. */
async function runStep(
  docker: Docker,
  image: string,
  command: 'base' | 'release',
  workDir: string,
  opts: StepOptions,
): Promise<ScriptEvent> {
  const container = await docker.createContainer({
    Image: image,
    Cmd: [
      'sh',
      '-c',
      `mkdir -p /output && "$CKAN_RELEASE_PYTHON" -u /input/build.py ${command} /input/spec.json; rc=$?; rm -rf /input; exit $rc`,
    ],
    Labels: { 'ckan-release': '1', 'ckan-release.step': command },
    HostConfig: {
      NetworkMode: opts.network === 'default' ? 'default' : opts.network,
      Mounts: (opts.volumes ?? []).map((v) => ({
        Type: 'volume' as const,
        Source: v.name,
        Target: v.target,
      })),
    },
    AttachStdout: true,
    AttachStderr: true,
  });
  const tail: string[] = [];
  let failure: ScriptEvent | undefined;
  let result: ScriptEvent | undefined;
  // /output is whole once the script reports its result: it is copied out while the script still
  // removes the release from the base copies volume (seconds), and used only if the step succeeds.
  let fetching: Promise<void> | undefined;
  const fetchOutput = async () => {
    const to = opts.fetchOutputTo!;
    await moving(`copying the artifact out of the build container into ${to}`, async () => {
      mkdirSync(to, { recursive: true });
      const archive = (await container.getArchive({ path: '/output' })) as NodeJS.ReadableStream;
      await new Promise<void>((resolve, reject) => {
        const extract = tar.extract(to, {
          map: (h) => ({ ...h, name: h.name.replace(/^output\/?/, '') }),
          ignore: (_name, h) => h?.name === 'output' || h?.name === 'output/',
        });
        extract.on('finish', resolve);
        extract.on('error', reject);
        archive.on('error', reject);
        archive.pipe(extract);
      });
    });
  };
  try {
    await moving(`sending ${workDir} into the build container`, async () => {
      const pack = tar.pack(workDir, {
        map: (h) => ({ ...h, uid: 0, gid: 0, uname: 'root', gname: 'root' }),
      });
      // A read error in the pack (a file gone, a disk error) must fail the upload, not hang it.
      const failed = new Promise<never>((_r, reject) => pack.on('error', reject));
      await Promise.race([
        container.putArchive(pack as unknown as NodeJS.ReadableStream, { path: '/' }),
        failed,
      ]);
    });
    const stream = await container.attach({ stream: true, stdout: true, stderr: true });
    let pending = '';
    const onText = (text: string) => {
      pending += text;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (line.startsWith('@@{')) {
          const ev = JSON.parse(line.slice(2)) as ScriptEvent;
          if (ev.event === 'step') opts.emit({ kind: 'step', step: ev.name as BuildStep });
          else if (ev.event === 'info') {
            opts.log.write(`${String(ev.message)}\n`);
            opts.emit({ kind: 'info', message: String(ev.message) });
          } else if (ev.event === 'error') failure = ev;
          else if (ev.event === 'result') {
            result = ev;
            if (opts.fetchOutputTo && !fetching) {
              fetching = fetchOutput().then(() => opts.onOutput?.(ev));
              fetching.catch(() => undefined);
            }
          }
          continue;
        }
        opts.log.write(line + '\n');
        opts.emit({ kind: 'log', text: line });
        tail.push(line);
        if (tail.length > 25) tail.shift();
      }
    };
    const out = new PassThrough();
    out.on('data', (c: Buffer) => onText(c.toString()));
    docker.modem.demuxStream(stream, out, out);
    const ended = new Promise<void>((r) => stream.on('end', r));
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    await endedWithin(ended, 3000);
    if (pending) onText('\n');
    // A step that failed after its result: let the copy finish before its directory is removed.
    if (fetching && (failure || StatusCode !== 0)) await fetching.catch(() => undefined);
    if (failure)
      throw new BuildFailedError(
        `build failed (${failure.kind}): ${failure.message}`,
        opts.logFile,
        tail.join('\n'),
      );
    if (StatusCode !== 0)
      throw new BuildFailedError(
        `build step "${command}" exited with code ${StatusCode}`,
        opts.logFile,
        tail.join('\n'),
      );
    if (opts.commitAs) {
      const [repo, tag] = opts.commitAs.split(':') as [string, string];
      await container.commit({ repo, tag, comment: 'ckan-release base venv' });
    }
    if (opts.fetchOutputTo)
      await (fetching ?? fetchOutput().then(() => opts.onOutput?.(result ?? { event: 'done' })));
    return result ?? { event: 'done' };
  } finally {
    await container.remove({ force: true }).catch(() => undefined);
  }
}
