// The builder script's choice of build isolation for the extensions' editable wheels (README
// "Builds"), run by each interpreter the script must run on (CentOS 7's Python 2.7 and 3.6, python3),
// against temporary directories: no Docker. The check itself runs in the release's python (here
// python3, which has pip's vendored packaging, as a PEP 660 venv's pip has), over a venv faked by
// dist-info directories on PYTHONPATH and find-links directories of empty wheel files. Isolation is
// skipped only when an isolated build would have installed exactly what the venv has; every other
// case keeps today's isolated build and says why.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BUILD_SCRIPT } from '../../src/builder/build.js';
import { requirePython, TEST_PYTHONS } from '../support/pythons.js';

const ISOLATION_CHECK = String.raw`
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import ckan_release_build as b
work, release_python = sys.argv[2], sys.argv[3]
said = []
b.emit = lambda event, **fields: said.append(fields.get("message"))
logged = []
b.log = logged.append

def write(rel, text):
    path = os.path.join(work, rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(text)

# The venv: setuptools 66.1.1 and wheel 0.38.4 (Debian 12's), as dist-info directories. The real
# setuptools of release_python does the work: its entry points (egg_info and the other commands) are
# copied into the fake one, which shadows it.
points = subprocess.check_output([release_python, "-c", "import importlib.metadata as m; "
                                  "print(m.distribution('setuptools').read_text('entry_points.txt'))"])
write("site/setuptools-66.1.1.dist-info/entry_points.txt", points.decode("utf-8"))
for name, version in (("setuptools", "66.1.1"), ("wheel", "0.38.4")):
    write("site/%s-%s.dist-info/METADATA" % (name, version),
          "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version))
os.environ["PYTHONPATH"] = os.path.join(work, "site")
# The builder image's wheels, a find-links directory of the project's, one with a newer setuptools.
for rel in ("wheels/setuptools-66.1.1-py3-none-any.whl", "wheels/wheel-0.38.4-py3-none-any.whl",
            "links/ckanapi-4.7.tar.gz", "links/wheel-0.30.0-py2.py3-none-any.whl",
            "newer/setuptools-70.0.0-py3-none-any.whl"):
    write(rel, "")
b.BUILDER_WHEELS = os.path.join(work, "wheels")
setup = "from setuptools import setup\nsetup(name='x', message_extractors={})\n"
exts = {
    "plain": {"setup.py": setup},
    "other-tables": {"setup.py": setup, "pyproject.toml": "[tool.black]\nline-length = 100\n"},
    "declared": {"setup.py": setup, "pyproject.toml":
                 '[build-system]\nrequires = ["setuptools>=61", "wheel", "tomli; python_version < \'3\'"]\n'
                 'build-backend = "setuptools.build_meta"\n'},
    "too-new": {"pyproject.toml": '[build-system]\nrequires = ["setuptools>=70"]\nbuild-backend = "setuptools.build_meta"\n'},
    "missing": {"pyproject.toml": '[build-system]\nrequires = ["setuptools", "setuptools-scm>=8"]\n'},
    "hatch": {"pyproject.toml": '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'},
    "in-tree": {"pyproject.toml": '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "backend"\nbackend-path = ["."]\n'},
    "broken": {"pyproject.toml": '[build-system\nrequires = ['},
    "setup-requires": {"setup.py": "from setuptools import setup\nsetup(name='x', setup_requires=['pbr'])\n"},
    "extras": {"pyproject.toml": '[build-system]\nrequires = ["setuptools[core]"]\n'},
    "fails": {"setup.py": "raise SystemExit('no setup here')\n"},
}
for ext, files in exts.items():
    for name, text in files.items():
        write(os.path.join("src", ext, name), text)
src = lambda *names: [os.path.join(work, "src", n) for n in names]
links = [os.path.join(work, "links")]
cases = [
    ("fits", {"find_links": links}, src("plain", "other-tables", "declared")),
    ("newer in find-links", {"find_links": links + [os.path.join(work, "newer")]}, src("plain")),
    ("too new", {"find_links": links}, src("plain", "too-new")),
    ("missing", {"find_links": links}, src("missing")),
    ("hatch", {"find_links": links}, src("hatch")),
    ("in-tree", {"find_links": links}, src("in-tree")),
    ("broken", {"find_links": links}, src("broken")),
    ("setup-requires", {"find_links": links}, src("setup-requires")),
    ("extras", {"find_links": links}, src("extras")),
    ("fails", {"find_links": links}, src("plain", "fails")),
    ("index", {"find_links": links, "index_url": "https://user:secret@pypi.example/simple"}, src("plain")),
    ("extra args", {"find_links": links, "extra_args": ["--pre"]}, src("plain")),
    ("url find-links", {"find_links": ["https://wheels.example/"]}, src("plain")),
    ("gone find-links", {"find_links": [os.path.join(work, "gone")]}, src("plain")),
]
out = {}
for name, pip, sources in cases:
    del said[:]
    args = b.build_isolation({"pip": pip}, release_python, sources)
    out[name] = {"args": args, "said": said[:], "log": logged[:]}
    del logged[:]
    if name == "fits":
        # What the isolated build's get_requires_for_build_editable left in each tree: x.egg-info.
        out[name]["egg_info"] = sorted(e for e in ("plain", "other-tables", "declared")
                                       if os.path.isfile(os.path.join(work, "src", e, "x.egg-info", "PKG-INFO")))
# A release python whose pip has no vendored tomli or packaging to check with (Python 2's pip 20).
if len(sys.argv) > 4:
    del said[:]
    out["old pip"] = {"args": b.build_isolation({"pip": {"find_links": links}}, sys.argv[4], src("plain")),
                      "said": said[:]}
print(json.dumps(out))
`;

