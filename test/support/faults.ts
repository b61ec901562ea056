// Fault injection and command recording for sandbox hosts, from the test's side only (the sandbox image
// is not changed):
//   - recordCommands(): sshd's ForceCommand becomes a wrapper that appends every command a client asks
//     for ($SSH_ORIGINAL_COMMAND, JSON-encoded, one per line) to /var/lib/r7/commands.jsonl, then runs
//     it with bash -c as sshd would. With /var/lib/r7/fault.json present, the wrapper cuts the SSH
//     connection (kills its own sshd session process) at the nth command containing `match`:
//     `before` running it, or `after` it ran to the end with its answer thrown away. One-shot.
//     An agent serve session (one channel that carries many agent commands, README "How a host is
//     driven") is a command too: while a fault is pending, the wrapper relays its requests and answers
//     and matches each request as " COMMAND {args}" (what a one-shot agent call's command line holds),
//     so the same faults cut at the same steps.
//   - CutProxy: a TCP proxy on 127.0.0.1 that cuts one connection after N client->server bytes.
import net from 'node:net';
import type Docker from 'dockerode';
import { onHost } from './hosts.js';

const WRAPPER = String.raw`#!/usr/bin/python3
import json, os, signal, subprocess, sys
DIR = "/var/lib/r7"
cmd = os.environ.get("SSH_ORIGINAL_COMMAND", "")
with open(os.path.join(DIR, "commands.jsonl"), "a") as f:
    f.write(json.dumps(cmd) + "\n")

def session_sshd():
    pid = os.getppid()
    while pid > 1:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/comm" % pid) as f:
            comm = f.read().strip()
        if comm == "sshd":
            return pid
        pid = int(fields[1])
    return None

fault_file = os.path.join(DIR, "fault.json")
try:
    with open(fault_file) as f:
        fault = json.load(f)
except (IOError, ValueError):
    fault = None

def hit(text):
    """Whether this command (or agent request) is the one to cut at; counts it towards nth."""
    try:
        with open(fault_file) as f:
            fault = json.load(f)
    except (IOError, ValueError):
        return None
    if fault["match"] not in text:
        return None
    seen = fault.get("seen", 0) + 1
    if seen >= fault.get("nth", 1):
        os.unlink(fault_file)
        with open(os.path.join(DIR, "cuts.jsonl"), "a") as f:
            f.write(json.dumps({"match": fault["match"], "when": fault["when"], "command": text}) + "\n")
        return fault
    fault["seen"] = seen
    with open(fault_file + ".tmp", "w") as f:
        json.dump(fault, f)
    os.rename(fault_file + ".tmp", fault_file)
    return None

def cut():
    os.kill(session_sshd(), signal.SIGKILL)
    os._exit(255)

def relay_session():
    """An agent serve session, relayed request by request (protocol: src/deploy/protocol.ts)."""
    import threading
    proc = subprocess.Popen(["/bin/bash", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    drop = {}
    inp, up = sys.stdin.buffer, proc.stdin
    def frames():
        while True:
            head = inp.readline()
            up.write(head)
            n = head.strip()
            if not head.endswith(b"\n") or not n.isdigit() or n == b"0":
                return
            up.write(inp.read(int(n)))
    def upstream():
        while True:
            line = inp.readline()
            if not line.endswith(b"\n"):
                up.write(line)
                break
            if line.strip().isdigit():  # the bootstrap's payload: the agent's text
                up.write(line + inp.read(int(line.strip())))
                up.flush()
                continue
            req = json.loads(line.decode())
            fault = hit(" %s %s" % (req["command"], json.dumps(req["args"])))
            if fault and fault["when"] == "before":
                cut()
            if fault:
                drop[req["id"]] = True
            up.write(line)
            if req.get("stdin"):
                frames()
            up.flush()
        up.close()
    threading.Thread(target=upstream, daemon=True).start()
    out = sys.stdout.buffer
    for line in proc.stdout:
        try:
            if json.loads(line.decode()).get("id") in drop:
                cut()  # it ran to its end; its answer is thrown away
        except ValueError:
            pass
        out.write(line)
        out.flush()
    sys.exit(proc.wait())

if fault and fault["match"] in cmd:
    if hit(cmd):
        if fault["when"] == "after":
            subprocess.call(["/bin/bash", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cut()
elif fault and " serve" in cmd and "/.ckan-release/agent/" in cmd:
    relay_session()
os.execv("/bin/bash", ["bash", "-c", cmd])
`;

