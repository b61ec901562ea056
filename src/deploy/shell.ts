// Remote commands are built here, as strings for `sh -c` on the host, from argument arrays: every
// argument is single-quoted, so no value (environment name, ID, host, path, template value) can reach a
// shell as anything but one literal argument.

/** One shell word, single-quoted ('\'' for quotes inside). */
export function shq(arg: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A command line from argv. */
export function cmd(argv: string[]): string {
  return argv.map(shq).join(' ');
}

/** false: as the SSH user; true: through sudo as root; a name: through sudo as that user. */
export type Become = boolean | string;

/** Runs argv through `sudo -n` (never prompts) when `sudo` is set; as `sudo` when it names a user. */
export function maybeSudo(argv: string[], sudo: Become): string[] {
  if (!sudo) return argv;
  return typeof sudo === 'string' && sudo !== 'root'
    ? ['sudo', '-n', '-u', sudo, '--', ...argv]
    : ['sudo', '-n', '--', ...argv];
}
