// The commands that change or read an environment's hosts, one file each: setup, ship, promote,
// rollback, status, unlock (their shared part: hosts.ts).
import type { Command, Option } from 'commander';
import type { Io } from '../io.js';
import { registerPromote } from './promote.js';
import { registerRollback } from './rollback.js';
import { registerSetup } from './setup.js';
import { registerShip } from './ship.js';
import { registerStatus } from './status.js';
import { registerUnlock } from './unlock.js';

export function registerDeploy(program: Command, io: Io, dryRun: () => Option): void {
  registerSetup(program, io, dryRun);
  registerShip(program, io, dryRun);
  registerPromote(program, io, dryRun);
  registerRollback(program, io, dryRun);
  registerStatus(program, io);
  registerUnlock(program, io, dryRun);
}
