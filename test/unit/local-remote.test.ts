// The local transport of the in-process executor tests (test/support/local-remote.ts) does what it
// says: commands run as with sshd (`sh -c`), and each fault has the effect on the "host" that the
// same failure of SSH has: before (never ran), after (ran, answer lost), kill and drop mid-input,
// a host that stays down; a channel's request and lost answer; one root per host by mount namespace.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { HostUnreachableError, RemoteCommandError } from '../../src/remote/ssh.js';
import { LocalRemote } from '../support/local-remote.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-at-remote-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const f = (name: string) => path.join(dir, name);
const input = (n: number) => Readable.from([Buffer.alloc(n, 'x')]);

describe('LocalRemote', () => {
  it('runs commands with sh -c and reports code, stdout and stderr', async () => {
    const r = new LocalRemote('at-a');
    expect(await r.exec('echo out; echo err >&2; exit 4')).toEqual({
      code: 4,
      stdout: 'out\n',
      stderr: 'err\n',
    });
    await expect(r.run('a step', 'exit 5')).rejects.toThrow(RemoteCommandError);
    expect(await r.exec('cat', { stdin: Readable.from(['in', 'put']) })).toMatchObject({ stdout: 'input' });
    expect(r.counts.channels).toBe(3);
  });

  it('before: the command never runs; the next one does (a reconnect), unless the host stays down', async () => {
    const r = new LocalRemote('at-b', { faults: [{ match: 'touch', when: 'before' }] });
    await expect(r.exec(`touch ${f('before')}`)).rejects.toThrow(
      /connection was lost before the command finished/,
    );
    expect(existsSync(f('before'))).toBe(false);
    expect((await r.exec('echo again')).stdout).toBe('again\n');
    const down = new LocalRemote('at-c', { faults: [{ match: /./, when: 'before', down: true }] });
    await expect(down.exec('true')).rejects.toThrow(HostUnreachableError);
    await expect(down.exec(`touch ${f('down')}`)).rejects.toThrow(/the connection is closed/);
    expect(existsSync(f('down'))).toBe(false);
    expect(down.log.map((c) => c.outcome)).toEqual(['before', 'unreachable']);
  });

  it('after: the command runs to its end, its answer is lost; only the nth match', async () => {
    const r = new LocalRemote('at-d', { faults: [{ match: 'echo', nth: 2, when: 'after' }] });
    await r.exec(`echo 1 >> ${f('after')}`);
    await expect(r.exec(`echo 2 >> ${f('after')}`)).rejects.toThrow(HostUnreachableError);
    await r.exec(`echo 3 >> ${f('after')}`);
    expect(readFileSync(f('after'), 'utf8')).toBe('1\n2\n3\n');
  });

  it('kill: the command dies where its input got to; drop: it sees its input end and runs on', async () => {
    const r = new LocalRemote('at-e', {
      faults: [
        { match: 'kill-me', when: 'kill', afterBytes: 3000 },
        { match: 'drop-me', when: 'drop', afterBytes: 3000 },
      ],
    });
    await expect(
      r.exec(`cat > ${f('killed')}; echo ran > ${f('killed-after')} # kill-me`, { stdin: input(100_000) }),
    ).rejects.toThrow(HostUnreachableError);
    // Killed once 3000 bytes went into its input: the shell may not even have opened the file yet.
    if (existsSync(f('killed'))) expect(readFileSync(f('killed')).length).toBeLessThanOrEqual(3000);
    expect(existsSync(f('killed-after'))).toBe(false);
    await expect(
      r.exec(`cat > ${f('dropped')}; echo ran > ${f('dropped-after')} # drop-me`, { stdin: input(100_000) }),
    ).rejects.toThrow(HostUnreachableError);
    expect(readFileSync(f('dropped')).length).toBe(3000);
    expect(readFileSync(f('dropped-after'), 'utf8')).toBe('ran\n');
  });

  it('channel: requests and answers flow; a fault after a request loses its answer', async () => {
    const serve = `while read line; do echo "$line" >> ${f('requests')}; echo "answer $line"; done`;
    const r = new LocalRemote('at-f', { faults: [{ match: '"command":"switch"', when: 'after' }] });
    const ch = await r.channel(serve);
    const answers: string[] = [];
    ch.stdout.on('data', (c: Buffer) => answers.push(...c.toString().trim().split('\n')));
    ch.stdin.write('{"command":"facts"}\n');
    await new Promise((res) => setTimeout(res, 300));
    expect(answers).toEqual(['answer {"command":"facts"}']);
    ch.stdin.write('{"command":"switch"}\n');
    expect(await ch.done).toEqual({ code: null, signal: null });
    expect(answers).toEqual(['answer {"command":"facts"}']);
    expect(readFileSync(f('requests'), 'utf8')).toBe('{"command":"facts"}\n{"command":"switch"}\n');
    const ok = await r.channel('cat');
    ok.stdin.end('bye');
    const out: Buffer[] = [];
    ok.stdout.on('data', (c: Buffer) => out.push(c));
    expect(await ok.done).toEqual({ code: 0, signal: null });
    expect(Buffer.concat(out).toString()).toBe('bye');
  });

  it('namespace: two hosts see their own directory at the same root path', async () => {
    const root = f('root');
    mkdirSync(root);
    const remotes = ['at-g1', 'at-g2'].map((name) => {
      mkdirSync(f(name));
      writeFileSync(path.join(f(name), 'who'), name);
      return new LocalRemote(name, { namespace: { root, hostDir: f(name) } });
    });
    for (const r of remotes) {
      expect((await r.exec(`cat ${root}/who`)).stdout).toBe(r.name);
      await r.exec(`echo written > ${root}/new`);
      expect(readFileSync(path.join(f(r.name), 'new'), 'utf8')).toBe('written\n');
    }
    expect(existsSync(path.join(root, 'new'))).toBe(false);
  });
});
