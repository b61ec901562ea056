// Registers every command of the design. One file per command holds its body; commands that this
// version does not do yet still parse their arguments and validate the config, then exit 2.
import { Command, Option } from 'commander';
import type { Io } from '../cli.js';
import { globals } from './common.js';
import { environment, loadConfig } from '../config/load.js';
import { NotImplementedError } from '../errors.js';
import { registerArtifacts } from './artifacts.js';
import { registerBuild } from './build.js';

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

  program
    .command('setup')
    .description(
      "first deploy: prepare each host's layout (idempotent); adopt <root>/default as the first release",
    )
    .argument('<env>', 'environment')
    .addOption(dryRun())
    .action(notYet('setup', (a) => [a[0]!]));

  program
    .command('ship')
    .description('deploy an artifact (default: the newest built) to every host of ENV')
    .argument('<env>', 'environment')
    .argument('[id]', 'artifact ID or unique prefix')
    .addOption(dryRun())
    .option('--force', 'ship even if the environment requires the artifact to be healthy elsewhere first')
    .action(notYet('ship', (a) => [a[0]!]));

  program
    .command('promote')
    .description('ship to TO exactly the artifact that is live and healthy on FROM (no rebuild)')
    .argument('<from>', 'environment to take the release from')
    .argument('<to>', 'environment to ship it to')
    .addOption(dryRun())
    .action(notYet('promote', (a) => [a[0]!, a[1]!]));

  program
    .command('rollback')
    .description('switch back to the last healthy release before the current one, or to --to ID')
    .argument('<env>', 'environment')
    .option('--to <id>', 'release to switch to (re-shipped from the store if a host pruned it)')
    .addOption(dryRun())
    .action(notYet('rollback', (a) => [a[0]!]));

  program
    .command('status')
    .description('per host: current release, rollback target, releases and their states, lock holder')
    .argument('<env>', 'environment')
    .action(notYet('status', (a) => [a[0]!]));

  program
    .command('config')
    .description('print the config file as it would be rendered for a host (secrets masked)')
    .argument('<env>', 'environment')
    .option('--host <host>', 'render for this host (default: the first)')
    .option('--show-secrets', 'do not mask secret values')
    .action(notYet('config', (a) => [a[0]!]));

  program
    .command('unlock')
    .description('remove a stale lock (says whose it was)')
    .argument('<env>', 'environment')
    .action(notYet('unlock', (a) => [a[0]!]));

  const sandbox = program
    .command('sandbox')
    .description('local throwaway hosts (containers with sshd + Apache/mod_wsgi) to rehearse deploys');
  sandbox
    .command('up')
    .description('start sandbox hosts and write an environment for them')
    .option('--hosts <names>', 'comma-separated host names', 'sandbox1')
    .action(notYet('sandbox up'));
  sandbox.command('down').description('remove the sandbox hosts').action(notYet('sandbox down'));
}
