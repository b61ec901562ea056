// The headers the host agent's receive filter writes for GNU tar (assets/host/ckan_release_host.py
// tar_block), run by Python 2.7, 3.6 and python3: the one-pass build of the common case is byte for
// byte the generic one, at the edges of every octal field too, and Python's tarfile reads back what
// was written (names and link targets of 100 bytes, base-256 numbers past the octal range); the
// numbers of the headers it reads (tar_number) are octal text or GNU base-256.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const CHECK = String.raw`
import io, json, random, sys, tarfile
sys.path.insert(0, sys.argv[1])
import ckan_release_host as agent

rng = random.Random(7)
edges = [0, 1, 7, 8, 0o7777777, 0o10000000, 0o77777777777, 0o100000000000, 2 ** 40]
cases = []
for i in range(3000):
    pick = lambda: rng.choice(edges) if rng.random() < 0.3 else rng.randrange(0, 2 ** rng.randrange(1, 34))
    name = ("d/" * rng.randrange(0, 50) + "f%d" % i)[-100:].encode("ascii")
    link = ("t" * rng.randrange(0, 101)).encode("ascii") if i % 3 == 0 else b""
    cases.append((name, pick() & 0o7777, pick(), pick(), pick(), pick(), b"2" if link else b"0", link))
differ = [repr(c) for c in cases if agent.tar_block(*c) != agent.tar_block_generic(*c)]
sizes = set(len(agent.tar_block(*c)) for c in cases)

# Read back by tarfile: a file (with its data), a symlink, and numbers past the octal fields.
members = [(b"a" * 100, 0o644, 0, 0, 5, 946684800, b"0", b""),
           (b"link", 0o777, 1000, 1000, 0, 2 ** 36, b"2", b"b" * 100),
           (b"big", 0o600, 2 ** 22, 2 ** 21 + 3, 3, 0o77777777777 + 1, b"0", b"")]
buf = io.BytesIO()
for m in members:
    buf.write(agent.tar_block(*m))
    if m[4]:
        buf.write(b"x" * m[4] + b"\0" * (512 - m[4]))
buf.write(b"\0" * 1024)
buf.seek(0)
back = []
with tarfile.open(fileobj=buf, mode="r:") as t:
    for m in t.getmembers():
        back.append([m.name, m.mode, m.uid, m.gid, m.size, int(m.mtime), m.linkname])
# And the numbers of headers read: octal text (NUL or space ended, padded or empty), GNU base-256.
fields = [b"0000644\0", b"00000002322\0", b"   17 \0", b"       \0", b"\0" * 8,
          b"\x80" + b"\0" * 6 + b"\x05", b"\x80\0\0\0\0\x01\0\0", b"\xc0" + b"\0" * 6 + b"\x07"]
numbers = [agent.tar_number(f) for f in fields]
print(json.dumps({"differ": differ[:3], "count": len(cases), "sizes": sorted(sizes), "back": back,
                  "numbers": numbers}))
`;

describe.each(TEST_PYTHONS)('the receive filter writes tar headers (Python $label)', (py) => {
  it('the one-pass header is the generic one, and tarfile reads it back', () => {
    const out = execFileSync(requirePython(py), ['-c', CHECK, path.dirname(AGENT_SCRIPT)], {
      encoding: 'utf8',
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    const r = JSON.parse(out) as {
      differ: string[];
      count: number;
      sizes: number[];
      back: unknown[];
      numbers: number[];
    };
    expect(r.count).toBe(3000);
    expect(r.differ).toEqual([]);
    expect(r.sizes).toEqual([512]);
    expect(r.back).toEqual([
      ['a'.repeat(100), 0o644, 0, 0, 5, 946684800, ''],
      ['link', 0o777, 1000, 1000, 0, 2 ** 36, 'b'.repeat(100)],
      ['big', 0o600, 2 ** 22, 2 ** 21 + 3, 3, 0o77777777777 + 1, ''],
    ]);
    expect(r.numbers).toEqual([0o644, 0o2322, 0o17, 0, 0, 5, 2 ** 16, -7]);
  });
});
