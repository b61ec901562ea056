// The host agent's archive reader (assets/host/ckan_release_host.py GunzipReader), run by Python 2.7,
// 3.6 and python3 (Python 2's zlib has no eof: a cut stream must still be an error there): an
// archive of several gzip members (the parallel pack writes one per chunk) reads back whole, as
// `gzip -d` reads it; a cut stream and garbage after a member are errors, not a quiet short read.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_SCRIPT } from '../../src/deploy/agent.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const CHECK = String.raw`
import hashlib, io, json, sys, zlib
sys.path.insert(0, sys.argv[1])
import ckan_release_host as agent
raw = b"".join(hashlib.sha256(str(i).encode()).digest() * 50 for i in range(4000))

def archive(parts):
    buf = io.BytesIO()
    step = len(raw) // parts + 1
    for i in range(0, len(raw), step):
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        buf.write(c.compress(raw[i:i + step]) + c.flush())
    return buf.getvalue()

class Pipe(object):
    """Short reads, as from an SSH channel."""
    def __init__(self, data): self.b = io.BytesIO(data)
    def read(self, n): return self.b.read(min(n, 65536))

def read_all(data):
    g = agent.GunzipReader(Pipe(data))
    out = []
    try:
        while True:
            x = g.read(10240)
            if not x:
                return b"".join(out) == raw, None
            out.append(x)
    except (EOFError, zlib.error) as e:
        return False, type(e).__name__

result = {}
for parts in (1, 3, 40):
    data = archive(parts)
    result["whole-%d" % parts] = read_all(data)
    result["cut-%d" % parts] = read_all(data[:len(data) * 2 // 3])
result["garbage-after"] = read_all(archive(3) + b"not gzip")
print(json.dumps(result))
`;

describe.each(TEST_PYTHONS)('the host agent reads multi-member gzip archives (Python $label)', (py) => {
  it('whole, cut and followed by garbage', () => {
    const out = execFileSync(requirePython(py), ['-c', CHECK, path.dirname(AGENT_SCRIPT)], {
      encoding: 'utf8',
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    const r = JSON.parse(out) as Record<string, [boolean, string | null]>;
    for (const parts of [1, 3, 40]) {
      expect(r[`whole-${parts}`]).toEqual([true, null]);
      expect(r[`cut-${parts}`]).toEqual([false, 'EOFError']);
    }
    expect(r['garbage-after']).toEqual([false, 'error']);
  });
});
