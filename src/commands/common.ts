// What every command shares: the global options.
import type { Command } from 'commander';
import type { GlobalOptions } from '../io.js';

export function globals(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals() as GlobalOptions;
}
