// A terminal for tests: applies the output of the live progress display to a screen of lines.

/** A terminal: applies text, \n, \r, ESC[nA (cursor up) and ESC[J (clear to the end); returns the screen. */
export function screen(output: string): string[] {
  const rows: string[] = [''];
  let y = 0;
  let x = 0;
  // eslint-disable-next-line no-control-regex -- the escapes are what this fake terminal reads
  const re = /\x1b\[(\d*)([AJ])|\r|\n|[^\x1b\r\n]+/g;
  for (const m of output.matchAll(re)) {
    const t = m[0];
    if (m[2] === 'A') y = Math.max(0, y - Number(m[1] || 1));
    else if (m[2] === 'J') {
      rows[y] = rows[y]!.slice(0, x);
      rows.length = y + 1;
    } else if (t === '\r') x = 0;
    else if (t === '\n') {
      y++;
      x = 0;
      if (rows.length <= y) rows.push('');
    } else {
      const row = rows[y] ?? '';
      rows[y] = row.slice(0, x) + t + row.slice(x + t.length);
      x += t.length;
    }
  }
  return rows.filter((r, i) => i < rows.length - 1 || r !== '');
}
