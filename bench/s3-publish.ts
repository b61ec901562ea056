// Bench row: publishing a one-extension change to the S3 store uploads only its new chunks. Publishes
// artifact A, then B (A with one extension at another tag), from the local store of `config` to a fresh
// bucket of a real radosgw (test/support/s3.ts), and returns B's uploaded bytes and its archive's bytes.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { main } from '../src/cli.js';
import { s3Server, stopS3Server } from '../test/support/s3.js';

async function publish(config: string, id: string): Promise<{ uploaded_bytes: number; bytes: number }> {
  let out = '';
  let err = '';
  const code = await main(['--config', config, '--json', 'artifacts', 'publish', id], {
    out: (t) => (out += t),
    err: (t) => (err += t),
    env: process.env,
  });
  if (code !== 0) throw new Error(`artifacts publish ${id} exited ${code}:\n${err}`);
  return JSON.parse(out.trim().split('\n').pop()!) as { uploaded_bytes: number; bytes: number };
}

export async function publishDelta(
  config: string,
  a: string,
  b: string,
): Promise<{ uploaded: number; archive: number; full: number }> {
  const s3 = await s3Server();
  try {
    Object.assign(process.env, s3.env);
    const bucket = await s3.bucket(`bench-${process.pid}-${Date.now()}`);
    // The same project with its artifacts, its local store as the S3 store's cache.
    const variant = path.join(path.dirname(config), 'bench-s3.yml');
    writeFileSync(
      variant,
      readFileSync(config, 'utf8').replace(/^project: (.*)$/m, `project: $1\nstore: s3://${bucket}/bench`),
    );
    const first = await publish(variant, a);
    const second = await publish(variant, b);
    return { uploaded: second.uploaded_bytes, archive: second.bytes, full: first.uploaded_bytes };
  } finally {
    await stopS3Server();
  }
}
