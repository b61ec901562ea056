// A request whose data is a file (the release archive): the session reads it into two buffers that
// take turns, and fills one again only once the channel has taken it. Driven with a channel in memory
// that, like ssh2's when the SSH window is full, keeps a written chunk and copies it only later, before
// its write callback: a buffer refilled too early would show as wrong bytes on the "host".
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentSession } from '../../src/deploy/agent-session.js';
import type { Channel, Remote } from '../../src/remote/ssh.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-session-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A channel whose stdin copies each chunk only when it calls back, a few ms later (a full window). */
function lateCopyChannel(copiesWrites: boolean) {
  const stdout = new PassThrough();
  const copied: Buffer[] = [];
  const stdin = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _enc, cb) {
      setTimeout(() => {
        copied.push(Buffer.from(chunk));
        cb();
      }, 2);
    },
  });
  const done = new Promise<{ code: number | null; signal: string | null }>(() => undefined);
  const ch: Channel = {
    stdin,
    stdout,
    stderr: new PassThrough(),
    done,
    close: () => undefined,
    copiesWrites,
  };
  return { ch, stdout, copied };
}

/** The data of the framed request after the request line: "<n>\n" + n bytes, ..., "0\n". */
function unframe(sent: Buffer): { data: Buffer; ended: boolean; frames: number } {
  let at = sent.indexOf('\n') + 1; // the request line
  const parts: Buffer[] = [];
  let frames = 0;
  for (;;) {
    const nl = sent.indexOf('\n', at);
    if (nl < 0) return { data: Buffer.concat(parts), ended: false, frames };
    const header = sent.toString('latin1', at, nl);
    if (!/^\d+$/.test(header)) throw new Error(`not a frame header: ${JSON.stringify(header.slice(0, 20))}`);
    const n = Number(header);
    at = nl + 1;
    if (n === 0) return { data: Buffer.concat(parts), ended: at === sent.length, frames };
    parts.push(sent.subarray(at, at + n));
    frames++;
    at += n;
  }
}

describe('an agent request whose data is a file', () => {
  for (const copiesWrites of [true, false]) {
    it(`sends the file's exact bytes, framed (channel copies writes: ${copiesWrites})`, async () => {
      // Not a multiple of the frame size: the last frame is short.
      const content = randomBytes(3 * (1 << 20) + 12_345);
      const file = path.join(dir, `archive-${copiesWrites}.bin`);
      writeFileSync(file, content);
      const mem = lateCopyChannel(copiesWrites);
      const remote = { name: 'mem-host', channel: async () => mem.ch } as unknown as Remote;
      const session = new AgentSession(
        remote,
        { command: () => 'agent serve', payload: () => Buffer.from('') },
        false,
        () => undefined,
      );
      setImmediate(() =>
        mem.stdout.write(JSON.stringify({ ready: true, executable: '/usr/bin/python3' }) + '\n'),
      );
      const progress: number[] = [];
      const reply = session.request('receive', 'receive', { id: 'x' }, { file }, (n) => progress.push(n));
      // The "agent" answers once the end frame has arrived (or at the first bad frame).
      let bad: unknown;
      const answer = setInterval(() => {
        let ended = false;
        try {
          ended = unframe(Buffer.concat(mem.copied)).ended;
        } catch (e) {
          bad = e;
        }
        if (ended || bad) {
          clearInterval(answer);
          mem.stdout.write(JSON.stringify({ id: 1, status: 'done', answer: {} }) + '\n');
        }
      }, 5);
      await expect(reply).resolves.toMatchObject({ status: 'done' });
      expect(bad).toBeUndefined();
      const got = unframe(Buffer.concat(mem.copied));
      expect(got.ended).toBe(true);
      expect(got.frames).toBe(4);
      expect(got.data.equals(content)).toBe(true);
      expect(progress.at(-1)).toBe(content.length);
    });
  }
});
