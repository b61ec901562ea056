// The frames of a file that several sessions send at once (a fleet ship's archive): read from the disk
// once for all of them, each session still getting the file's exact bytes, whatever their pace: one
// far ahead of the others, or far behind what is kept, reads for itself; a frame's buffer is read
// into again only once every channel that has it took it.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { FILE_FRAME, FileReader } from '../../src/deploy/file-frames.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-file-frames-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

/** Counts the reads of every FileHandle (the class is not exported: its prototype, from one). */
async function countReads(): Promise<{ reads: () => number }> {
  const fh = await open(fileURLToPath(import.meta.url), 'r');
  const proto = Object.getPrototypeOf(fh) as { read: (...a: unknown[]) => Promise<unknown> };
  await fh.close();
  const spy = vi.spyOn(proto, 'read');
  return { reads: () => spy.mock.calls.length };
}

function file(name: string, bytes: number): { file: string; content: Buffer } {
  const content = randomBytes(bytes);
  const f = path.join(dir, name);
  writeFileSync(f, content);
  return { file: f, content };
}

/**
 * One session's sending: each frame kept by its "channel" for `delay` ms before it copies it (as
 * ssh2 keeps a chunk while the SSH window is closed), two frames in flight; returns the data bytes.
 */
async function send(f: string, delay: () => number): Promise<Buffer> {
  const reader = await FileReader.open(f);
  const got: Buffer[] = [];
  const inFlight: Promise<void>[] = [];
  try {
    for (let i = 0; ; i++) {
      if (inFlight.length >= 2) await inFlight.shift();
      const { data, release } = await reader.frame(i);
      if (!data) {
        release(true);
        break;
      }
      const slot = got.length;
      got.push(Buffer.alloc(0));
      inFlight.push(
        new Promise<void>((res) =>
          setTimeout(() => {
            const frame = data.frame;
            const nl = frame.indexOf('\n');
            expect(Number(frame.toString('latin1', 0, nl))).toBe(data.bytes);
            got[slot] = Buffer.from(frame.subarray(nl + 1));
            release(true);
            res();
          }, delay()),
        ),
      );
    }
    await Promise.all(inFlight);
  } finally {
    reader.close();
  }
  return Buffer.concat(got);
}

describe('the frames of a file sent by several sessions at once', () => {
  it('are read once for all of them, each session getting the exact bytes', async () => {
    const { file: f, content } = file('fleet.bin', 5 * FILE_FRAME + 12_345);
    const counter = await countReads();
    const got = await Promise.all([0, 1, 2].map((k) => send(f, () => 1 + k)));
    for (const g of got) expect(g.equals(content)).toBe(true);
    // 6 frames each read once, the short last one read on until the end (one more), and the end:
    // 8 reads for the three sessions, where each reading for itself would have made 24.
    expect(counter.reads()).toBe(8);
  });

  it('one far ahead of the others, or behind what is kept, reads for itself: still the exact bytes', async () => {
    const frames = 40;
    const { file: f, content } = file('spread.bin', frames * FILE_FRAME);
    const counter = await countReads();
    const ahead = await FileReader.open(f);
    const behind = await FileReader.open(f);
    const all = async (r: FileReader, from: number, to: number) => {
      const parts: Buffer[] = [];
      for (let i = from; i < to; i++) {
        const { data, release } = await r.frame(i);
        parts.push(data ? Buffer.from(data.frame.subarray(data.frame.indexOf('\n') + 1)) : Buffer.alloc(0));
        release(true);
      }
      return Buffer.concat(parts);
    };
    // `ahead` sends every frame and the end while `behind` is still at its first: the 32 frames
    // past `behind` are kept for it, the rest `ahead` reads for itself.
    const a = await all(ahead, 0, frames + 1);
    expect(counter.reads()).toBe(frames + 1);
    ahead.close();
    const b = await all(behind, 0, frames + 1);
    behind.close();
    expect(a.equals(content)).toBe(true);
    expect(b.equals(content)).toBe(true);
    // `behind` read only what was not kept for it: frames 32-39 and the end.
    expect(counter.reads()).toBe(frames + 1 + (frames - 32) + 1);
  });

  it('never reads into a buffer again that a channel which does not copy may still hold', async () => {
    // A pipe's queue keeps the very buffer it was given: its frames must stay as they were while a
    // channel that copies (ssh2's) moves on, and the frames it is done with are dropped.
    const frames = 12;
    const { file: f, content } = file('held.bin', frames * FILE_FRAME);
    const piped = await FileReader.open(f);
    const copying = await FileReader.open(f);
    const held: Buffer[] = [];
    for (let i = 0; i <= frames; i++) {
      for (const [r, copies] of [
        [piped, false],
        [copying, true],
      ] as const) {
        const { data, release } = await r.frame(i);
        if (data && !copies) held.push(data.frame.subarray(data.frame.indexOf('\n') + 1));
        release(copies);
      }
    }
    piped.close();
    copying.close();
    expect(Buffer.concat(held).equals(content)).toBe(true);
  });

  it('a session started after the others are done opens the file again', async () => {
    const { file: f, content } = file('later.bin', 2 * FILE_FRAME);
    expect((await send(f, () => 0)).equals(content)).toBe(true);
    writeFileSync(f, Buffer.concat([content, content])); // a new artifact at the same path
    expect((await send(f, () => 0)).equals(Buffer.concat([content, content]))).toBe(true);
  });

  it('a file that cannot be opened fails the opening', async () => {
    await expect(FileReader.open(path.join(dir, 'missing.bin'))).rejects.toThrow(/ENOENT/);
  });
});
