// Asking for a private key's passphrase as ssh does: on the controlling terminal (/dev/tty), not on
// stdin/stdout (so piped input and output stay untouched), without echo. No controlling terminal (CI,
// cron, a detached process): no prompt at all, the caller says what to do instead.
import { closeSync, openSync, writeSync } from 'node:fs';
import tty from 'node:tty';
import { UsageError } from '../errors.js';

export type AskPassphrase = (prompt: string) => Promise<string>;

/** The controlling terminal's file descriptor, or undefined when the process has none. */
function openTty(): number | undefined {
  try {
    const fd = openSync('/dev/tty', 'r+');
    if (!tty.isatty(fd)) {
      closeSync(fd);
      return undefined;
    }
    return fd;
  } catch {
    return undefined; // ENXIO: no controlling terminal
  }
}

/** A prompt on the terminal, or undefined when there is no terminal. */
export function terminalPrompt(): AskPassphrase | undefined {
  const probe = openTty();
  if (probe === undefined) return undefined;
  closeSync(probe);
  return readHidden;
}

/** Reads one line from /dev/tty in raw mode: nothing is echoed; Ctrl-C aborts, backspace and Ctrl-U edit. */
function readHidden(prompt: string): Promise<string> {
  const fd = openTty();
  if (fd === undefined) return Promise.reject(new UsageError('the terminal went away'));
  const input = new tty.ReadStream(fd);
  // Raw (no echo) before the prompt shows: nothing typed after seeing it can be echoed.
  input.setRawMode(true);
  writeSync(fd, prompt);
  return new Promise<string>((resolve, reject) => {
    let line = '';
    const finish = (err?: Error) => {
      input.setRawMode(false);
      input.removeAllListeners('data');
      input.pause();
      try {
        writeSync(fd, '\n');
      } catch {
        // the terminal is gone: nothing to tidy
      }
      input.destroy(); // closes fd
      if (err) reject(err);
      else resolve(line);
    };
    input.on('data', (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return finish();
        if (ch === '\u0003' || ch === '\u0004')
          return finish(new UsageError('interrupted while asking for a passphrase'));
        if (ch === '\u007f' || ch === '\b') line = [...line].slice(0, -1).join('');
        else if (ch === '\u0015') line = '';
        else line += ch;
      }
    });
    input.resume();
  });
}
