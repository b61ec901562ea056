// A session's channel that dies while a request's data is still being sent: the request fails with
// "the connection was lost", and that failure is the caller's, never an unhandled rejection (CI caught
// one, by timing, in executor-faults and agent-session). Driven with a channel in memory, so the death
// comes at one chosen point every run.
import { PassThrough, Readable, Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentSession } from '../../src/deploy/agent-session.js';
import type { Channel, Remote } from '../../src/remote/ssh.js';

function memoryChannel() {
  let die!: (exit: { code: number | null; signal: string | null }) => void;
  const done = new Promise<{ code: number | null; signal: string | null }>((r) => (die = r));
  const stdout = new PassThrough();
  const written: Buffer[] = [];
  const stdin = new Writable({
    write(chunk: Buffer, _enc, cb) {
      written.push(chunk);
      cb();
    },
  });
  const ch: Channel = { stdin, stdout, stderr: new PassThrough(), done, close: () => undefined };
  return { ch, stdout, written, die };
}

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => unhandled.push(e);
process.on('unhandledRejection', onUnhandled);
afterEach(() => {
  unhandled.length = 0;
});

describe('an agent session whose channel dies during a request', () => {
  it('fails that request as a lost connection, handled, while its data was still flowing', async () => {
    const mem = memoryChannel();
    const remote = {
      name: 'mem-host',
      channel: async () => mem.ch,
    } as unknown as Remote;
    const session = new AgentSession(
      remote,
      { command: () => 'agent serve', payload: () => Buffer.from('') },
      false,
      () => undefined,
    );
    // The agent says it is ready as soon as the channel opens.
    setImmediate(() =>
      mem.stdout.write(JSON.stringify({ ready: true, executable: '/usr/bin/python3' }) + '\n'),
    );
    // Data that yields one piece, then (while the loop waits for the next) the channel dies, and the
    // second piece comes only 50 ms later: the answer fails long before anything awaits it.
    let gave = 0;
    const data = new Readable({
      read() {
        gave++;
        if (gave === 1) this.push(Buffer.from('first piece'));
        else if (gave === 2) {
          mem.die({ code: null, signal: null });
          setTimeout(() => {
            this.push(Buffer.from('second piece'));
            this.push(null);
          }, 50);
        }
      },
    });
    const r = session.request('receive', 'receive', { id: 'x' }, data);
    await expect(r).rejects.toThrow(
      'mem-host: receive: the connection was lost before the command finished (it may or may not have run to the end)',
    );
    // Let any pending rejection bookkeeping run.
    await new Promise((res) => setTimeout(res, 20));
    expect(unhandled).toEqual([]);
    expect(session.dead).toBe(true);
    // The request line went out, and the first piece of data framed after it; nothing after the death.
    const sent = Buffer.concat(mem.written).toString();
    expect(sent).toContain('"command":"receive"');
    expect(sent).toContain('first piece');
    expect(sent).not.toContain('second piece');
  });
});