interface Case {
  args: string[];
  said: string[];
  egg_info?: string[];
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.each(TEST_PYTHONS)('the builder build-isolation choice on Python $label', (py) => {
  it('skips isolation only when an isolated build would install what the venv has, and says why not', () => {
    const python = requirePython(py);
    const release = requirePython(TEST_PYTHONS.find((p) => p.label === 'python3')!);
    const old = requirePython(TEST_PYTHONS.find((p) => p.label === '2.7')!);
    const work = mkdtempSync(path.join(os.tmpdir(), `ckan-release-isolation-${py.label}-`));
    dirs.push(work);
    const r = JSON.parse(
      execFileSync(python, ['-c', ISOLATION_CHECK, path.dirname(BUILD_SCRIPT), work, release, old], {
        encoding: 'utf8',
        env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
      })
        .trim()
        .split('\n')
        .pop()!,
    ) as Record<string, Case>;
    const kept = (name: string, why: RegExp) => {
      expect(r[name]!.args, name).toEqual([]);
      expect(r[name]!.said, name).toHaveLength(1);
      expect(r[name]!.said[0], name).toMatch(/^install: editable wheels built with build isolation: /);
      expect(r[name]!.said[0], name).toMatch(why);
    };
    // setup.py only, a pyproject.toml without [build-system], and one declaring setuptools + wheel
    // (a marker that does not apply is left out): the venv has what isolation would install.
    expect(r.fits!.args).toEqual(['--no-build-isolation']);
    expect(r.fits!.said).toEqual([
      'install: editable wheels built in the venv (no build isolation): the venv has the build ' +
        'requirements an isolated build would install (setuptools 66.1.1, wheel 0.38.4)',
    ]);
    kept(
      'newer in find-links',
      /plain: an isolated build would install setuptools 70\.0\.0 from the find-links, the venv has 66\.1\.1/,
    );
    kept('too new', /too-new: build requirement setuptools>=70, the venv has setuptools 66\.1\.1/);
    kept('missing', /missing: build requirement setuptools-scm>=8 is not installed in the venv/);
    kept('hatch', /hatch: its build backend is hatchling\.build, not setuptools/);
    kept('in-tree', /in-tree: its build backend is in its own tree/);
    kept('broken', /broken: its pyproject\.toml does not parse/);
    kept('setup-requires', /setup-requires: its setup\.py names setup_requires/);
    kept('extras', /extras: build requirement setuptools\[core\] has extras or a URL/);
    expect(r.fits!.egg_info).toEqual(['declared', 'other-tables', 'plain']);
    kept('fails', /fails: its backend's get_requires_for_build_editable failed/);
    kept('index', /builder\.pip\.index_url is set/);
    expect(r.index!.said[0]).not.toContain('secret');
    kept('extra args', /builder\.pip\.extra_args are set/);
    kept('url find-links', /a find-links entry is not a local directory/);
    kept('gone find-links', /a find-links entry is not a local directory/);
    kept('old pip', /the check failed: .*(tomli|packaging|No module)/);
  });
});
