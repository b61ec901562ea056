// Registers every command of the design. One file per command holds its body; commands that this
// version does not do yet still parse their arguments and validate the config, then exit 2.
import { Command, Option } from 'commander';
import type { Io } from '../cli.js';
import { globals } from './common.js';
import { environment, loadConfig } from '../config/load.js';
import { NotImplementedError } from '../errors.js';
import { registerArtifacts } from './artifacts.js';
import { registerBuild } from './build.js';
import { registerDeploy } from './deploy.js';
import { registerSandbox } from './sandbox.js';

const dryRun = () =>
  new Option('--dry-run', 'print the plan (per host: current -> target, hooks, prune) and change nothing');

/** Loads the config and checks the environment names, so bad input is reported before "not implemented". */
function notYet(name: string, envArgs: (args: string[]) => string[] = () => []) {
  return (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const config = loadConfig(globals(cmd).config);
    for (const env of envArgs(cmd.args)) environment(config, env);
    throw new NotImplementedError(name);
  };
}

export function registerCommands(program: Command, io: Io): void {
  program
    .command('init')
    .description('write a commented ckan-release.yml for a new project')
    .option('--from-ansible <dir>', 'convert an Ansible playbook project of the old kind')
    .option('--force', 'overwrite an existing ckan-release.yml')
    .action(() => {
      throw new NotImplementedError('init');
    });

  registerBuild(program, io);
  registerArtifacts(program, io);

  registerDeploy(program, io, dryRun);

  program
    .command('config')
    .description('print the config file as it would be rendered for a host (secrets masked)')
    .argument('<env>', 'environment')
    .option('--host <host>', 'render for this host (default: the first)')
    .option('--show-secrets', 'do not mask secret values')
    .action(notYet('config', (a) => [a[0]!]));

  registerSandbox(program, io);
}
