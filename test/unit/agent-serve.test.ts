// The host agent's serve mode (one process per host and operation, README "How a host is driven"),
// on every Python it must run on, against a temporary root: the protocol itself (many requests in one
// process, refusals, a request after a refusal, framed data, stdin closed mid-request), and the
// TypeScript session (src/deploy/agent-session.ts) driving it through a local Remote: the bootstrap that
// installs the agent on the way, the read-only bootstrap that writes nothing, and the counts.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import {
  AGENT_SCRIPT,
  AgentRefusal,
  agentPath,
  callAgent,
  callAgentReadOnly,
  closeAgentSessions,
  HOST_PYTHON,
  installAgent,
  type AgentHost,
} from '../../src/deploy/agent.js';
import type { Channel, ExecOptions, ExecResult, Remote } from '../../src/remote/ssh.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const ID = '20260101000000Z-aaaaaaaa';
const roots: string[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});
function tempRoot(): string {
  const r = mkdtempSync(path.join(os.tmpdir(), 'ckan-release-serve-'));
  roots.push(r);
  return r;
}

const frame = (data: string) => `${Buffer.byteLength(data)}\n${data}`;
const req = (id: number, command: string, args: object, stdin = false) =>
  JSON.stringify({ id, command, args, stdin }) + '\n';

/** Runs `agent.py serve` with `input` on stdin (all of it, then closed); its answer lines and exit. */
function serve(python: string, input: string) {
  const r = spawnSync(python, [AGENT_SCRIPT, 'serve'], { input, encoding: 'utf8' });
  const lines = r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { hello: lines[0]!, answers: lines.slice(1), code: r.status, stderr: r.stderr };
}

