// What the command line gives every command: the global options and where output goes. Its own module
// so that commands/* need not import cli.ts (which imports them).

export interface GlobalOptions {
  config: string;
  json: boolean;
  debug: boolean;
  vaultPasswordFile: string | undefined;
  acceptNewHostKey: boolean;
}

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** Whether stderr is a terminal (the live progress display), and its width. */
  isTTY?: boolean;
  columns?: () => number;
}
