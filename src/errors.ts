// One errors module. Every error the user may see is a CkanReleaseError; its exitCode is mapped to
// process.exit in exactly one place (src/cli/main.ts).

export type ExitCode = 1 | 2;

export class CkanReleaseError extends Error {
  readonly exitCode: ExitCode;
  /** How to fix it, shown under the message. */
  readonly hint: string | undefined;

  constructor(message: string, exitCode: ExitCode, hint?: string) {
    super(message);
    this.name = new.target.name;
    this.exitCode = exitCode;
    this.hint = hint;
  }
}

/** Bad input: usage, arguments, unknown environment or ID. Exit 2; nothing was touched. */
export class UsageError extends CkanReleaseError {
  constructor(message: string, hint?: string) {
    super(message, 2, hint);
  }
}

/** A config file (or a file it names) is malformed. Exit 2; says file, line and key path. */
export class ConfigError extends CkanReleaseError {
  readonly file: string;
  readonly line: number | undefined;
  readonly keyPath: string | undefined;

  constructor(
    file: string,
    line: number | undefined,
    keyPath: string | undefined,
    what: string,
    hint?: string,
  ) {
    const where = line === undefined ? file : `${file}:${line}`;
    super(keyPath ? `${where}: ${keyPath}: ${what}` : `${where}: ${what}`, 2, hint);
    this.file = file;
    this.line = line;
    this.keyPath = keyPath;
  }
}

/** A command the design names but this version does not do yet. Exit 2, never 0. */
export class NotImplementedError extends UsageError {
  constructor(command: string) {
    super(`${command}: not implemented yet`, 'see README.md for what this version does');
  }
}

/** The operation was attempted and failed (what was rolled back is in the message). Exit 1. */
export class OperationError extends CkanReleaseError {
  constructor(message: string, hint?: string) {
    super(message, 1, hint);
  }
}

/** The Docker engine is missing or unreachable. Exit 1: the input was fine, the machine is not ready. */
export class DockerUnavailableError extends CkanReleaseError {
  constructor(message: string, hint?: string) {
    super(message, 1, hint);
  }
}

/**
 * An operation failed on several hosts (or on some of them). The one rule for its exit code: 2 when
 * every failure was bad input or host setup (a UsageError, such as a host that cannot run the artifact
 * or a sudo that wants a password), with the first one's hint; 1 otherwise. `hint` overrides the hint.
 */
export class HostsFailedError extends CkanReleaseError {
  readonly failures: { host: string; error: unknown }[];

  constructor(message: string, failures: { host: string; error: unknown }[], hint?: string) {
    const bad = failures.filter(
      (f): f is { host: string; error: CkanReleaseError } =>
        f.error instanceof CkanReleaseError && f.error.exitCode === 2,
    );
    const usage = failures.length > 0 && bad.length === failures.length;
    super(message, usage ? 2 : 1, hint ?? (usage ? bad[0]!.error.hint : undefined));
    this.failures = failures;
  }
}
