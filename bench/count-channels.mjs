// Counts the SSH exec channels a ckan-release process opens, and how many of them run sudo, per host:
//   node --import ./bench/count-channels.mjs bin/ckan-release ...
// It wraps ssh2's Client (loaded from the node_modules beside the CLI that runs), so the same count
// works for any version of the tool: the bench measures "before" (another checkout's bin) and "after"
// alike. Writes one line to stderr at exit: bench-count: {"HOST:PORT": {"channels": N, "sudo": M}}.
import { createRequire } from 'node:module';
import process from 'node:process';
import path from 'node:path';

const require = createRequire(path.resolve(process.argv[1] ?? '.'));
const { Client } = require('ssh2');
const counts = {};
const connect = Client.prototype.connect;
Client.prototype.connect = function (config) {
  this.benchHost = `${config.host}:${config.port}`;
  return connect.call(this, config);
};
const exec = Client.prototype.exec;
Client.prototype.exec = function (command, ...rest) {
  const c = (counts[this.benchHost] ??= { channels: 0, sudo: 0 });
  c.channels++;
  // The same rule as src/remote/ssh.ts runsSudo.
  if (/(^|[\s;&|('"])sudo\s/.test(command)) c.sudo++;
  return exec.call(this, command, ...rest);
};
process.on('exit', () => process.stderr.write(`bench-count: ${JSON.stringify(counts)}\n`));
