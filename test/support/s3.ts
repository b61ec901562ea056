// A real S3 server for tests: Ceph's radosgw as a one-node cluster in a container (test/support/s3/,
// a copy of the test bed's Dockerfile and scripts so CI builds it from a fresh clone), on 127.0.0.1.
// Started once per test file that asks for it (ready in about 3 s), a bucket per test.
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import type Docker from 'dockerode';
import { execInContainer } from '../../src/docker/run.js';
import { ensureImage } from '../../src/docker/images.js';
import { testDocker } from './docker.js';

// The SDK's Node 22 notice is noise in test logs (the CLI turns it off the same way).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const CONTAINER = 'tm-s3-radosgw';
export const S3_PORT = 47080;

/**
 * Another server beside the default one (a test of its own port range): its container name, its S3
 * port, and the ports of the Ceph daemons behind it (mon: monPort and monPort + 1; the OSD and
 * radosgw messengers: msPorts), so that two test files can run at once.
 */
export interface S3ServerOptions {
  container: string;
  port: number;
  monPort: number;
  msPorts: [number, number];
}
const ACCESS_KEY = 'CKANS3ACCESSKEY00001';
const SECRET_KEY = 'ckan-s3-secret-key-0000000000000000000000';

export interface S3Server {
  endpoint: string;
  port: number;
  region: string;
  accessKey: string;
  secretKey: string;
  /** The environment a CLI run needs: credentials and endpoint the SDK's way, nothing in the config. */
  env: Record<string, string>;
  client(): S3Client;
  /** A new empty bucket. */
  bucket(name: string): Promise<string>;
}

let started: Promise<S3Server> | undefined;
let container = CONTAINER;

async function running(docker: Docker): Promise<boolean> {
  try {
    const c = await docker.getContainer(container).inspect();
    return c.State.Running;
  } catch {
    return false;
  }
}

export function s3Server(opts?: S3ServerOptions): Promise<S3Server> {
  const port = opts?.port ?? S3_PORT;
  started ??= (async () => {
    container = opts?.container ?? CONTAINER;
    const docker = await testDocker();
    const say = (l: string) => process.stderr.write(`[test-s3] ${l}\n`);
    const image = await ensureImage(
      docker,
      { context: path.resolve('test/support/s3'), repository: 'ckan-release-test-s3', flavour: 'pacific' },
      say,
    );
    if (!(await running(docker))) {
      await docker
        .getContainer(container)
        .remove({ force: true })
        .catch(() => undefined);
      const c = await docker.createContainer({
        name: container,
        Image: image.tag,
        Env: [
          `S3_PORT=${port}`,
          `S3_ACCESS_KEY=${ACCESS_KEY}`,
          `S3_SECRET_KEY=${SECRET_KEY}`,
          ...(opts
            ? [`MON_PORT=${opts.monPort}`, `MS_PORT_MIN=${opts.msPorts[0]}`, `MS_PORT_MAX=${opts.msPorts[1]}`]
            : []),
        ],
        Labels: { 'ckan-release.test': 's3' },
        HostConfig: { NetworkMode: 'host', Init: true },
      });
      await c.start();
    }
    const deadline = Date.now() + 120_000;
    for (;;) {
      const r = await execInContainer(docker, container, ['test', '-f', '/var/lib/ckan-s3/ready']);
      if (r.code === 0) break;
      if (!(await running(docker)))
        throw new Error(`the radosgw container ${container} exited: see \`docker logs ${container}\``);
      if (Date.now() > deadline) throw new Error(`radosgw in ${container} not ready after 120 s`);
      await new Promise((r) => setTimeout(r, 300));
    }
    const endpoint = `http://127.0.0.1:${port}`;
    const server: S3Server = {
      endpoint,
      port,
      region: 'us-east-1',
      accessKey: ACCESS_KEY,
      secretKey: SECRET_KEY,
      env: {
        AWS_ACCESS_KEY_ID: ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY: SECRET_KEY,
        AWS_REGION: 'us-east-1',
        AWS_ENDPOINT_URL_S3: endpoint,
      },
      client: () =>
        new S3Client({
          endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY },
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        }),
      async bucket(name) {
        const client = server.client();
        await client.send(new CreateBucketCommand({ Bucket: name }));
        client.destroy();
        return name;
      },
    };
    return server;
  })();
  return started;
}

/**
 * Removes the radosgw container (its data lives in its RAM: nothing is left), unless
 * CKAN_RELEASE_TEST_S3_KEEP is set (another process on this machine may be using it).
 */
export async function stopS3Server(): Promise<void> {
  if (!started || process.env.CKAN_RELEASE_TEST_S3_KEEP) return;
  started = undefined;
  const docker = await testDocker();
  await docker
    .getContainer(container)
    .remove({ force: true })
    .catch(() => undefined);
}
