// The client's side of a run, measured from inside its process: the bytes it writes to SSH connections
// (a socket is SSH when the first bytes written to it are an SSH identification string), by the
// remote port, and the CPU time it used. The bench runs the CLI as
//   CKAN_RELEASE_BENCH_METER=FILE node --import ./bench/client-meter.mjs bin/ckan-release ...
// and reads {ssh_bytes, by_port, cpu_s} from FILE after it exits; tests that run the CLI in their own
// process call countSshWrites() directly. Plain JavaScript: a loader would add its own CPU time.
import { Buffer } from 'node:buffer';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import process from 'node:process';

/** Counts every byte written to SSH sockets from now on, by remote port, until restore(). */
export function countSshWrites() {
  const byPort = new Map();
  const write = net.Socket.prototype.write;
  net.Socket.prototype.write = function (chunk, ...rest) {
    if (typeof chunk === 'string' || chunk instanceof Uint8Array) {
      const head =
        typeof chunk === 'string' ? chunk.slice(0, 4) : Buffer.from(chunk.subarray(0, 4)).toString('latin1');
      this.ckanReleaseSsh ??= head.startsWith('SSH-');
      if (this.ckanReleaseSsh && this.remotePort) {
        const n = typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.byteLength;
        byPort.set(this.remotePort, (byPort.get(this.remotePort) ?? 0) + n);
      }
    }
    return write.call(this, chunk, ...rest);
  };
  return {
    byPort,
    restore() {
      net.Socket.prototype.write = write;
    },
  };
}

const file = process.env.CKAN_RELEASE_BENCH_METER;
if (file) {
  const counted = countSshWrites();
  process.on('exit', () => {
    const cpu = process.cpuUsage();
    writeFileSync(
      file,
      JSON.stringify({
        ssh_bytes: [...counted.byPort.values()].reduce((a, b) => a + b, 0),
        by_port: Object.fromEntries(counted.byPort),
        cpu_s: (cpu.user + cpu.system) / 1e6,
      }),
    );
  });
}