describe.each(TEST_PYTHONS)('agent serve under Python $label', (p) => {
  it('serves many requests in one process; a refusal is an answer, and the next request runs', () => {
    const python = requirePython(p);
    const root = tempRoot();
    const r = serve(
      python,
      req(1, 'setup', { root, shared: ['data'] }) +
        req(2, 'facts', { root }) +
        req(3, 'switch', { root, id: 'not an id', op: 'x' }) +
        req(4, 'lock', { root, owner: { user: 'u', token: 't1' }, ttl: 60 }) +
        req(5, 'lock', { root, owner: { user: 'v', token: 't2' }, ttl: 60 }) +
        req(6, 'no-such-command', {}) +
        req(7, 'unlock', { root, token: 't1' }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.hello).toMatchObject({ ready: true });
    // One process answered them all, in order.
    expect(r.answers.map((a) => [a.id, a.status])).toEqual([
      [1, 'done'],
      [2, 'done'],
      [3, 'refused'],
      [4, 'done'],
      [5, 'refused'],
      [6, 'failed'],
      [7, 'done'],
    ]);
    expect((r.answers[1]!.answer as { layout: boolean }).layout).toBe(true);
    // The refusals as one-shot calls give them (exit 3): kind, message, details.
    expect(r.answers[2]).toMatchObject({
      error: 'bad-input',
      message: expect.stringMatching(/^not a release ID: u?'not an id'$/) as unknown,
    });
    expect(r.answers[4]).toMatchObject({ error: 'locked', details: { holder: { user: 'u' } } });
    expect(r.answers[5]!.message).toMatch(/not a request for a known command/);
    expect(r.answers[6]!.answer).toMatchObject({ unlocked: true });
    expect(existsSync(path.join(root, '.ckan-release', 'lock'))).toBe(false);
  });

  it('reads a request’s data from frames; an answer before the data ends (a refusal) skips the rest', () => {
    const python = requirePython(p);
    const root = tempRoot();
    const r = serve(
      python,
      req(1, 'setup', { root, shared: [] }) +
        // No such release: refused before reading the config, whose frames are then read and dropped.
        req(2, 'config', { root, id: ID, config_file: 'ckan.ini' }, true) +
        frame('a = 1\n') +
        frame('b = 2\n') +
        '0\n' +
        req(3, 'facts', { root }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.answers.map((a) => a.status)).toEqual(['done', 'refused', 'done']);
    expect(r.answers[1]).toMatchObject({ error: 'missing' });

    // Into a release that exists: the data, reassembled from its frames, is the file written.
    const release = path.join(root, 'releases', ID);
    spawnSync('mkdir', ['-p', release]);
    const ok = serve(
      python,
      req(1, 'config', { root, id: ID, config_file: 'ckan.ini' }, true) +
        frame('[app:main]\n') +
        frame('x = "y"\n') +
        '0\n' +
        req(2, 'config', { root, id: ID, config_file: 'empty.ini' }, true) +
        '0\n',
    );
    expect(
      ok.answers.map((a) => a.status),
      ok.stderr,
    ).toEqual(['done', 'done']);
    expect(readFileSync(path.join(release, 'ckan.ini'), 'utf8')).toBe('[app:main]\nx = "y"\n');
    expect(readFileSync(path.join(release, 'empty.ini'), 'utf8')).toBe('');
  });

  it('a receive refused in the middle of its archive: the rest is dropped, the next request runs', () => {
    const python = requirePython(p);
    const root = tempRoot();
    spawnSync(python, [AGENT_SCRIPT, 'setup', JSON.stringify({ root, shared: [] })]);
    // An archive whose first entry is not in the manifest, with 4 MB of incompressible bytes after it:
    // the agent refuses at once, while its inflating thread still reads.
    const made = spawnSync(
      'python3',
      [
        '-c',
        [
          'import io, json, os, sys, tarfile, gzip',
          'buf = io.BytesIO()',
          'with tarfile.open(fileobj=buf, mode="w") as t:',
          '    for name in ("stray", "big"):',
          '        data = os.urandom(2 << 20)',
          '        i = tarfile.TarInfo(name); i.size = len(data)',
          '        t.addfile(i, io.BytesIO(data))',
          'sys.stdout.buffer.write(gzip.compress(buf.getvalue()))',
        ].join('\n'),
      ],
      { maxBuffer: 64 << 20 },
    );
    const archive = made.stdout;
    expect(archive.length, made.stderr.toString()).toBeGreaterThan(4 << 20);
    const manifest = path.join(root, 'manifest.json');
    writeFileSync(
      manifest,
      JSON.stringify({ id: ID, files: [{ path: 'big', type: 'file', mode: '0644', size: 1, sha256: 'x' }] }),
    );
    const parts: Buffer[] = [Buffer.from(req(1, 'receive', { root, id: ID, op: 'op1', manifest }, true))];
    for (let at = 0; at < archive.length; at += 65536) {
      const chunk = archive.subarray(at, at + 65536);
      parts.push(Buffer.from(`${chunk.length}\n`), chunk);
    }
    parts.push(Buffer.from('0\n' + req(2, 'facts', { root })));
    const r = spawnSync(python, [AGENT_SCRIPT, 'serve'], { input: Buffer.concat(parts), timeout: 60_000 });
    const answers = r.stdout
      .toString()
      .split('\n')
      .filter(Boolean)
      .slice(1)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(answers.map((a) => a.status)).toEqual(['refused', 'done']);
    expect(answers[0]!.message).toMatch(/archive entry stray is not in the manifest/);
  });

  it('refused while its data is still coming: the end frame sent after the answer, then the next request runs', async () => {
    // The client's order when an answer comes early: the agent's inflating thread is still reading
    // the data when the refusal is sent; the end frame and the next request arrive after it.
    const python = requirePython(p);
    const root = tempRoot();
    spawnSync(python, [AGENT_SCRIPT, 'setup', JSON.stringify({ root, shared: [] })]);
    const manifest = path.join(root, 'manifest.json');
    writeFileSync(manifest, JSON.stringify({ id: ID, files: [] }));
    const archive = spawnSync('python3', [
      '-c',
      'import io, sys, tarfile, gzip\nb = io.BytesIO()\nt = tarfile.open(fileobj=b, mode="w")\n' +
        'i = tarfile.TarInfo("stray"); i.size = 1; t.addfile(i, io.BytesIO(b"x")); t.close()\n' +
        'sys.stdout.buffer.write(gzip.compress(b.getvalue()))',
    ]).stdout;
    const child = spawn(python, [AGENT_SCRIPT, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const lines: Record<string, unknown>[] = [];
    let waiter: (() => void) | undefined;
    let buf = '';
    child.stdout.on('data', (c: Buffer) => {
      buf += c.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
        buf = buf.slice(nl + 1);
        waiter?.();
      }
    });
    const until = (n: number) =>
      new Promise<void>((res, rej) => {
        const t = setTimeout(
          () => rej(new Error(`only ${lines.length} lines: ${JSON.stringify(lines)}`)),
          10_000,
        );
        const check = () => {
          if (lines.length >= n) {
            clearTimeout(t);
            res();
          }
        };
        waiter = check;
        check();
      });
    for (let round = 0; round < 5; round++) {
      const base = 1 + 2 * round;
      child.stdin.write(req(base, 'receive', { root, id: ID, op: `op${round}`, manifest }, true));
      child.stdin.write(`${archive.length}\n`);
      child.stdin.write(archive);
      await until(1 + 2 * round + 1);
      expect(lines.at(-1)).toMatchObject({ id: base, status: 'refused', error: 'bad-artifact' });
      await new Promise((r) => setTimeout(r, 50));
      child.stdin.write('0\n' + req(base + 1, 'clean', { root, op: `op${round}` }));
      await until(1 + 2 * round + 2);
      expect(lines.at(-1)).toMatchObject({ id: base + 1, status: 'done' });
    }
    child.stdin.end();
    expect(await new Promise((r) => child.on('close', r))).toBe(0);
  });

  it('stdin closed mid-request: a cut-off request line never runs; cut-off data fails that command only', () => {
    const python = requirePython(p);
    const root = tempRoot();
    // The second request's line is cut: it must not run (no lock appears), and the exit says so.
    const cut = serve(
      python,
      req(1, 'setup', { root, shared: [] }) +
        req(2, 'lock', { root, owner: { token: 't' }, ttl: 60 }).slice(0, 30),
    );
    expect(cut.answers.map((a) => a.status)).toEqual(['done']);
    expect(cut.code).toBe(4);
    expect(existsSync(path.join(root, '.ckan-release', 'lock'))).toBe(false);

    // Data cut off in the middle of a frame: the command sees a read error (a config write writes
    // nothing), and nothing after it is read.
    spawnSync('mkdir', ['-p', path.join(root, 'releases', ID)]);
    const mid = serve(
      python,
      req(1, 'config', { root, id: ID, config_file: 'ckan.ini' }, true) + '100\n[app:main]\n',
    );
    expect(mid.code).toBe(4);
    expect(mid.answers).toHaveLength(1);
    expect(mid.answers[0]!.status).toBe('failed');
    expect(readdirSync(path.join(root, 'releases', ID))).toEqual([]);

    // The sender gave up ("-"): the same read error, and the session goes on.
    const abort = serve(
      python,
      req(1, 'config', { root, id: ID, config_file: 'ckan.ini' }, true) +
        frame('half') +
        '-\n' +
        req(2, 'facts', { root }),
    );
    expect(abort.answers.map((a) => a.status)).toEqual(['failed', 'done']);
    expect(abort.code).toBe(0);
    expect(readdirSync(path.join(root, 'releases', ID))).toEqual([]);
  });

  it('a command whose stdin closes while it runs finishes it to its end (the answer goes nowhere)', async () => {
    const python = requirePython(p);
    const root = tempRoot();
    const child = spawn(python, [AGENT_SCRIPT, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((res) => child.on('close', res));
    child.stdout.resume();
    // The health check polls its URL for 1.5 s (nothing listens there); stdin ends at once, and the
    // process must neither stop the command nor run anything sent after the cut.
    child.stdin.end(
      req(1, 'setup', { root, shared: [] }) +
        req(2, 'health', { url: 'http://127.0.0.1:9/none', plugins: [], timeout: 1.5 }),
    );
    const t0 = Date.now();
    expect(await exited).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(existsSync(path.join(root, 'releases'))).toBe(true);
  });

  it('one-shot calls still work: exit 0 with the answer, exit 3 with the refusal', () => {
    const python = requirePython(p);
    const root = tempRoot();
    const ok = spawnSync(python, [AGENT_SCRIPT, 'setup', JSON.stringify({ root, shared: [] })], {
      encoding: 'utf8',
    });
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ made: expect.any(Array) as unknown });
    const no = spawnSync(python, [AGENT_SCRIPT, 'switch', JSON.stringify({ root, id: 'x y', op: 'o' })], {
      encoding: 'utf8',
    });
    expect(no.status).toBe(3);
    expect(JSON.parse(no.stdout)).toMatchObject({ error: 'bad-input' });
  });
});

/** A Remote that runs commands on this machine (sh -c), counting channels as SshRemote does. */
class LocalRemote implements Remote {
  readonly name = 'local';
  channels = 0;
  commands: string[] = [];
  private children = new Map<ReturnType<typeof spawn>, () => void>();
  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.channel(command).then(async (ch) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      ch.stdout.on('data', (c: Buffer) => out.push(c));
      ch.stderr.on('data', (c: Buffer) => err.push(c));
      if (opts.stdin) opts.stdin.pipe(ch.stdin);
      else ch.stdin.end();
      const { code } = await ch.done;
      return {
        code: code ?? 255,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
      };
    });
  }
  async run(step: string, command: string, opts?: ExecOptions): Promise<ExecResult> {
    const r = await this.exec(command, opts);
    if (r.code !== 0) throw new Error(`${step}: exit ${r.code}: ${r.stderr}`);
    return r;
  }
  channel(command: string): Promise<Channel> {
    this.channels++;
    this.commands.push(command);
    const child = spawn('sh', ['-c', command], { stdio: ['pipe', 'pipe', 'pipe'] });
    const done = new Promise<{ code: number | null; signal: string | null }>((res) => {
      // A dropped connection: the channel ends with no exit status, the host side sees its pipes close.
      this.children.set(child, () => {
        child.stdin.destroy();
        child.stdout.destroy();
        child.stderr.destroy();
        res({ code: null, signal: null });
      });
      child.on('close', (code, signal) => {
        this.children.delete(child);
        res({ code, signal });
      });
    });
    child.stdin.on('error', () => undefined);
    return Promise.resolve({
      stdin: child.stdin,
      stdout: child.stdout,
      stderr: child.stderr,
      done,
      close: () => child.kill(),
    });
  }
  /** The connection drops: every channel ends without an exit status, its pipes closed. */
  drop(): void {
    for (const cut of [...this.children.values()]) cut();
    this.children.clear();
  }
  close(): void {
    closeAgentSessions(this);
  }
}

describe.each(TEST_PYTHONS)('agent sessions (session.ts) under Python $label', (p) => {
  it('one channel for an operation: the first call installs the agent on the way, the rest are requests', async () => {
    const python = requirePython(p);
    const root = tempRoot();
    const remote = new LocalRemote();
    const h: AgentHost = { remote, root, python, sudo: false };
    await installAgent(h);
    await callAgent(h, 'setup', 'setup', { root, shared: [] });
    expect(existsSync(agentPath(root))).toBe(true);
    const facts = await callAgent<{ layout: boolean }>(h, 'read host facts', 'facts', { root });
    expect(facts.layout).toBe(true);
    await callAgent(h, 'lock', 'lock', { root, owner: { token: 't' }, ttl: 60 });
    // A refusal, and the session goes on.
    const refused = await callAgent(h, 'lock', 'lock', { root, owner: { token: 'other' }, ttl: 60 }).catch(
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(AgentRefusal);
    expect((refused as AgentRefusal).kind).toBe('locked');
    // Data, framed, on the same channel: a 3 MB config (several frames).
    spawnSync('mkdir', ['-p', path.join(root, 'releases', ID)]);
    const big = 'x'.repeat(3 << 20);
    await callAgent(
      h,
      'write the config',
      'config',
      { root, id: ID, config_file: 'ckan.ini' },
      {
        stdin: Readable.from([big.slice(0, 1 << 20), big.slice(1 << 20)]),
      },
    );
    expect(readFileSync(path.join(root, 'releases', ID, 'ckan.ini'), 'utf8')).toBe(big);
    await callAgent(h, 'unlock', 'unlock', { root, token: 't' });
    expect(remote.channels).toBe(1);
    remote.close();
    // The next operation finds the agent installed: one channel again, no bootstrap.
    const again = new LocalRemote();
    await callAgent({ ...h, remote: again }, 'read host facts', 'facts', { root });
    expect(again.channels).toBe(1);
    expect(again.commands[0]).toContain(`test -f ${agentPath(root)}`);
    again.close();
  });

  it('read-only: with the agent not installed, it runs from its text and writes nothing; installAgent later writes it', async () => {
    const python = requirePython(p);
    const root = tempRoot();
    const remote = new LocalRemote();
    const h: AgentHost = { remote, root, python, sudo: false };
    const f = await callAgentReadOnly<{ layout: boolean }>(h, 'read host facts', 'facts', { root });
    expect(f.layout).toBe(false);
    expect(readdirSync(root)).toEqual([]);
    await callAgent(h, 'setup', 'setup', { root, shared: [] });
    expect(existsSync(agentPath(root))).toBe(false);
    await installAgent(h);
    expect(existsSync(agentPath(root))).toBe(true);
    expect(remote.channels).toBe(1);
    remote.close();
  });

  it('a dropped channel fails the request in flight, never re-sends it; the next call opens a new session', async () => {
    const python = requirePython(p);
    const root = tempRoot();
    const remote = new LocalRemote();
    const h: AgentHost = { remote, root, python, sudo: false };
    await installAgent(h);
    await callAgent(h, 'setup', 'setup', { root, shared: [] });
    // A health check that takes a while, cut off by the drop.
    const inFlight = callAgent(h, 'health check', 'health', {
      url: 'http://127.0.0.1:9/none',
      plugins: [],
      timeout: 5,
    });
    await new Promise((r) => setTimeout(r, 300));
    remote.drop();
    await expect(inFlight).rejects.toThrow(/health check: .*(lost|exit)/);
    const facts = await callAgent<{ layout: boolean }>(h, 'read host facts', 'facts', { root });
    expect(facts.layout).toBe(true);
    expect(remote.channels).toBe(2);
    remote.close();
  });

  it('a data source that fails gives the data up ("-"): the request fails with its error, the session goes on', async () => {
    const python = requirePython(p);
    const root = tempRoot();
    const remote = new LocalRemote();
    const h: AgentHost = { remote, root, python, sudo: false };
    await installAgent(h);
    await callAgent(h, 'setup', 'setup', { root, shared: [] });
    spawnSync('mkdir', ['-p', path.join(root, 'releases', ID)]);
    const failing = new Readable({
      read() {
        this.push(Buffer.from('[app:main]\n'));
        this.destroy(new Error('disk read error'));
      },
    });
    await expect(
      callAgent(
        h,
        'write the config',
        'config',
        { root, id: ID, config_file: 'ckan.ini' },
        { stdin: failing },
      ),
    ).rejects.toThrow('disk read error');
    expect(readdirSync(path.join(root, 'releases', ID))).toEqual([]);
    await callAgent(h, 'read host facts', 'facts', { root });
    expect(remote.channels).toBe(1);
    remote.close();
  });
});

describe('agent sessions: the host python', () => {
  it('the session that found the host’s python serves calls made with that same interpreter', async () => {
    const root = tempRoot();
    const remote = new LocalRemote();
    const probe: AgentHost = { remote, root, python: HOST_PYTHON, sudo: false };
    await installAgent(probe);
    const f = await callAgent<{ python: { path: string } }>(probe, 'read host facts', 'facts', { root });
    // The artifact names the interpreter the probe found (a rollback's first look, then its ship).
    const same: AgentHost = { ...probe, python: f.python.path };
    await callAgent(same, 'read host facts', 'facts', { root });
    expect(remote.channels).toBe(1);
    // Another interpreter is another agent process.
    const other: AgentHost = { ...probe, python: requirePython(TEST_PYTHONS[0]!) };
    await callAgent(other, 'read host facts', 'facts', { root });
    expect(remote.channels).toBe(2);
    remote.close();
  });
});
