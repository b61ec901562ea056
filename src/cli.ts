// The command line: registers every command of the design, and is the one place where errors become
// exit codes (0 done, 1 failed, 2 bad input) and messages.
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { CkanReleaseError } from './errors.js';
import { registerCommands } from './commands/index.js';
import type { Io } from './io.js';

export type { GlobalOptions, Io } from './io.js';

const defaultIo: Io = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  env: process.env,
  isTTY: !!process.stderr.isTTY,
  columns: () => process.stderr.columns || 80,
};

/** This checkout's version, from its package.json (dist/cli.js and src/cli.ts are both one level below it). */
function toolVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export function buildProgram(io: Io): Command {
  const program = new Command('ckan-release')
    .description(
      'Build CKAN releases once in a container; ship the same artifact to every host; switch atomically.',
    )
    .version(toolVersion(), '-V, --version', 'print the version of ckan-release')
    .option('-c, --config <file>', 'the project config', 'ckan-release.yml')
    .option('--json', 'print data as JSON (one JSON event per line for progress)', false)
    .addOption(
      new Option('--vault-password-file <file>', 'password for ansible-vault encrypted secrets').env(
        'CKAN_RELEASE_VAULT_PASSWORD_FILE',
      ),
    )
    .option(
      '--accept-new-host-key',
      'trust an unknown SSH host key on first use and add it to known_hosts (a changed key is never accepted)',
      false,
    )
    .option('--debug', 'show stack traces', false)
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();
  registerCommands(program, io);
  return program;
}

/** Runs the CLI; resolves to the exit code. Never throws. */
export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    return report(e, io, argv.includes('--debug'));
  }
}

function report(e: unknown, io: Io, debug: boolean): number {
  if (e instanceof CommanderError) {
    // --help and --version end here with exit code 0; usage errors were already printed by commander.
    return e.exitCode === 0 ? 0 : 2;
  }
  if (e instanceof CkanReleaseError) {
    io.err(`ckan-release: ${e.message}\n`);
    if (e.hint) io.err(`  hint: ${e.hint}\n`);
    if (debug && e.stack) io.err(`${e.stack}\n`);
    return e.exitCode;
  }
  const err = e instanceof Error ? e : new Error(String(e));
  io.err(`ckan-release: unexpected error: ${err.message}\n`);
  io.err(debug && err.stack ? `${err.stack}\n` : '  (run with --debug for the stack trace)\n');
  return 1;
}
