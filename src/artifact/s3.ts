// The S3 artifact store (`store: s3://BUCKET/PREFIX`): each gzip member of an archive (a chunk) is an
// object named by its sha256, and each artifact is its manifest, written once and last:
//   PREFIX/chunks/<sha256>        a chunk, as the build compressed it
//   PREFIX/manifests/<ID>.json    the manifest; it lists the chunks in order (archive.chunks)
// An artifact exists when its manifest does, and the manifest is written only after every chunk it
// names is in the bucket, with If-None-Match: * (never overwritten). An upload that stops halfway
// leaves chunks nobody lists. Every chunk is checked against its sha256 before it is sent (and the
// server checks Content-MD5 on the way in) and again when it comes back. This is the only module that
// imports the AWS SDK; credentials come from its default chain.
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { ARTIFACT_ID } from './id.js';
import { OperationError, UsageError } from '../errors.js';
import { s3Url, type S3Location } from './location.js';
import { chunksOf, type ArchiveChunk, type Manifest } from './manifest.js';
import { listArtifacts, readArtifact, type StoredArtifact } from './store.js';

export interface PublishResult {
  id: string;
  /** false: the manifest was already there (published before). */
  published: boolean;
  chunks: number;
  bytes: number;
  uploadedChunks: number;
  uploadedBytes: number;
}

export interface FetchResult {
  artifact: StoredArtifact;
  /** false: it was in the local cache already. */
  fetched: boolean;
  chunks: number;
  downloadedChunks: number;
  downloadedBytes: number;
}

/** How many chunks move at once (each is a few MB in memory). */
const PARALLEL = 4;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function errorName(e: unknown): string {
  if (e instanceof S3ServiceException) return e.name;
  return e instanceof Error ? e.name : 'Error';
}

