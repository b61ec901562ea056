// ckan-release history ENV: every operation on the environment, from the hosts' ledgers merged.
// Read-only: the ledger is a plain file readable without sudo, so not even the agent is installed.
import type { Command } from 'commander';
import type { Io } from '../io.js';
import { environment, loadConfig } from '../config/load.js';
import { closeSession, openSession, settleAll } from '../deploy/session.js';
import { formatHistory, mergeLedgers, type LedgerEntry } from '../deploy/history.js';
import { cmd } from '../deploy/shell.js';
import { OperationError } from '../errors.js';
import { ledgerFile } from '../layout.js';
import { globals } from './common.js';

export async function historyCommand(io: Io, envName: string, _opts: unknown, c: Command): Promise<void> {
  const g = globals(c);
  const config = loadConfig(g.config);
  const env = environment(config, envName);
  const s = await openSession(config, env, {}, (l) => io.err(`${l}\n`), {
    acceptNewHostKey: !!g.acceptNewHostKey,
  });
  try {
    const file = ledgerFile(config.root);
    const read = await settleAll(s.hosts, env.parallel, async (h) => {
      const r = await h.remote.exec(`test ! -e ${cmd([file])} || cat ${cmd([file])}`);
      if (r.code !== 0) throw new OperationError(`${h.name}: cannot read ${file}: ${r.stderr.trim()}`);
      // A line cut short by a crash mid-append is skipped, as the agent does.
      const entries = r.stdout.split('\n').flatMap((line) => {
        try {
          return line.trim() ? [JSON.parse(line) as LedgerEntry] : [];
        } catch {
          return [];
        }
      });
      return { host: h.name, entries };
    });
    const failed = read.flatMap((r, i) =>
      r.status === 'rejected' ? [`  ${s.hosts[i]!.name}: ${(r.reason as Error).message}`] : [],
    );
    if (failed.length)
      throw new OperationError(`cannot read every ledger of ${envName}:\n${failed.join('\n')}`);
    const ops = mergeLedgers(
      read.map((r) => (r as PromiseFulfilledResult<{ host: string; entries: LedgerEntry[] }>).value),
    );
    io.out(
      g.json ? JSON.stringify({ environment: envName, operations: ops }) + '\n' : formatHistory(envName, ops),
    );
  } finally {
    closeSession(s);
  }
}