/** Installs the recording (and fault-injecting) ForceCommand wrapper on a sandbox host. */
export async function recordCommands(docker: Docker, host: string): Promise<void> {
  const b64 = Buffer.from(WRAPPER).toString('base64');
  const r = await onHost(
    docker,
    host,
    `set -e
install -d -o deploy -g deploy -m 0755 /var/lib/r7
echo ${b64} | base64 -d > /usr/local/sbin/r7-record && chmod 0755 /usr/local/sbin/r7-record
grep -q r7-record /etc/ssh/sshd_config.d/00-sandbox.conf || echo 'ForceCommand /usr/local/sbin/r7-record' >> /etc/ssh/sshd_config.d/00-sandbox.conf
/usr/sbin/sshd -t
kill -HUP "$(cat /run/sshd.pid)"
sleep 0.5`,
  );
  if (r.code !== 0) throw new Error(`${host}: cannot install the command recorder: ${r.out}`);
}

/** Every command clients ran over SSH on the host since the recorder was installed (or cleared). */
export async function recorded(docker: Docker, host: string): Promise<string[]> {
  const r = await onHost(docker, host, 'cat /var/lib/r7/commands.jsonl 2>/dev/null || true');
  return r.out
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as string);
}

export async function clearRecorded(docker: Docker, host: string): Promise<void> {
  await onHost(docker, host, ': > /var/lib/r7/commands.jsonl; rm -f /var/lib/r7/cuts.jsonl');
}

export interface Fault {
  /** A substring of the SSH command to cut at. */
  match: string;
  when: 'before' | 'after';
  /** Cut at the nth matching command (default 1). */
  nth?: number;
}

export async function injectFault(docker: Docker, host: string, fault: Fault): Promise<void> {
  const json = JSON.stringify(fault).replace(/'/g, `'\\''`);
  const r = await onHost(
    docker,
    host,
    `printf '%s' '${json}' > /var/lib/r7/fault.json && chown deploy /var/lib/r7/fault.json`,
  );
  if (r.code !== 0) throw new Error(`${host}: cannot write the fault: ${r.out}`);
}

/** The cuts the wrapper made (and clears them); a fault still pending is an error. */
export async function cutsMade(docker: Docker, host: string): Promise<{ match: string; command: string }[]> {
  const r = await onHost(
    docker,
    host,
    'cat /var/lib/r7/cuts.jsonl 2>/dev/null; rm -f /var/lib/r7/cuts.jsonl; test ! -e /var/lib/r7/fault.json || echo PENDING',
  );
  if (r.out.includes('PENDING')) {
    await onHost(docker, host, 'rm -f /var/lib/r7/fault.json');
    throw new Error(`${host}: the fault was never triggered`);
  }
  return r.out
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { match: string; command: string });
}

/** A TCP proxy 127.0.0.1:port -> 127.0.0.1:target. cutAfter(n): the next connection that carries n
 * client->server bytes is destroyed on both sides at that point (one-shot). */
export class CutProxy {
  private server: net.Server;
  private cutAt: number | undefined;
  cuts = 0;
  port = 0;

  constructor(private readonly target: number) {
    this.server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: this.target });
      let sent = 0;
      const kill = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('data', (c: Buffer) => {
        sent += c.length;
        if (this.cutAt !== undefined && sent >= this.cutAt) {
          this.cutAt = undefined;
          this.cuts++;
          kill();
          return;
        }
        if (!upstream.write(c)) client.pause();
      });
      upstream.on('drain', () => client.resume());
      upstream.on('data', (c: Buffer) => {
        if (!client.write(c)) upstream.pause();
      });
      client.on('drain', () => upstream.resume());
      client.on('error', kill);
      upstream.on('error', kill);
      client.on('close', kill);
      upstream.on('close', kill);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen({ port: 0, host: '127.0.0.1' }, resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  cutAfter(bytes: number): void {
    this.cutAt = bytes;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
