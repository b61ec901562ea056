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

/** Runs argv through `sudo -n` (never prompts) when `sudo` is set. */
export function maybeSudo(argv: string[], sudo: boolean): string[] {
  return sudo ? ['sudo', '-n', '--', ...argv] : argv;
}
