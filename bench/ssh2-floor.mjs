// What the transport alone costs the client: ssh2 sending a file to `cat > /dev/null` on each of the
// given sandbox hosts at once (one connection and one exec channel per host, the file read into two
// 1 MiB buffers that take turns, as the agent session sends the archive), and this process's CPU
// seconds. Run it for 1 host and for N: the difference over N - 1 is ssh2's own CPU per extra host,
// under what the ship's client CPU per extra host cannot go with this transport (README "Benchmark").
//
//   node bench/ssh2-floor.mjs KEY FILE PORT [PORT...]    (user deploy on 127.0.0.1; CIPHER=... forces one)
//
// Plain JavaScript and no host key check: a measuring tool for the bench's own sandbox hosts only.
import { Buffer } from 'node:buffer';
import { openSync, readFileSync, readSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { Client } from 'ssh2';

const [key, file, ...ports] = process.argv.slice(2);
if (!key || !file || !ports.length) {
  process.stderr.write('usage: node bench/ssh2-floor.mjs KEY FILE PORT [PORT...]\n');
  process.exit(2);
}
const algorithms = process.env.CIPHER ? { cipher: [process.env.CIPHER] } : undefined;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let cipher = '';

function send(port) {
  return new Promise((resolve, reject) => {
    const c = new Client();
    c.on('handshake', (n) => (cipher = n.cs.cipher));
    c.on('error', reject);
    c.on('ready', () =>
      c.exec('cat > /dev/null', (err, ch) => {
        if (err) return reject(err);
        ch.on('data', () => undefined);
        ch.stderr.on('data', (d) => process.stderr.write(d));
        ch.on('close', () => {
          c.end();
          resolve();
        });
        const fd = openSync(file, 'r');
        const bufs = [Buffer.allocUnsafe(1 << 20), Buffer.allocUnsafe(1 << 20)];
        const taken = [undefined, undefined];
        void (async () => {
          for (let turn = 0; ; turn ^= 1) {
            if (taken[turn]) await taken[turn];
            const n = readSync(fd, bufs[turn], 0, 1 << 20, null);
            if (!n) break;
            taken[turn] = new Promise((r) => ch.write(bufs[turn].subarray(0, n), r));
          }
          ch.end();
        })();
      }),
    );
    c.connect({
      host: '127.0.0.1',
      port: Number(port),
      username: 'deploy',
      privateKey: readFileSync(key),
      algorithms,
      hostVerifier: () => true,
    });
  });
}

await Promise.all(ports.map(send));
const cpu = process.cpuUsage(cpu0);
process.stdout.write(
  `${ports.length} host(s), cipher ${cipher}: CPU user ${(cpu.user / 1e6).toFixed(2)} s, system ${(cpu.system / 1e6).toFixed(2)} s, wall ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
);
