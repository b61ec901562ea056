// Registers every command of the design; one file per command (or family of commands) holds its body.
import { Command, Option } from 'commander';
import type { Io } from '../io.js';
import { registerArtifacts } from './artifacts.js';
import { registerBuild } from './build.js';
import { registerConfig } from './config.js';
import { registerDeploy } from './deploy.js';
import { registerDiff } from './diff.js';
import { registerHistory } from './history.js';
import { registerInit } from './init.js';
import { registerSandbox } from './sandbox.js';

const dryRun = () =>
  new Option('--dry-run', 'print the plan (per host: current -> target, hooks, prune) and change nothing');

export function registerCommands(program: Command, io: Io): void {
  registerInit(program, io);
  registerBuild(program, io);
  registerArtifacts(program, io);
  registerDeploy(program, io, dryRun);
  registerHistory(program, io);
  registerDiff(program, io);
  registerConfig(program, io);
  registerSandbox(program, io);
}