function statusOf(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

/** Runs fn over items, at most `limit` at once; the first failure stops new starts and is thrown. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== undefined) throw failed;
  return out;
}

export class S3Store {
  readonly url: string;
  private readonly client: S3Client;

  constructor(
    readonly loc: S3Location,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.url = s3Url(loc);
    // The SDK warns on every run under Node 20 that its releases from 2027 will need Node 22; this
    // version supports Node 20 (package.json engines), and the warning would be noise in every command.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    // The SDK reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself; an endpoint set either way means an
    // S3-compatible server, which wants path-style addressing unless the config says otherwise.
    const endpoint = loc.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
    const region =
      loc.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? (endpoint ? 'us-east-1' : undefined);
    this.client = new S3Client({
      ...(loc.endpoint ? { endpoint: loc.endpoint } : {}),
      ...(region ? { region } : {}),
      ...(loc.profile ? { profile: loc.profile } : {}),
      forcePathStyle: loc.forcePathStyle ?? !!endpoint,
      // Flexible checksums (x-amz-checksum-*) only when an operation requires them: S3-compatible servers
      // often lack them; every chunk carries Content-MD5 and is checked by its sha256 instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  close(): void {
    this.client.destroy();
  }

  chunkKey(sha: string): string {
    return `${this.loc.prefix}chunks/${sha}`;
  }

  manifestKey(id: string): string {
    return `${this.loc.prefix}manifests/${id}.json`;
  }

  /** One SDK call; its failure as the project's error, naming the store and the key. */
  private async call<T>(what: string, key: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw this.failure(what, key, e);
    }
  }

  private failure(what: string, key: string, e: unknown): Error {
    const name = errorName(e);
    const msg = e instanceof Error ? e.message : String(e);
    const where = `${this.url}: ${what} s3://${this.loc.bucket}/${key}`;
    if (/Region is missing/i.test(msg))
      return new UsageError(
        `${this.url}: no AWS region`,
        'set AWS_REGION, `region:` under `s3:` in the config, or a region in the profile',
      );
    if (name === 'CredentialsProviderError' || /Could not load credentials/i.test(msg))
      return new UsageError(
        `${this.url}: no AWS credentials: ${msg}`,
        "credentials come from the AWS SDK's default chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, AWS_PROFILE or `profile:` under `s3:`",
      );
    if (['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden'].includes(name))
      return new UsageError(
        `${where}: ${name}: ${msg}`,
        'check the credentials and their permissions on the bucket',
      );
    if (name === 'NoSuchBucket') return new UsageError(`${this.url}: no such bucket "${this.loc.bucket}"`);
    return new OperationError(`${where}: ${name}: ${msg}`);
  }

  /** The IDs of every published artifact (its manifest is there), newest first. */
  async ids(): Promise<string[]> {
    const ids: string[] = [];
    const listPrefix = `${this.loc.prefix}manifests/`;
    let token: string | undefined;
    do {
      const page = await this.call('list', listPrefix, () =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.loc.bucket, Prefix: listPrefix, ContinuationToken: token }),
        ),
      );
      for (const o of page.Contents ?? []) {
        const name = (o.Key ?? '').slice(listPrefix.length).replace(/\.json$/, '');
        if (ARTIFACT_ID.test(name) && o.Key === `${listPrefix}${name}.json`) ids.push(name);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return ids.sort().reverse();
  }

  private async getBytes(key: string, what: string): Promise<Buffer | undefined> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.loc.bucket, Key: key }));
      return Buffer.from(await r.Body!.transformToByteArray());
    } catch (e) {
      if (errorName(e) === 'NoSuchKey' || statusOf(e) === 404) return undefined;
      throw this.failure(what, key, e);
    }
  }

  private async exists(key: string): Promise<number | undefined> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.loc.bucket, Key: key }));
      return r.ContentLength ?? 0;
    } catch (e) {
      if (errorName(e) === 'NotFound' || statusOf(e) === 404) return undefined;
      throw this.failure('head', key, e);
    }
  }

  /**
   * A published manifest; manifests never change, so one read is kept in `cacheDir` (the local store's
   * .s3-manifests/) and read from there afterwards.
   */
  async manifest(id: string, cacheDir: string): Promise<Manifest | undefined> {
    const body = await this.manifestBytes(id, cacheDir);
    return body && this.parseManifest(id, body, cacheDir);
  }

  /** The published manifest's bytes as the bucket holds them (kept in `cacheDir`, as manifest() does). */
  async manifestBytes(id: string, cacheDir: string): Promise<Buffer | undefined> {
    const cached = path.join(cacheDir, '.s3-manifests', `${id}.json`);
    if (existsSync(cached)) return readFileSync(cached);
    const body = await this.getBytes(this.manifestKey(id), 'read');
    if (body) this.parseManifest(id, body, cacheDir);
    return body;
  }

  /**
   * A GET URL of one object, signed for `seconds` (deploy.fetch: direct hands them to hosts). Signed
   * here, with this machine's credentials; nothing is sent. The URL carries a signature: never print it.
   */
  presignGet(key: string, seconds: number): Promise<string> {
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.loc.bucket, Key: key }), {
      expiresIn: seconds,
    });
  }

  private parseManifest(id: string, body: Buffer, cacheDir: string): Manifest {
    const cached = path.join(cacheDir, '.s3-manifests', `${id}.json`);
    const text = body.toString('utf8');
    let m: Manifest;
    try {
      m = JSON.parse(text) as Manifest;
    } catch (e) {
      throw new OperationError(`${this.url}: ${this.manifestKey(id)} is not JSON: ${(e as Error).message}`);
    }
    if (m.id !== id) throw new OperationError(`${this.url}: ${this.manifestKey(id)} says it is ${m.id}`);
    if (!existsSync(cached)) {
      mkdirSync(path.dirname(cached), { recursive: true });
      writeFileSync(`${cached}.${process.pid}`, body);
      renameSync(`${cached}.${process.pid}`, cached);
    }
    return m;
  }

  /**
   * Uploads the chunks the bucket lacks, then the manifest (If-None-Match: *). Each chunk is read from
   * the local archive and checked against its sha256 first; the server checks its Content-MD5.
   */
  async publish(a: StoredArtifact): Promise<PublishResult> {
    const m = a.manifest;
    const chunks = chunksOf(m);
    const total = chunks.reduce((n, c) => n + c.bytes, 0);
    if (total !== m.archive.bytes)
      throw new OperationError(
        `${a.id}: the manifest's chunks add up to ${total} bytes, the archive has ${m.archive.bytes}`,
      );
    const manifestText = readFileSync(path.join(a.dir, 'manifest.json'));
    const already = await this.exists(this.manifestKey(a.id));
    const result: PublishResult = {
      id: a.id,
      published: false,
      chunks: chunks.length,
      bytes: total,
      uploadedChunks: 0,
      uploadedBytes: 0,
    };
    if (already !== undefined) return this.samePublished(a.id, manifestText, result);
    const offsets: number[] = [];
    chunks.reduce((off, c) => (offsets.push(off), off + c.bytes), 0);
    const fd = openSync(a.archive, 'r');
    try {
      await pool(chunks, PARALLEL, async (c, i) => {
        const key = this.chunkKey(c.sha256);
        if ((await this.exists(key)) === c.bytes) return;
        const data = Buffer.alloc(c.bytes);
        if (readSync(fd, data, 0, c.bytes, offsets[i]!) !== c.bytes || sha256(data) !== c.sha256)
          throw new OperationError(
            `${a.archive}: chunk ${i + 1} (at byte ${offsets[i]}) does not match its sha256 ${c.sha256}: the local artifact is damaged; nothing was published`,
          );
        await this.call('upload', key, () =>
          this.client.send(
            new PutObjectCommand({
              Bucket: this.loc.bucket,
              Key: key,
              Body: data,
              ContentLength: c.bytes,
              ContentMD5: createHash('md5').update(data).digest('base64'),
              ContentType: 'application/gzip',
            }),
          ),
        );
        result.uploadedChunks++;
        result.uploadedBytes += c.bytes;
      });
    } finally {
      closeSync(fd);
    }
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.loc.bucket,
          Key: this.manifestKey(a.id),
          Body: manifestText,
          ContentLength: manifestText.length,
          ContentMD5: createHash('md5').update(manifestText).digest('base64'),
          ContentType: 'application/json',
          IfNoneMatch: '*',
        }),
      );
    } catch (e) {
      // Another publisher was first: fine if it wrote the same manifest.
      if (statusOf(e) === 412) return this.samePublished(a.id, manifestText, result);
      throw this.failure('write the manifest', this.manifestKey(a.id), e);
    }
    result.published = true;
    return result;
  }

  private async samePublished(id: string, text: Buffer, result: PublishResult): Promise<PublishResult> {
    const there = await this.getBytes(this.manifestKey(id), 'read');
    if (!there || !there.equals(text))
      throw new OperationError(
        `${this.url}: ${this.manifestKey(id)} exists with other content; manifests are never overwritten`,
      );
    return result;
  }

  /**
   * Puts artifact `id` into the local store `cache` (unless there already): the chunks come from the
   * local store's other archives when they hold them, else from the bucket, each checked against its
   * sha256; the whole archive is checked too, then renamed into place as a complete artifact.
   */
  async fetch(id: string, cache: string): Promise<FetchResult> {
    if (existsSync(path.join(cache, id, 'manifest.json')))
      return {
        artifact: readArtifact(cache, id),
        fetched: false,
        chunks: 0,
        downloadedChunks: 0,
        downloadedBytes: 0,
      };
    const m = await this.manifest(id, cache);
    if (!m) throw new UsageError(`no artifact ${id} in ${this.url}`);
    const chunks = chunksOf(m);
    // Chunks this machine already has, in the archives of the local store.
    const local = new Map<string, { archive: string; offset: number }>();
    for (const other of listArtifacts(cache)) {
      let off = 0;
      for (const c of other.manifest.archive.chunks ?? []) {
        local.set(c.sha256, { archive: other.archive, offset: off });
        off += c.bytes;
      }
    }
    mkdirSync(cache, { recursive: true });
    const staging = path.join(cache, `.staging-${id}-${process.pid}`);
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging);
    const result = { chunks: chunks.length, downloadedChunks: 0, downloadedBytes: 0 };
    try {
      const file = path.join(staging, 'release.tar.gz');
      const out = createWriteStream(file);
      // A write that fails (disk full) ends the fetch with the file named, not an unhandled error.
      let writeError: Error | undefined;
      const failed = new Promise<void>((resolve) =>
        out.on('error', (e) => {
          writeError = e;
          resolve();
        }),
      );
      const check = () => {
        if (writeError) throw new OperationError(`cannot write ${file}: ${writeError.message}`);
      };
      const whole = createHash('sha256');
      const get = async (c: ArchiveChunk, i: number): Promise<Buffer> => {
        const have = local.get(c.sha256);
        if (have) {
          const data = Buffer.alloc(c.bytes);
          const fd = openSync(have.archive, 'r');
          try {
            if (readSync(fd, data, 0, c.bytes, have.offset) === c.bytes && sha256(data) === c.sha256)
              return data;
          } finally {
            closeSync(fd);
          }
        }
        const key = this.chunkKey(c.sha256);
        const data = await this.getBytes(key, 'download');
        if (!data)
          throw new OperationError(
            `${this.url}: chunk ${i + 1} of ${id} is missing (${key}); nothing was shipped`,
          );
        const got = sha256(data);
        if (data.length !== c.bytes || got !== c.sha256)
          throw new OperationError(
            `${this.url}: chunk ${i + 1} of ${id} is damaged (${key}: ${data.length} bytes, sha256 ${got}); refused, nothing was shipped`,
            'the bucket holds a corrupted object: delete it and publish the artifact again from a machine that has it (`ckan-release artifacts publish ID`)',
          );
        result.downloadedChunks++;
        result.downloadedBytes += data.length;
        return data;
      };
      // In order, with a few chunks in flight.
      const pending: Promise<Buffer>[] = [];
      let next = 0;
      const fill = () => {
        while (pending.length < PARALLEL && next < chunks.length) {
          const i = next++;
          const p = get(chunks[i]!, i);
          p.catch(() => undefined);
          pending.push(p);
        }
      };
      fill();
      while (pending.length) {
        const data = await pending.shift()!;
        fill();
        whole.update(data);
        if (!out.write(data))
          await Promise.race([new Promise<void>((r) => out.once('drain', () => r())), failed]);
        check();
      }
      await Promise.race([new Promise<void>((resolve) => out.end(() => resolve())), failed]);
      check();
      const got = whole.digest('hex');
      if (got !== m.archive.sha256)
        throw new OperationError(
          `${this.url}: ${id}: the archive put together from its chunks has sha256 ${got}, the manifest says ${m.archive.sha256}`,
        );
      await writeFile(path.join(staging, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
      renameSync(staging, path.join(cache, id));
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
    return { artifact: readArtifact(cache, id), fetched: true, ...result };
  }
}
