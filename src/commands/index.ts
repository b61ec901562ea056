// Registers every command of the design: its arguments, options and help, so commander knows them all
// (--help, usage errors) without loading any command. Each command's body is in its own file and is
// imported only when that command runs: a command loads the modules it needs and no other command's
// (README "Performance": a ship must not pay for the AWS SDK, dockerode, the Ansible converter...).
import { Command, Option } from 'commander';
import { CKAN_UPSTREAM } from '../ansible/upstream.js';
import type { Io } from '../io.js';
import { SANDBOX_SERVERS } from '../sandbox/servers.js';

const dryRun = () =>
  new Option('--dry-run', 'print the plan (per host: current -> target, hooks, prune) and change nothing');

const REHASH =
  'check a release already on a host by hashing every file again instead of trusting its seals (README "Performance")';

export function registerCommands(program: Command, io: Io): void {
  /** A command's action: its body, imported when the command runs, called with io and commander's arguments. */
  const body =
    <A extends unknown[]>(load: () => Promise<(io: Io, ...args: A) => unknown>) =>
    async (...args: A): Promise<void> => {
      await (
        await load()
      )(io, ...args);
    };

  program
    .command('init')
    .description('write a commented ckan-release.yml for a new project')
    .option('--from-ansible <dir>', 'convert an Ansible playbook project of the old kind')
    .option(
      '--ckan-ref <ref>',
      "with --from-ansible: CKAN's tag or branch, when the playbooks do not clone CKAN",
    )
    .option(
      '--ckan-source <url>',
      `with --from-ansible and --ckan-ref: CKAN's git source (default ${CKAN_UPSTREAM})`,
    )
    .option('--force', 'overwrite an existing ckan-release.yml')
    .action(body(async () => (await import('./init.js')).initCommand));

  program
    .command('build')
    .description('build an artifact in the builder container; prints its ID as the last line')
    .option('-v, --verbose', 'stream the build log (pip output etc.)')
    .action(body(async () => (await import('./build.js')).buildCommand));

  const artifacts = program
    .command('artifacts')
    .description('list the artifact store (local, or the S3 store), newest first')
    .action(body(async () => (await import('./artifacts.js')).artifactsCommand));
  artifacts
    .command('show')
    .description("print one artifact's manifest")
    .argument('<id>', 'artifact ID or a unique prefix of it')
    .option('--files', 'also list every file (always included with --json)')
    .action(body(async () => (await import('./artifacts.js')).artifactsShowCommand));
  artifacts
    .command('publish')
    .description('upload an artifact of the local store to the S3 store (only the chunks it lacks)')
    .argument('<id>', 'artifact ID or a unique prefix of it')
    .action(body(async () => (await import('./artifacts.js')).artifactsPublishCommand));

  // The commands that change or read an environment's hosts (their shared part: hosts.ts).
  program
    .command('setup')
    .description(
      "first deploy: prepare each host's layout (idempotent); adopt <root>/default as the first release",
    )
    .argument('<env>', 'environment')
    .addOption(dryRun())
    .action(body(async () => (await import('./setup.js')).setupCommand));
  program
    .command('ship')
    .description('deploy an artifact (default: the newest built) to every host of ENV')
    .argument('<env>', 'environment')
    .argument('[id]', 'artifact ID or unique prefix')
    .addOption(dryRun())
    .option('--force', 'ship even if the environment requires the artifact to be healthy elsewhere first')
    .option('--rehash', REHASH)
    .action(body(async () => (await import('./ship.js')).shipCommand));
  program
    .command('promote')
    .description('ship to TO exactly the artifact that is live and healthy on FROM (no rebuild)')
    .argument('<from>', 'environment to take the release from')
    .argument('<to>', 'environment to ship it to')
    .addOption(dryRun())
    .option('--rehash', REHASH)
    .action(body(async () => (await import('./promote.js')).promoteCommand));
  program
    .command('rollback')
    .description('switch back to the last healthy release before the current one, or to --to ID')
    .argument('<env>', 'environment')
    .option('--to <id>', 'release to switch to (re-shipped from the store if a host pruned it)')
    .addOption(dryRun())
    .option('--rehash', REHASH)
    .action(body(async () => (await import('./rollback.js')).rollbackCommand));
  program
    .command('status')
    .description('per host: current release, rollback target, releases and their states, lock holder')
    .argument('<env>', 'environment')
    .action(body(async () => (await import('./status.js')).statusCommand));
  program
    .command('unlock')
    .description('remove a stale lock (says whose it was)')
    .argument('<env>', 'environment')
    .addOption(dryRun())
    .action(body(async () => (await import('./unlock.js')).unlockCommand));

  program
    .command('history')
    .description("every operation on ENV from its hosts' ledgers: when, who, what, result, duration")
    .argument('<env>', 'environment')
    .action(body(async () => (await import('./history.js')).historyCommand));
  program
    .command('diff')
    .description('what changed between artifacts A and B: sources and commits, patches, pip freeze, files')
    .argument('<a>', 'artifact ID (or unique prefix): the older side')
    .argument('<b>', 'artifact ID (or unique prefix): the newer side')
    .action(body(async () => (await import('./diff.js')).diffCommand));
  program
    .command('config')
    .description('print the config file as it would be rendered for a host (secrets masked)')
    .argument('<env>', 'environment')
    .option('--host <host>', 'render for this host (default: the first)')
    .option('--show-secrets', 'do not mask secret values')
    .action(body(async () => (await import('./config.js')).configCommand));

  const sandbox = program
    .command('sandbox')
    .description('local throwaway hosts (containers with sshd + Apache/mod_wsgi) to rehearse deploys');
  sandbox
    .command('up')
    .description("start the sandbox hosts of the environments that use the sandbox's ssh_config")
    .option('--hosts <names>', 'only these hosts (comma-separated)')
    .addOption(
      new Option('--server <kind>', 'apache: Apache + mod_wsgi; uwsgi: nginx + uwsgi under supervisor')
        .choices([...SANDBOX_SERVERS])
        .default('apache'),
    )
    .action(body(async () => (await import('./sandbox.js')).sandboxUpCommand));
  sandbox
    .command('down')
    .description('remove the sandbox hosts (keeps the key pair)')
    .action(body(async () => (await import('./sandbox.js')).sandboxDownCommand));
}
