# -*- coding: utf-8 -*-
"""The part of `ckan-release build` that runs inside the builder container.

It runs with the image's own interpreter, which may be CentOS 7's Python 2.7 or 3.6, or a newer
Python 3: keep it compatible with all of them (no f-strings, no pathlib, no subprocess.run).

Two commands, each driven by a JSON spec file written by the TypeScript side:

  base SPEC      make the base virtualenv: CKAN core (editable, <base>/src/ckan) and its requirements.
  release SPEC   clone the base venv to <root>/releases/<ID>, add the extensions, apply the patches,
                 install, compile, verify, write RELEASE.json, the file list and the tarball.

Progress and results go to stdout as lines starting with "@@" followed by JSON; everything else on
stdout/stderr is build log. A failure is reported as one @@ error event and exit code 3.
"""
from __future__ import print_function

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import zlib

# Every file of a release gets this mtime (2000-01-01T00:00:00Z): byte-identical rebuilds, stable
# .pyc headers (which store the source mtime), and no timestamp noise in deltas.
FIXED_MTIME = 946684800
# In the base image, beside the base venv: the files and links that name the base venv's path.
BASE_PATHS = "/opt/ckan-release/base-venv-paths.json"
# Also there: path, size, mode and sha256 of every regular file of the base venv (the release step
# takes the hashes of the files it shares with the base from here instead of reading them).
BASE_FILES = "/opt/ckan-release/base-venv-files.json"
# Kernels cut #! lines at 127 bytes (BINPRM_BUF_SIZE 128); longer ones need pip's /bin/sh trampoline.
MAX_SHEBANG = 127
# The builder image's pip, setuptools and wheel wheels (docker/*/Dockerfile): find-links of every pip run.
BUILDER_WHEELS = "/opt/ckan-release/wheels"


class BuildFailure(Exception):
    def __init__(self, kind, message, **details):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.details = details


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write("@@" + json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def log(text):
    text = text if text.endswith("\n") else text + "\n"
    if str is bytes and not isinstance(text, bytes):
        # Python 2: stdout is a byte stream with no encoding (a pipe); pip's output may not be ASCII.
        text = text.encode("utf-8")
    sys.stdout.write(text)
    sys.stdout.flush()


def run(cmd, cwd=None, env=None, stdout_only=False):
    """Runs cmd (a list); its output goes to the build log and is returned (with stdout_only, only its
    stdout: pip freeze's warnings, such as pip 20's Python 2 deprecation notice, are no requirements)."""
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stdout_only else subprocess.STDOUT)
    return finish(proc, logged=True)


def finish(proc, cmd=None, logged=False):
    """Waits for a process run() or run_together() started; logs its output (and its command line,
    unless already logged) and returns (returncode, output)."""
    out, err = proc.communicate()
    if not logged:
        log("$ " + " ".join(cmd))
    out = out.decode("utf-8", "replace")
    if out:
        log(out)
    if err:
        log(err.decode("utf-8", "replace"))
    return proc.returncode, out


def run_together(commands):
    """Runs the commands ((cmd, stdout_only) pairs) at the same time, each as run() does; returns
    their (returncode, output) in order and logs them in order, each command line before its output.
    For read-only checks of the release, which need a core each more than each other."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE if stdout_only else subprocess.STDOUT)
             for cmd, stdout_only in commands]
    return [finish(proc, cmd) for (cmd, _), proc in zip(commands, procs)]


def pip_args(spec):
    args = ["--no-compile", "--disable-pip-version-check", "--no-input"]
    pip = spec["pip"]
    if not pip.get("index_url"):
        args += ["--no-index"]
    for link in pip.get("find_links", []):
        args += ["--find-links", link]
    # setuptools and wheel for PEP 517 builds with isolation, without a network.
    args += ["--find-links", BUILDER_WHEELS]
    if pip.get("constraints"):
        # builder.pip.constraints: for every pip run, the base install's as the release's.
        path = "/tmp/ckan-release-user-constraints.txt"
        if not os.path.exists(path):
            with io.open(path, "w", encoding="utf-8") as f:
                f.write(u"\n".join(pip["constraints"]) + u"\n")
        args += ["-c", path]
    return args + list(pip.get("extra_args", []))


def package_name(line):
    """The normalised project name a requirements line names (PEP 503), or None for options,
    comments, URLs and paths."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[|[<>=!~;@]|$)", line)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else None


def apply_overrides(spec, requirements, used):
    """requirements (a list of lines) with builder.pip.overrides: a line that names an overridden
    package is replaced by the override (markers and all: the override says what is wanted)."""
    overrides = dict((package_name(o), o) for o in spec["pip"].get("overrides", []))
    out = []
    for line in requirements:
        name = package_name(line.split("#", 1)[0])
        if name in overrides:
            log("override: %s -> %s" % (line.strip(), overrides[name]))
            used.add(name)
            out.append(overrides[name])
        else:
            out.append(line)
    return out


_rewritten = {}


def requirements_arg(spec, path, used=None):
    """The path pip reads for the requirements file `path`: the file itself, or, when builder.pip.overrides
    are set, a copy with the overrides applied (its -r/-c includes rewritten in turn, made absolute)."""
    if not spec["pip"].get("overrides"):
        return path
    used = _overrides_used if used is None else used
    if path in _rewritten:
        return _rewritten[path]
    with io.open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    here = os.path.dirname(path)
    out = []
    for line in apply_overrides(spec, lines, used):
        m = re.match(r"\s*(-r|--requirement|-c|--constraint)[\s=]+(\S+)", line)
        if m and "://" not in m.group(2):
            include = os.path.join(here, m.group(2))
            if m.group(1) in ("-r", "--requirement"):
                include = requirements_arg(spec, include, used)
            line = "%s %s" % (m.group(1), include)
        out.append(line)
    copy = "/tmp/ckan-release-requirements-%d.txt" % len(_rewritten)
    with io.open(copy, "w", encoding="utf-8") as f:
        f.write(u"\n".join(out) + u"\n")
    _rewritten[path] = copy
    return copy


_overrides_used = set()


def requirement_files(ext, src):
    """The requirements files of an extension, relative to its tree: the ones extensions[].requirements
    names, or the first that exists of requirements-py2.txt (Python 2 only), requirements.txt and
    pip-requirements.txt (ckanext-harvest < 1.4.1, ckanext-spatial 0.x); none when it has only setup.py
    or pyproject.toml (ckanext-scheming 3.1.0)."""
    named = ext.get("requirements", "auto")
    if named != "auto":
        for name in named:
            if not os.path.isfile(os.path.join(src, name)):
                raise BuildFailure("install", "%s: requirements file %s does not exist (extensions[].requirements)"
                                   % (ext["name"], name))
        return list(named)
    candidates = ["requirements.txt", "pip-requirements.txt"]
    if sys.version_info[0] == 2:
        candidates.insert(0, "requirements-py2.txt")
    for name in candidates:
        if os.path.isfile(os.path.join(src, name)):
            return [name]
    return []


def pip_env(spec):
    """The index URL goes to pip through its environment, not its command line, which the build log
    records: index URLs often carry credentials."""
    env = dict(os.environ)
    if spec["pip"].get("index_url"):
        env["PIP_INDEX_URL"] = spec["pip"]["index_url"]
    return env


def pip_failure(kind, who, out):
    """Turns pip's output into a message that names the culprit."""
    missing = re.findall(r"No matching distribution found for ([^\s]+)", out)
    if missing:
        # In the base, the pin is CKAN's own (markdown==3.4.1 of CKAN 2.9.6-2.9.11 needs Python >= 3.7).
        fix = ("; if no version of it fits this Python, override the pin (builder.pip.overrides) or patch "
               "CKAN's requirements (patches/ckan/)" if kind == "base" else "")
        return BuildFailure(kind, "%s: requirement %s is not available (not in any index or find-links)%s"
                            % (who, missing[0], fix), requirement=missing[0])
    wanted = re.findall(r"The user requested (?!\(constraint\))(.+)", out)
    installed = re.findall(r"The user requested \(constraint\) (.+)", out)
    if (wanted or installed or "ResolutionImpossible" in out) and kind == "base":
        # The base has installed nothing yet: the other side is builder.pip.constraints.
        return BuildFailure(kind, "%s: conflicting requirements: needs %s, but builder.pip.constraints ask for %s"
                            % (who, " and ".join(w.strip() for w in wanted) or "?",
                               " and ".join(i.strip() for i in installed) or "?"))
    if wanted or installed or "ResolutionImpossible" in out:
        return BuildFailure(kind, "%s: conflicting requirements: needs %s, but %s is already installed (by ckan or an "
                            "earlier extension); align the pins, or patch the other requirements.txt"
                            % (who, " and ".join(w.strip() for w in wanted) or "?",
                               " and ".join(i.strip() for i in installed) or "?"))
    errors = [l.strip() for l in out.splitlines() if l.strip().startswith("ERROR")]
    return BuildFailure(kind, "%s: pip install failed: %s" % (who, errors[-1] if errors else out.strip().splitlines()[-1:]))


def editable_style(python):
    """Every editable install of a build in one style: PEP 660 (`--use-pep517`) where pip has it
    (21.3+). Left to itself, pip makes a pyproject.toml project (CKAN 2.10+) a PEP 660 editable (a
    finder module) and a setup.py-only extension a `setup.py develop` egg-link; with `ckanext` a
    pkg_resources namespace in both, `import ckanext.<name>` then fails. A backend without PEP 660
    (setuptools < 64) makes pip fall back to `setup.py develop` for every project alike. Older pip
    (Python 2's 20.3) has only `setup.py develop`: one style already."""
    # pip's version without `pip --version`, which imports pip's CLI (0.4 s against 0.05 s).
    code, out = run([python, "-c", "import pip; print('pip ' + pip.__version__)"], cwd="/")
    m = re.search(r"pip (\d+)\.(\d+)", out)
    if code == 0 and m and (int(m.group(1)), int(m.group(2))) >= (21, 3):
        return ["--use-pep517"]
    return []


def installed_constraints(python, path):
    """Pins of everything installed so far (editables aside): an extension may add packages, but never
    silently replace a version that CKAN or an earlier extension asked for."""
    code, out = run([python, "-m", "pip", "freeze"], stdout_only=True)
    if code != 0:
        raise BuildFailure("install", "pip freeze failed")
    pins = [l for l in out.splitlines() if "==" in l and not l.startswith(("-e", "#", "$")) and " @ " not in l]
    with io.open(path, "w", encoding="utf-8") as f:
        f.write(u"\n".join(pins) + u"\n")
    return path


# Run by the release's python (pip 21.3+, Python 3): may the extensions' editable wheels be built in the
# venv itself (--no-build-isolation)? Yes only when an isolated build would run the very same backend:
# every extension's build requirements (pyproject.toml [build-system] requires, or pip's default
# setuptools>=40.8.0 and wheel), and the wheel that setuptools' get_requires_for_build_editable adds,
# are installed in the venv at the version that pip, with these find-links and no index, would install
# into the isolated environment (the highest that fits), and no setup_requires asks for more. Then it
# does in each tree what the isolated build did there besides building (egg_info, see below). Prints
# {"ok": bool, "reason" or "using": ...}.
BUILD_ENV_CHECK = r"""
import json, os, re, sys
try:
    import tomllib
except ImportError:
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
from pip._vendor.packaging.version import InvalidVersion, Version

args = json.loads(sys.argv[1])
SETUPTOOLS = ("setuptools.build_meta", "setuptools.build_meta:__legacy__")

def installed():
    got = {}
    try:
        from importlib import metadata
        for d in metadata.distributions():
            name = d.metadata["Name"]
            if name:
                got.setdefault(canonicalize_name(name), d.version)
    except ImportError:
        from pip._vendor import pkg_resources
        for d in pkg_resources.working_set:
            got.setdefault(canonicalize_name(d.project_name), d.version)
    return got

def offered(dirs):
    # name -> versions of the wheels and sdists in the find-links directories.
    got = {}
    for top in dirs:
        for f in os.listdir(top):
            m = re.match(r"(.+?)-(\d[^-]*?)(-.*\.whl|\.tar\.gz|\.zip|\.tar\.bz2)$", f)
            if not m:
                continue
            try:
                got.setdefault(canonicalize_name(m.group(1)), []).append(Version(m.group(2)))
            except InvalidVersion:
                pass
    return got

def build_requires(src):
    path = os.path.join(src, "pyproject.toml")
    system = None
    if os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                system = tomllib.load(f).get("build-system")
        except Exception as e:
            return None, None, "its pyproject.toml does not parse (%s)" % e
    if system is None:
        return ["setuptools>=40.8.0", "wheel"], SETUPTOOLS[1], None
    if "requires" not in system:
        return None, None, "its pyproject.toml has [build-system] without requires"
    if system.get("backend-path"):
        return None, None, "its build backend is in its own tree (backend-path)"
    backend = system.get("build-backend", SETUPTOOLS[1])
    if backend not in SETUPTOOLS:
        return None, None, "its build backend is %s, not setuptools" % backend
    return list(system["requires"]) + ["wheel"], backend, None

def check():
    have = installed()
    links = offered(args["find_links"])
    using = {}
    for src in args["sources"]:
        who = os.path.basename(src)
        for name in ("setup.py", "setup.cfg"):
            path = os.path.join(src, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    if b"setup_requires" in f.read():
                        return {"ok": False, "reason": "%s: its %s names setup_requires" % (who, name)}
        requires, backend, why = build_requires(src)
        if why:
            return {"ok": False, "reason": "%s: %s" % (who, why)}
        for line in requires:
            try:
                req = Requirement(line)
            except Exception:
                return {"ok": False, "reason": "%s: build requirement %r does not parse" % (who, line)}
            if req.marker is not None and not req.marker.evaluate():
                continue
            name = canonicalize_name(req.name)
            if req.extras or req.url:
                return {"ok": False, "reason": "%s: build requirement %s has extras or a URL" % (who, line)}
            if name not in have:
                return {"ok": False, "reason": "%s: build requirement %s is not installed in the venv" % (who, line)}
            version = Version(have[name])
            if not req.specifier.contains(version, prereleases=True):
                return {"ok": False, "reason": "%s: build requirement %s, the venv has %s %s"
                        % (who, line, req.name, version)}
            fits = [v for v in links.get(name, []) if req.specifier.contains(v)]
            if not fits or max(fits) != version:
                return {"ok": False, "reason": "%s: an isolated build would install %s %s from the find-links, "
                        "the venv has %s" % (who, req.name, max(fits) if fits else "(none)", version)}
            using[name] = str(version)
        backends[src] = backend
    return {"ok": True, "using": using}

def egg_info():
    # What an isolated build does in the source tree besides building: pip asks the backend for the
    # build's own requirements (get_requires_for_build_editable, by pip's vendored hook caller, a
    # subprocess per extension, as pip does), and setuptools answers by running egg_info, which writes
    # <name>.egg-info into the tree. Without isolation pip skips that call; the release keeps those files.
    try:
        from pip._vendor.pyproject_hooks import BuildBackendHookCaller as Caller
    except ImportError:
        from pip._vendor.pep517.wrappers import Pep517HookCaller as Caller
    import subprocess, threading
    failed = []
    def one(src):
        def runner(cmd, cwd=None, extra_environ=None):
            env = dict(os.environ)
            env.update(extra_environ or {})
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = proc.communicate()[0].decode("utf-8", "replace")
            answer["log"].append(out)
            if proc.returncode:
                raise RuntimeError((out.strip().splitlines() or ["exit code %d" % proc.returncode])[-1])
        try:
            Caller(src, backends[src], runner=runner).get_requires_for_build_editable()
        except Exception as e:
            failed.append("%s: its backend's get_requires_for_build_editable failed: %s" % (os.path.basename(src), e))
    threads = [threading.Thread(target=one, args=(src,)) for src in args["sources"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed

backends = {}
answer = check()
answer["log"] = []
if answer["ok"]:
    failed = egg_info()
    if failed:
        answer.update(ok=False, reason=failed[0])
print(json.dumps(answer))
"""


def build_isolation(spec, python, sources, meanwhile=None):
    """["--no-build-isolation"] when BUILD_ENV_CHECK says an isolated build would use the backend the
    venv already has (each isolated build costs two pip runs of its own), else [] (today's path). With
    an index, or pip options of one's own, what pip would put in the isolated environment is not
    knowable here: isolation stays. The build log says which path was taken and why. `meanwhile` (a
    callable) runs while the check does: it writes only into the extensions' trees."""
    why = None
    proc = None
    pip = spec["pip"]
    links = list(pip.get("find_links", [])) + [BUILDER_WHEELS]
    if pip.get("index_url"):
        why = "builder.pip.index_url is set (which backend version an isolated build gets is the index's)"
    elif pip.get("extra_args"):
        why = "builder.pip.extra_args are set"
    elif [l for l in links if "://" in l or not os.path.isdir(l)]:
        why = "a find-links entry is not a local directory"
    if why is None:
        proc = subprocess.Popen([python, "-c", BUILD_ENV_CHECK, json.dumps({"sources": sources, "find_links": links})],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    try:
        if meanwhile:
            meanwhile()
    finally:
        out, err = proc.communicate() if proc else (b"", b"")
    if why is None:
        try:
            answer = json.loads(out.decode("utf-8"))
        except ValueError:
            answer = {"ok": False, "reason": "the check failed: %s"
                      % (err.decode("utf-8", "replace").strip().splitlines()[-1:] or "no output")}
        for text in answer.get("log", []):
            log(text)
        if answer["ok"]:
            emit("info", message="install: editable wheels built in the venv (no build isolation): the venv has "
                 "the build requirements an isolated build would install (%s)"
                 % ", ".join("%s %s" % kv for kv in sorted(answer["using"].items())))
            return ["--no-build-isolation"]
        why = answer["reason"]
    emit("info", message="install: editable wheels built with build isolation: %s" % why)
    return []


def install_extensions(spec, python, release):
    """One pip run installs every extension: its requirements.txt and its source (editable), constrained
    to the versions installed in the base, so an extension may add packages but never replace one.
    Each pip run scans the whole venv (seconds for a big one), so one run instead of three per
    extension. When it fails, the extensions are installed one at a time, as one resolver run each,
    to name the one that fails (and the earlier extensions' pins then constrain the later ones)."""
    style = editable_style(python)
    pip = [python, "-m", "pip", "install"] + pip_args(spec) + style
    args = []
    used = {}
    sources = []
    for ext in spec["extensions"]:
        src = os.path.join(release, "src", ext["name"])
        used[ext["name"]] = requirement_files(ext, src)
        for name in used[ext["name"]]:
            args += ["-r", requirements_arg(spec, os.path.join(src, name))]
        args += ["-e", src]
        sources.append(src)
    constraints = []

    def freeze():
        constraints[:] = ["-c", installed_constraints(python, "/tmp/ckan-release-constraints.txt")]
    if not args:
        return used
    # Only where every editable install is a PEP 660 build (pip 21.3+): older pip runs setup.py develop.
    # pip freeze reads only the venv (the trees are not on its path yet): it runs beside the check.
    isolation = build_isolation(spec, python, sources, meanwhile=freeze) if style and sources else []
    if not constraints:
        freeze()
    if isolation:
        code, out = run(pip + isolation + constraints + args, cwd=release, env=pip_env(spec))
        if code == 0:
            return used
        log("installing the extensions without build isolation failed; installing them as before, isolated")
    code, out = run(pip + constraints + args, cwd=release, env=pip_env(spec))
    if code == 0:
        return used
    log("installing the extensions together failed; installing them one at a time to find the culprit")
    for ext in spec["extensions"]:
        src = os.path.join(release, "src", ext["name"])
        constraints = ["-c", installed_constraints(python, "/tmp/ckan-release-constraints.txt")]
        for name in used[ext["name"]]:
            code, one = run(pip + constraints + ["-r", requirements_arg(spec, os.path.join(src, name))],
                            cwd=src, env=pip_env(spec))
            if code != 0:
                raise pip_failure("install", "%s %s" % (ext["name"], name), one)
        code, one = run(pip + constraints + ["-e", src], cwd=src, env=pip_env(spec))
        if code != 0:
            raise pip_failure("install", ext["name"], one)
    # Together they failed, one at a time they did not (a combination no single extension causes):
    # the venv now holds every extension, installed as the one-at-a-time runs resolved them.
    log("the extensions installed one at a time; their combined install failed with: %s"
        % pip_failure("install", "extensions", out).message)
    return used


# ---------------------------------------------------------------------------------------------- base


def cmd_base(spec):
    base = spec["base"]
    code, _ = run(["/opt/ckan-release/bin/make-venv", base])
    if code != 0:
        raise BuildFailure("base", "making the virtualenv at %s failed" % base)
    src = os.path.join(base, "src", "ckan")
    os.makedirs(os.path.dirname(src))
    code, _ = run(["cp", "-a", spec["ckan_source"], src])
    if code != 0:
        raise BuildFailure("base", "copying CKAN's source into %s failed" % src)
    # Core patches before the install: a patch to CKAN's requirements.txt (or setup.py) is what installs.
    for patch in spec.get("patches", []):
        apply_patch(patch, src)
        log("applied %s" % patch["file"])
    pip = [os.path.join(base, "bin", "python"), "-m", "pip", "install"] + pip_args(spec)
    req = os.path.join(src, "requirements-py2.txt" if sys.version_info[0] == 2 else "requirements.txt")
    if not os.path.exists(req):
        req = os.path.join(src, "requirements.txt")
    args = ["-r", requirements_arg(spec, req)] if os.path.exists(req) else []
    # builder.extra_requirements (uwsgi, ...): resolved together with CKAN's pins.
    args += apply_overrides(spec, list(spec.get("extra_requirements", [])), _overrides_used)
    if args:
        code, out = run(pip + args, cwd=src, env=pip_env(spec))
        if code != 0:
            raise pip_failure("base", "ckan %s%s" % (os.path.basename(req), " and builder.extra_requirements"
                                                    if spec.get("extra_requirements") else ""), out)
    unused = [o for o in spec["pip"].get("overrides", []) if package_name(o) not in _overrides_used]
    if unused:
        log("builder.pip.overrides that no requirements line of ckan named: %s" % ", ".join(unused))
    code, out = run(pip + editable_style(pip[0]) + ["-e", src], cwd=src, env=pip_env(spec))
    if code != 0:
        raise pip_failure("base", "ckan", out)
    # The base's bytecode, made exactly as the release step would make it (fixed mtimes, sources named
    # <root>/current/...): releases copy it, so they compile only what they change or add.
    compile_tree(os.path.join(base, "bin", "python"), base, spec["current"], force=True)
    # Which files name the base path: the release step rewrites those and reads no other.
    named = []
    for path in walk(base):
        rel = os.path.relpath(path, base)
        if os.path.islink(path):
            if base in os.readlink(path):
                named.append(rel)
        elif os.path.isfile(path) and names_path(path, base.encode("utf-8")):
            named.append(rel)
    with io.open(BASE_PATHS, "w", encoding="utf-8") as f:
        f.write(json.dumps(named, sort_keys=True) + u"\n")
    log("base: %d files and links name %s" % (len(named), base))
    with io.open(BASE_FILES, "w", encoding="utf-8") as f:
        f.write(json.dumps(base_files(base, named), sort_keys=True) + u"\n")
    emit("done")


def base_files(base, named):
    """Every regular file of the base that does not name its path (those the clone rewrites):
    path -> [size, mode, sha256]. In the base image's layer, what a base copy is checked against."""
    listed = set(named)
    out = {}
    for entry in manifest(base, base)[0]:
        if entry["type"] == "file" and entry["path"] not in listed:
            out[entry["path"]] = [entry["size"], entry["mode"], entry["sha256"]]
    return out


# ------------------------------------------------------------------------------------------- release


def walk(top):
    """Every path under top (not top itself), sorted, without following symlinks."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in dirnames + filenames:
            out.append(os.path.join(dirpath, name))
    out.sort()
    return out


def fix_shebang(data, path):
    """After a rewrite, a #! line longer than the kernel accepts becomes pip's /bin/sh trampoline."""
    if not data.startswith(b"#!"):
        return data
    end = data.find(b"\n")
    line = data[:end] if end >= 0 else data
    if len(line) <= MAX_SHEBANG:
        return data
    interpreter = line[2:].strip()
    if b" " in interpreter:
        raise BuildFailure("clone", "%s: #! line too long and has arguments, cannot rewrite it" % path)
    trampoline = b"#!/bin/sh\n'''exec' \"" + interpreter + b"\" \"$0\" \"$@\"\n' '''\n"
    return trampoline + (data[end + 1:] if end >= 0 else b"")


def rewrite_paths(release, old, new, listed):
    """Replaces the base venv's path in the listed files and symlinks of the clone (the base step
    found them); bytecode that names it goes (its source changes, and is compiled again)."""
    old_b, new_b = old.encode("utf-8"), new.encode("utf-8")
    binaries = []
    changed = 0
    for rel in listed:
        path = os.path.join(release, rel)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if old in target:
                os.unlink(path)
                os.symlink(target.replace(old, new), path)
                changed += 1
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if rel.endswith((".pyc", ".pyo")):
            os.unlink(path)
            continue
        with open(path, "rb") as f:
            data = f.read()
        if old_b not in data:
            continue
        if b"\0" in data:
            binaries.append(rel)
            continue
        data = fix_shebang(data.replace(old_b, new_b), path)
        # A new file renamed over the old one: the clone's files may be hard links to the base copy,
        # which a write in place would change.
        tmp = path + ".ckan-release-rewrite"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.rename(tmp, path)
        changed += 1
    return changed, binaries


def names_path(path, needle):
    """Whether the file's bytes contain needle (read in 1 MB pieces)."""
    tail = b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle):]
    return False


# compileall file by file, each named by its path under <current>: `compileall -d` names every file of a
# subdirectory <current>/<file name> on Python 3.6 to 3.8 (fixed in 3.9), and Python 3.6's stops 10
# directory levels down.
COMPILE = r'''
import compileall, os, sys
top, current, force = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ok = True
for dirpath, dirnames, filenames in os.walk(top):
    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
    ddir = os.path.normpath(os.path.join(current, os.path.relpath(dirpath, top)))
    for name in sorted(filenames):
        if name.endswith(".py"):
            ok = compileall.compile_file(os.path.join(dirpath, name), ddir=ddir, force=force, quiet=1) and ok
sys.exit(0 if ok else 1)
'''


def compile_tree(python, top, current, force, shared=None):
    """Fixed mtimes, then compileall naming sources <current>/... (-d): the .pyc of an unchanged
    source is byte-identical from one release to the next (deltas). Without force, only bytecode whose
    header does not match its source's mtime is made: drop_stale_bytecode() first removes what a
    same-mtime header would hide. With shared (the inodes the tree shares with the base copy), only
    the regular files that are not shared and whose mtime differs are touched (a shared inode is
    the base's: its mtime is the base's, and a touch would change the base copy)."""
    if shared is None:
        run(["find", top, "-exec", "touch", "-h", "-d", "@%d" % FIXED_MTIME, "{}", "+"])
    else:
        for path in walk(top):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mtime != FIXED_MTIME and st.st_ino not in shared:
                os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    code, out = run([python, "-c", COMPILE, top, current, "1" if force else "0"])
    if code != 0:
        # Venvs hold files that are not valid for this Python (templates, py2-only tests): not fatal.
        log("compileall reported files it could not compile (see above); they stay uncompiled")


def bytecode_of(source):
    """The bytecode files this interpreter writes for a source: __pycache__/NAME.TAG[.opt-N].pyc on
    Python 3, NAME.pyc and NAME.pyo beside the source on Python 2 (which has no importlib.util and no
    sys.implementation)."""
    try:
        from importlib.util import cache_from_source
    except ImportError:
        return [source + "c", source + "o"]
    return [cache_from_source(source, optimization=opt) for opt in ("", 1, 2)]


def orphan_bytecode(dirpath, filenames):
    """The bytecode files in dirpath whose source is gone (Python 2's beside it, Python 3's in
    __pycache__, for this interpreter's cache tag): Python 2 would import them, sourceless."""
    tag = getattr(getattr(sys, "implementation", None), "cache_tag", None)
    out = []
    for name in filenames:
        parts = name.split(".")
        if len(parts) < 2 or parts[-1] not in ("pyc", "pyo"):
            continue
        if os.path.basename(dirpath) == "__pycache__":
            if tag is None or len(parts) < 3 or parts[-1] != "pyc":
                continue
            stem = parts[:-2] if parts[-2] == tag else parts[:-3] if parts[-3] == tag else None
            source_dir = os.path.dirname(dirpath)
        elif tag is None:
            stem, source_dir = parts[:-1], dirpath
        else:
            continue  # Python 3 ignores a .pyc beside its source
        if stem and not os.path.exists(os.path.join(source_dir, ".".join(stem) + ".py")):
            out.append(os.path.join(dirpath, name))
    return out


def drop_stale_bytecode(top):
    """Removes the bytecode of every source changed since the base was compiled (its mtime is no longer
    FIXED_MTIME: rewritten, patched, installed) and of sources that are gone. compileall alone would
    keep it once the mtimes are reset: Python 3.6's compileall (and Python 2's) compares only the mtime."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                if os.lstat(path).st_mtime != FIXED_MTIME:
                    for cached in bytecode_of(path):
                        if os.path.lexists(cached):
                            os.unlink(cached)
                            removed += 1
        for path in orphan_bytecode(dirpath, filenames):
            os.unlink(path)
            removed += 1
    return removed


def apply_patch(patch, target_dir):
    """patch -p1 in target_dir; a patch that does not apply names the patch, the file and the hunk."""
    args = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d", target_dir, "-i", patch["path"]]
    code, out = run(args + ["--dry-run"])
    if code != 0:
        current = None
        failures = []
        for line in out.splitlines():
            m = re.match(r"patching file (.+)", line) or re.match(r"checking file (.+)", line)
            if m:
                current = m.group(1).strip()
            m = re.match(r"Hunk #(\d+) FAILED at (\d+)", line)
            if m:
                failures.append("hunk #%s at line %s of %s" % (m.group(1), m.group(2), current))
            if "can't find file to patch" in line or "No file to patch" in line:
                failures.append("a file it patches does not exist")
            if "Reversed (or previously applied) patch detected" in line:
                failures.append("%s: already applied (reversed patch detected)" % current)
        raise BuildFailure("patch", "patch %s does not apply to %s: %s" % (
            patch["file"], patch["target"], "; ".join(failures) or out.strip().splitlines()[-1]),
            patch=patch["file"])
    code, out = run(args)
    if code != 0:
        raise BuildFailure("patch", "patch %s failed after a clean dry run: %s" % (patch["file"], out.strip()))


PLUGIN_CHECK = r'''
import json, sys
names = json.loads(sys.argv[1])
found = {}
try:
    from importlib.metadata import distributions
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == "ckan.plugins":
                found.setdefault(ep.name, (dist.metadata["Name"], ep.value))
    load = lambda name: [ep for d in distributions() for ep in d.entry_points
                         if ep.group == "ckan.plugins" and ep.name == name][0].load()
except ImportError:
    import pkg_resources
    for ep in pkg_resources.iter_entry_points("ckan.plugins"):
        found.setdefault(ep.name, (ep.dist.project_name, "%s:%s" % (ep.module_name, ".".join(ep.attrs))))
    load = lambda name: next(pkg_resources.iter_entry_points("ckan.plugins", name)).load()
result = {"plugins": dict((k, {"dist": v[0], "target": v[1]}) for k, v in found.items()), "errors": {}}
for name in names:
    if name in found:
        try:
            load(name)
        except Exception as e:
            result["errors"][name] = "%s: %s" % (type(e).__name__, e)
import ckan
result["ckan_version"] = getattr(ckan, "__version__", None)
result["python_version"] = "%d.%d.%d" % sys.version_info[:3]
import platform
result["python_implementation"] = platform.python_implementation().lower()
print(json.dumps(result))
'''


def elf_needed(path):
    """The DT_NEEDED sonames of an ELF file (None when it is not one), read from its .dynamic section
    and the string table that section links to: no ldd, objdump or readelf needed in the image."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF":
            return None
        bits64 = head[4:5] == b"\x02"
        end = "<" if head[5:6] == b"\x01" else ">"
        if bits64:
            shoff, = struct.unpack(end + "Q", head[40:48])
            shentsize, shnum = struct.unpack(end + "HH", head[58:62])
        else:
            shoff, = struct.unpack(end + "I", head[32:36])
            shentsize, shnum = struct.unpack(end + "HH", head[46:50])
        if not shoff or not shnum:
            return []
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = []
        for i in range(shnum):
            raw = table[i * shentsize:(i + 1) * shentsize]
            if bits64:
                _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack(end + "IIQQQQIIQQ", raw[:64])
            else:
                _, kind, _, _, offset, size, link, _, _, entsize = struct.unpack(end + "IIIIIIIIII", raw[:40])
            sections.append((kind, offset, size, link, entsize))
        needed = []
        for kind, offset, size, link, entsize in sections:
            if kind != 6 or link >= len(sections):  # SHT_DYNAMIC
                continue
            f.seek(sections[link][1])
            strings = f.read(sections[link][2])
            f.seek(offset)
            dynamic = f.read(size)
            step = 16 if bits64 else 8
            for at in range(0, len(dynamic) - step + 1, step):
                tag, value = struct.unpack(end + ("qQ" if bits64 else "iI"), dynamic[at:at + step])
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    name = strings[value:strings.find(b"\0", value)]
                    needed.append(name.decode("utf-8", "replace"))
        return needed


def needed_libraries(release, files):
    """Every shared library the release's ELF files need that the release does not bring itself
    (wheels' vendored .libs): what a host must have (checked before any change, at ship)."""
    needed, provided = set(), set()
    for entry in files:
        if entry["type"] != "file":
            continue
        name = os.path.basename(entry["path"])
        provided.add(name)
        # Only what can be loaded or run: shared objects by name, executables by mode (not opening
        # the other thousands of files: .py, .pyc, data).
        if ".so" not in name and not int(entry["mode"], 8) & 0o111:
            continue
        names = elf_needed(os.path.join(release, entry["path"]))
        if names:
            needed.update(names)
    return sorted(needed - provided)


def os_release():
    """ID and VERSION_ID of the builder's /etc/os-release: the hosts must run the same."""
    facts = {"id": None, "version_id": None}
    try:
        with io.open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key in ("ID", "VERSION_ID"):
                    facts[key.lower()] = value.strip().strip("\"'")
    except (IOError, OSError):
        pass
    return facts


def link_who_ini(release, version):
    """CKAN 2.7-2.9 read repoze.who's config from who.config_file, %(here)s/who.ini in their config
    template: beside the config, which is rendered into the release. CKAN ships it in its tree
    (ckan/config/who.ini; who.ini at the top before 2.9); the release gets a relative link to it.
    CKAN 2.10 dropped repoze.who (Flask-Login)."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    if not m or (int(m.group(1)), int(m.group(2))) > (2, 9):
        return None
    link = os.path.join(release, "who.ini")
    if os.path.lexists(link):
        return None
    for rel in (os.path.join("src", "ckan", "ckan", "config", "who.ini"), os.path.join("src", "ckan", "who.ini")):
        if os.path.isfile(os.path.join(release, rel)):
            os.symlink(rel, link)
            log("CKAN %s reads who.ini beside its config: linked who.ini -> %s" % (version, rel))
            return rel
    log("CKAN %s reads who.ini beside its config, but its tree has none (ckan/config/who.ini)" % version)
    return None


# How many base copies the volume keeps (the most recently used; one per base image).
BASE_COPIES_KEEP = 3


class BaseCopy(object):
    """A copy of the base venv in a Docker volume mounted at <root>/releases, the release's parent:
    the release is made of hard links to it (cp -al), not a copy of 286 MB. The base venv in the
    image's layer cannot be the source: overlayfs copies a lower layer's file up before it links it.

    A hard link shares the inode, so whatever writes into a release file in place writes into the
    base copy. The build writes nothing in place itself (rewrites go to a new file renamed over the
    link; touch and compile skip shared inodes), and proves that nothing else did: the ctime of every
    inode of the copy is recorded after the clone (the kernel moves it on any write, truncate, chmod
    or link count change; user space cannot set it); after the install, a file whose ctime moved is
    read again and compared with the base image's own list (BASE_FILES, in the image's layer, which no
    build can change). A copy with a changed file is removed; the next build makes it again from the
    image. The files proved unchanged are the ones the manifest need not read.

    One build at a time uses a volume (an exclusive lock); a build that died while using a copy
    leaves a mark that makes the next one replace it."""

    def __init__(self, releases, key, base):
        self.releases = releases
        self.top = os.path.join(releases, ".ckan-release-base")
        self.dir = os.path.join(self.top, key)
        self.venv = os.path.join(self.dir, "venv")
        self.base = base
        self.recorded = {}
        self.lock_file = None
        with io.open(BASE_FILES, encoding="utf-8") as f:
            self.files = json.load(f)

    def prepare(self):
        """Locks the volume, removes what crashed builds left, and makes sure the copy is whole."""
        import fcntl
        import shutil
        if not os.path.isdir(self.top):
            os.makedirs(self.top)
        self.lock_file = open(os.path.join(self.top, "lock"), "a")
        fcntl.flock(self.lock_file.fileno(), fcntl.LOCK_EX)
        for name in os.listdir(self.releases):
            if name != ".ckan-release-base":
                log("base copy volume: removing %s, left by an earlier build" % name)
                shutil.rmtree(os.path.join(self.releases, name))
        ok, dirty = os.path.join(self.dir, "ok"), os.path.join(self.dir, "dirty")
        reason = None
        if not os.path.exists(ok):
            reason = "none yet" if not os.path.exists(self.dir) else "unfinished"
        elif os.path.exists(dirty):
            reason = "an earlier build using it did not finish"
        else:
            reason = self.damaged_entry()
        if reason:
            log("base copy %s: making it (%s)" % (self.dir, reason))
            if os.path.exists(self.dir):
                shutil.rmtree(self.dir)
            os.makedirs(self.dir)
            code, _ = run(["cp", "-a", self.base, self.venv])
            if code != 0:
                raise BuildFailure("clone", "copying the base venv to %s failed" % self.venv)
            io.open(ok, "w").close()
        io.open(dirty, "w").close()
        self.prune()

    def damaged_entry(self):
        """A file of the list that is missing in the copy or differs in size or mode (a cheap lstat
        of each: what cannot go unseen between builds), or None."""
        for rel, (size, mode, _) in self.files.items():
            try:
                st = os.lstat(os.path.join(self.venv, rel))
            except OSError:
                return "%s is missing" % rel
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or "%04o" % stat.S_IMODE(st.st_mode) != mode:
                return "%s differs from the base image's" % rel
        return None

    def prune(self):
        import shutil
        others = []
        for name in os.listdir(self.top):
            path = os.path.join(self.top, name)
            if name == "lock" or path == self.dir:
                continue
            ok = os.path.join(path, "ok")
            others.append((os.path.getmtime(ok) if os.path.exists(ok) else 0, path))
        for _, path in sorted(others, reverse=True)[BASE_COPIES_KEEP - 1:]:
            log("base copy volume: removing %s (least recently used)" % path)
            shutil.rmtree(path)

    def record(self):
        """The inode and ctime of every listed file of the copy, after the clone and the rewrite.
        Returns once the clock has passed the newest recorded ctime by more than the file system's
        timestamp granularity (a second where ctimes are whole seconds, else the kernel's coarse
        clock tick), so that any later change moves a ctime."""
        latest, whole = 0, True
        for rel in self.files:
            st = os.lstat(os.path.join(self.venv, rel))
            self.recorded[rel] = (st.st_ino, st.st_ctime)
            latest = max(latest, st.st_ctime)
            whole = whole and st.st_ctime == int(st.st_ctime)
        wait = latest + (1.05 if whole else 0.02) - time.time()
        if wait > 0:
            time.sleep(wait)
        return set(ino for ino, _ in self.recorded.values())

    def check(self):
        """The inodes proved unchanged (inode -> (size, sha256)) and the files found changed."""
        known, changed = {}, []
        for rel, (size, mode, sha256) in self.files.items():
            path = os.path.join(self.venv, rel)
            try:
                st = os.lstat(path)
            except OSError:
                changed.append(rel)
                continue
            if (st.st_ino, st.st_ctime) != self.recorded.get(rel):
                # Moved: a link removed (pip replacing a file), or a write. The bytes say which.
                if (st.st_size != size or "%04o" % stat.S_IMODE(st.st_mode) != mode
                        or file_sha256(path) != sha256):
                    changed.append(rel)
                    continue
            known[st.st_ino] = (size, sha256)
        return known, changed

    def finish(self, changed):
        import shutil
        if changed:
            log("base copy %s: %d files changed during the build (%s): removed, the next build makes it again"
                % (self.dir, len(changed), ", ".join(sorted(changed)[:5])))
            shutil.rmtree(self.dir)
        else:
            os.unlink(os.path.join(self.dir, "dirty"))
            os.utime(os.path.join(self.dir, "ok"), None)
        self.lock_file.close()
        self.lock_file = None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cmd_release(spec):
    copy = None
    if spec.get("base_copies"):
        copy = BaseCopy(spec["base_copies"], spec["base_copy_key"], spec["base"])
    state = {"copy": copy, "changed": None}
    try:
        release_steps(spec, state)
    finally:
        # The release in the volume goes (the artifact is in /output); the copy is checked if the
        # build stopped before it was, and kept only if nothing changed it.
        if state["copy"] and state["copy"].lock_file:
            if os.path.lexists(spec["release"]):
                run(["rm", "-rf", spec["release"]])
            if state["changed"] is None:
                state["changed"] = state["copy"].check()[1]
            state["copy"].finish(state["changed"])


def release_steps(spec, state):
    base, release = spec["base"], spec["release"]
    python = os.path.join(release, "bin", "python")
    copy = state["copy"]

    emit("step", name="clone")
    shared = None
    if copy:
        copy.prepare()
    if os.path.exists(release):
        raise BuildFailure("clone", "%s already exists in the build container" % release)
    parent = os.path.dirname(release)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    if copy:
        code, _ = run(["cp", "-al", copy.venv, release])
        if code != 0:
            log("hard links from the base copy failed; copying the base venv instead")
            run(["rm", "-rf", release])
            copy.finish([])
            copy = state["copy"] = None
    if not copy:
        code, _ = run(["cp", "-a", base, release])
        if code != 0:
            raise BuildFailure("clone", "copying the base venv to %s failed" % release)
    with io.open(BASE_PATHS, encoding="utf-8") as f:
        listed = json.load(f)
    changed, binaries = rewrite_paths(release, base, release, listed)
    if binaries:
        raise BuildFailure("clone", "binary files name the base venv path %s and cannot be rewritten: %s"
                           % (base, ", ".join(binaries[:10])), files=binaries)
    log("rewrote the base venv path in %d files and links" % changed)
    if copy:
        shared = copy.record()
        log("cloned by hard links from %s (%d files shared)" % (copy.venv, len(shared)))

    emit("step", name="extensions")
    for ext in spec["extensions"]:
        dest = os.path.join(release, "src", ext["name"])
        code, _ = run(["cp", "-a", ext["path"], dest])
        if code != 0:
            raise BuildFailure("extensions", "copying %s into the release failed" % ext["name"])

    emit("step", name="patches")
    for patch in spec["patches"]:
        apply_patch(patch, os.path.join(release, "src", patch["target"]))
        log("applied %s" % patch["file"])

    emit("step", name="install")
    # The cached members of the last release's chunks are decompressed and checked meanwhile.
    prover = Prover(spec.get("pack_cache"))
    requirements_used = install_extensions(spec, python, release) or {}

    emit("step", name="compile")
    log("removed %d stale .pyc files" % drop_stale_bytecode(release))
    compile_tree(python, release, spec["current"], force=False, shared=shared)

    emit("step", name="verify")
    # pip check, pip freeze and the plugins' import only read the release: side by side (a second
    # each, one core each), judged in this order.
    declared = [p for ext in spec["extensions"] for p in ext["plugins"]]
    plugin_check = subprocess.Popen([python, "-c", PLUGIN_CHECK, json.dumps(declared)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd="/")
    (code, out), (freeze_code, freeze) = run_together([
        ([python, "-m", "pip", "check"], False),
        ([python, "-m", "pip", "freeze", "--all"], True)])
    out_plugins, err = plugin_check.communicate()
    if code != 0:
        lines = [l.strip() for l in out.splitlines() if l.strip() and not l.startswith("$")]
        raise BuildFailure("verify", "pip check: %s" % "; ".join(lines[:5]))
    if freeze_code != 0:
        raise BuildFailure("verify", "pip freeze failed")
    if plugin_check.returncode != 0:
        raise BuildFailure("verify", "the release's python cannot import ckan and its plugins: %s"
                           % err.decode("utf-8", "replace").strip().splitlines()[-1:])
    facts = json.loads(out_plugins.decode("utf-8"))
    for ext in spec["extensions"]:
        for name in ext["plugins"]:
            if name not in facts["plugins"]:
                raise BuildFailure("verify", "%s: plugin %s is not a ckan.plugins entry point of any installed package"
                                   % (ext["name"], name), plugin=name)
            if name in facts["errors"]:
                raise BuildFailure("verify", "%s: plugin %s does not load: %s" % (ext["name"], name, facts["errors"][name]),
                                   plugin=name)

    link_who_ini(release, facts["ckan_version"])
    freeze_lines = [l for l in freeze.splitlines() if l and not l.startswith("$ ")]
    release_json = dict(spec["release_json"])
    release_json["builder"]["python"] = {"version": facts["python_version"], "path": spec["python_path"]}
    release_json["ckan"]["version"] = facts["ckan_version"]
    with io.open(os.path.join(release, "RELEASE.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(release_json, indent=2, sort_keys=True, separators=(",", ": ")) + u"\n")
    run(["touch", "-h", "-d", "@%d" % FIXED_MTIME, os.path.join(release, "RELEASE.json"), release])

    emit("step", name="manifest")
    known = None
    if copy:
        known, state["changed"] = copy.check()
        log("base copy: %d shared files unchanged, %d changed" % (len(known), len(state["changed"])))
    files, offenders = manifest(release, base, known)
    if offenders:
        raise BuildFailure("verify", "files still name the base venv path %s: %s" % (base, ", ".join(offenders[:10])),
                           files=offenders)
    libraries = needed_libraries(release, files)
    log("shared libraries the release needs from the host: %s" % (", ".join(libraries) or "none"))
    out_dir = spec["output"]
    with io.open(os.path.join(out_dir, "files.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(files, sort_keys=True) + u"\n")

    emit("step", name="pack")
    archive = os.path.join(out_dir, "release.tar.gz")
    skip = None
    if "local_members" in spec:
        # The build machine assembles release.tar.gz: it gets only the members it does not hold.
        skip = set(spec["local_members"])
        archive = os.path.join(out_dir, "members.gz")
    stats = pack(release, files, archive, spec.get("pack_cache"), skip, prover.result())
    if spec.get("pack_cache"):
        try:
            PackCache(spec["pack_cache"]).remember(os.path.join(out_dir, "files.json"))
        except (IOError, OSError) as e:
            log("pack cache unusable, the next build checks its members at the pack: %s" % e)
    emit("info", message="pack: %d entries in %d chunks, %d compressed, %d from the cache%s, %.1f MB%s%s"
         % (len(files), stats["chunks"], stats["compressed"], stats["cached"],
            ", %d damaged cache entries replaced" % stats["damaged"] if stats["damaged"] else "",
            stats["bytes"] / 1e6,
            "; %d members sent, %d already on the build machine" % (stats["chunks"] - stats["skipped"],
                                                                  stats["skipped"]) if skip is not None else "",
            "; %d cached members checked during the install" % stats["proved"] if stats["proved"] else ""))
    emit("result", plugins=facts["plugins"], freeze=freeze_lines, python_version=facts["python_version"],
         ckan_version=facts["ckan_version"], archive_bytes=stats["bytes"], archive_sha256=stats["sha256"],
         archive_chunks=stats["members"], files=len(files), requirements=requirements_used,
         libraries=libraries, os_release=os_release(), python_implementation=facts["python_implementation"])


# ---------------------------------------------------------------------------------------------- pack

# release.tar.gz is the GNU tar stream that `tar --numeric-owner --owner=0 --group=0 --mtime=@FIXED_MTIME
# --no-recursion -T <files.json order>` writes (byte for byte), compressed as a sequence of gzip
# members, one per chunk of entries. A gzip file of several members is one valid gzip file (RFC 1952):
# gzip -d, tar -xz and Node's gunzip read it whole. The chunks are compressed in parallel (zlib
# releases the GIL), and a chunk whose bytes an earlier build already compressed is taken from the
# cache, so a warm build compresses only what changed. The cache names a chunk by its headers and its
# files' sizes and sha256 (from the manifest): a chunk found there reads none of its files.
PACK_LEVEL = 6
# GNU tar's record: the archive ends with two zero blocks, padded to a multiple of 20 blocks.
TAR_RECORD = 10240
# Chunk boundaries depend only on the paths and on the size since the chunk's start, so a change in
# one package changes only its own chunk(s) (and the one after, at most, until a boundary agrees
# again). A chunk may end before an entry whose first DEPTH path components differ from the
# previous entry's once it holds MINIMUM bytes (lib/python3.11/site-packages/<pkg>: depth 4); a
# large package is cut at depth 5 and then anywhere, so no chunk holds up the others for long.
CHUNK_CUTS = ((4, 1 << 20), (5, 4 << 20), (0, 16 << 20))
# The cache keeps at most this many bytes; the members least recently used go first, never one the
# current build used.
PACK_CACHE_CAP = 2 << 30
PACK_CACHE_KEY = ("ckan-release pack: gzip member of a tar chunk named by its pieces, zlib level %d, zlib %s\n"
                  % (PACK_LEVEL, getattr(zlib, "ZLIB_RUNTIME_VERSION", zlib.ZLIB_VERSION))).encode("ascii")


def fsencode(name):
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def tar_number(value, width):
    """A numeric header field as GNU tar writes it: zero-padded octal and a NUL."""
    text = "%0*o" % (width - 1, value)
    if len(text) > width - 1:
        raise BuildFailure("pack", "%d does not fit a tar header field" % value)
    return text.encode("ascii") + b"\0"


def tar_padding(size):
    return b"\0" * (-size % 512)


# The constant parts of a header: owner and group 0, and the magic with the empty user, group,
# device and prefix fields after it.
TAR_OWNER = b"0000000\0" * 2
TAR_TAIL = b"ustar  \0" + b"\0" * 247
# What the checksum adds besides the fields summed per header: its own field as 8 spaces, the tail.
TAR_CONSTANT_SUM = 8 * 32 + sum(bytearray(TAR_TAIL))


def tar_header(name, mode, size, typeflag, linkname=b"", mtime=FIXED_MTIME):
    """A GNU format header: numeric owner 0/0 and empty user and group names (--numeric-owner),
    names and link targets cut at 100 bytes (the whole one goes first in a ././@LongLink member).
    Joined from its fields, its checksum summed over the fields that vary: one per entry packed,
    and a warm build packs (and the prover reads) every entry's headers."""
    name, linkname = name[:100], linkname[:100]
    numbers = tar_number(mode, 8) + TAR_OWNER + tar_number(size, 12) + tar_number(mtime, 12)
    checksum = TAR_CONSTANT_SUM + sum(bytearray(name + numbers + typeflag + linkname))
    return b"".join((name, b"\0" * (100 - len(name)), numbers, ("%06o" % checksum).encode("ascii"), b"\0 ",
                     typeflag, linkname, b"\0" * (100 - len(linkname)), TAR_TAIL))


def tar_long(value, typeflag):
    data = value + b"\0"
    return tar_header(b"././@LongLink", 0o644, len(data), typeflag, mtime=0) + data + tar_padding(len(data))


def tar_pieces(entry):
    """The tar bytes of one files.json entry as pieces: raw bytes (its header(s) and padding) and, for
    a file, ("file", entry) standing for its content, whose size and sha256 the manifest gives. A chunk
    is named by its pieces, so a cached chunk is found without reading the files it holds."""
    name = fsencode("./" + entry["path"])
    mode = int(entry["mode"], 8)
    link = b""
    size = 0
    if entry["type"] == "dir":
        name += b"/"
        typeflag = b"5"
    elif entry["type"] == "symlink":
        link = fsencode(entry["target"])
        typeflag = b"2"
    else:
        typeflag = b"0"
        size = entry["size"]
    head = []
    if len(link) > 100:
        head.append(tar_long(link, b"K"))
    if len(name) > 100:
        head.append(tar_long(name, b"L"))
    head.append(tar_header(name, mode, size, typeflag, link))
    pieces = [b"".join(head)]
    if entry["type"] == "file":
        pieces += [("file", entry), tar_padding(size)]
    return pieces, sum(len(p) for p in pieces if isinstance(p, bytes)) + size


def tar_chunks(files):
    """The archive's tar stream as chunks of pieces, cut at path-stable boundaries; the end-of-archive
    zero blocks are a chunk of their own (they depend on the total size, which any change moves)."""
    parts, size, total, previous = [], 0, 0, None
    for entry in files:
        components = entry["path"].split("/")
        if parts:
            for depth, minimum in CHUNK_CUTS:
                if size >= minimum and (not depth or components[:depth] != previous[:depth]):
                    yield parts
                    parts, size = [], 0
                    break
        pieces, length = tar_pieces(entry)
        parts += pieces
        size += length
        total += length
        previous = components
    if parts:
        yield parts
    yield [b"\0" * (1024 + (-(total + 1024) % TAR_RECORD))]


def chunk_key(pieces):
    """The pack cache's name for a chunk: the sha256 of its raw pieces and of its files' sizes and
    content hashes (which fix their bytes), with the level and the zlib version."""
    h = hashlib.sha256(PACK_CACHE_KEY)
    for piece in pieces:
        if isinstance(piece, bytes):
            h.update(("r%d:" % len(piece)).encode("ascii"))
            h.update(piece)
        else:
            h.update(("f%d:%s" % (piece[1]["size"], piece[1]["sha256"])).encode("ascii"))
    return h.hexdigest()


def chunk_bytes(release, pieces):
    """A chunk's raw tar bytes, its files read from the release (each checked against its size and
    sha256: the archive holds exactly what the manifest says)."""
    out = []
    for piece in pieces:
        if isinstance(piece, bytes):
            out.append(piece)
            continue
        entry = piece[1]
        with open(os.path.join(release, entry["path"]), "rb") as f:
            data = f.read()
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BuildFailure("pack", "%s changed while the release was packed" % entry["path"])
        out.append(data)
    return b"".join(out)


def chunk_holds(raw, pieces):
    """Whether raw is the chunk the pieces describe: every raw piece byte for byte, every file's
    content of its size and sha256, nothing more."""
    at = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            if raw[at:at + len(piece)] != piece:
                return False
            at += len(piece)
        else:
            size = piece[1]["size"]
            if at + size > len(raw) or hashlib.sha256(raw[at:at + size]).hexdigest() != piece[1]["sha256"]:
                return False
            at += size
    return at == len(raw)


def gzip_member(raw):
    """raw as one gzip member (no name, mtime 0), level PACK_LEVEL."""
    c = zlib.compressobj(PACK_LEVEL, zlib.DEFLATED, 31)
    return c.compress(raw) + c.flush()


def stream_ended(d):
    """Whether the zlib decompressor d has seen the end of its stream. Python 2's has no eof: a copy
    of it is given one more byte, which lands in unused_data only after the end."""
    if hasattr(d, "eof"):
        return d.eof
    probe = d.copy()
    try:
        probe.decompress(b"\0")
    except zlib.error:
        return False
    return probe.unused_data == b"\0"


def member_content(data):
    """The content of data if it is exactly one whole gzip member, else None."""
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data)
    except zlib.error:
        return None
    return out if not d.unused_data and stream_ended(d) else None


def member_holds(data, raw):
    """Whether data is exactly one gzip member whose content is raw."""
    return member_content(data) == raw


class PackCache(object):
    """Compressed chunks in a directory (a Docker volume), named by the sha256 of the chunk's raw tar
    bytes, the level and the zlib version. Written atomically (temporary file + rename), checked by
    decompression on every use (during the install when prove() can guess the chunk, else at the
    pack), pruned to PACK_CACHE_CAP."""

    def __init__(self, top):
        self.dir = os.path.join(top, "gzip-members")
        # The files list of the release packed last with this cache: prove()'s guess at the next one.
        self.last_files = os.path.join(top, "last-release-files.json")
        self.used = set()
        self.lock = threading.Lock()
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir)

    def path(self, pieces):
        return self.path_of(chunk_key(pieces))

    def path_of(self, key):
        return os.path.join(self.dir, key + ".gz")

    def prove(self, files, stop=lambda: False):
        """Decompresses and checks, as get() does, the cached members of the chunks that `files` (a
        guess at the release to pack: the one packed last) would make; returns chunk key -> (bytes,
        sha256) of each member that holds its chunk. Run while the install runs, on the core pip
        leaves idle: the pack then trusts a member only under the key it was proved for (the key is
        the sha256 of the chunk's headers and its files' sizes and sha256, so an equal key is an equal
        chunk), and only with the bytes proved (their sha256), whatever the guess was worth. Stops
        early when stop() says so (the pack checks the rest itself, as it did before)."""
        proved = {}
        for pieces in tar_chunks(files):
            if stop():
                break
            key = chunk_key(pieces)
            try:
                with open(self.path_of(key), "rb") as f:
                    data = f.read()
            except (IOError, OSError):
                continue
            raw = member_content(data)
            if raw is not None and chunk_holds(raw, pieces):
                proved[key] = (len(data), hashlib.sha256(data).hexdigest())
        return proved

    def remember(self, files_json):
        """Keeps the files list just packed (a copy of files.json) as the next build's guess."""
        import shutil
        tmp = "%s.tmp-%d" % (self.last_files, os.getpid())
        try:
            shutil.copyfile(files_json, tmp)
            os.rename(tmp, self.last_files)
        except (IOError, OSError) as e:
            log("pack cache: cannot write %s: %s" % (self.last_files, e))

    def touch(self, path):
        with self.lock:
            self.used.add(path)
        try:
            os.utime(path, None)
        except OSError:
            pass

    def get(self, path, pieces):
        """The cached member for the chunk: (data, None), (None, "damaged") or (None, None) if absent.
        Never trusted for its name alone (a damaged or truncated file, a disk error, or code a build
        ran writing into the volume): it is decompressed and checked against the chunk's pieces."""
        with self.lock:
            self.used.add(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (IOError, OSError):
            return None, None
        raw = member_content(data)
        if raw is None or not chunk_holds(raw, pieces):
            return None, "damaged"
        try:
            os.utime(path, None)
        except OSError:
            pass
        return data, None

    def put(self, path, data):
        tmp = "%s.tmp-%d-%d" % (path, os.getpid(), threading.current_thread().ident)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        except (IOError, OSError) as e:
            log("pack cache: cannot write %s: %s" % (path, e))
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def prune(self):
        """Least recently used first, down to PACK_CACHE_CAP bytes; never this build's members.
        Temporary files of crashed builds go after an hour."""
        entries, total, now = [], 0, time.time()
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            try:
                st = os.stat(path)
                if ".tmp-" in name:
                    if now - st.st_mtime > 3600:
                        os.unlink(path)
                    continue
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
            total += st.st_size
        removed = 0
        for mtime, size, path in sorted(entries):
            if total <= PACK_CACHE_CAP:
                break
            if path in self.used:
                continue
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            removed += 1
        return removed, total


class Prover(object):
    """PackCache.prove() of the last release's chunks in a thread, started before the install (which
    runs in other processes) and stopped by the pack: what it has proved by then is not checked again;
    the pack checks the rest itself, on every core, as before (on a busy machine the thread may have
    done little). Never fails the build."""

    def __init__(self, cache_dir):
        self.proved = {}
        self.seconds = 0.0
        self.stopped = False
        self.thread = None
        if not cache_dir or not os.path.exists(os.path.join(cache_dir, "last-release-files.json")):
            return
        self.thread = threading.Thread(target=self.run, args=(cache_dir,))
        self.thread.daemon = True
        self.thread.start()

    def run(self, cache_dir):
        started = time.time()
        try:
            # pip is the build's critical path: this thread takes only what it leaves (Linux sets
            # a thread's nice value by its id; Python 3.8+ has the id).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            cache = PackCache(cache_dir)
            with io.open(cache.last_files, encoding="utf-8") as f:
                files = json.load(f)
            self.proved = cache.prove(files, lambda: self.stopped)
        except Exception as e:  # a guess gone wrong costs the pack its checks, nothing more
            log("pack cache: could not check the last release's members ahead: %s" % e)
            self.proved = {}
        self.seconds = time.time() - started

    def result(self):
        if self.thread is None:
            return {}
        self.stopped = True
        self.thread.join()
        log("pack cache: %d members of the last release's chunks checked during the install (%.1f s)"
            % (len(self.proved), self.seconds))
        return self.proved


def read_member(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (IOError, OSError):
        return None


def pack(release, files, archive, cache_dir, skip=None, proved=None):
    """Writes release.tar.gz; returns the counts for the log, its size and sha256. With skip (sha256s
    of members the build machine already holds), archive gets only the other members, in order: the
    size and member list are still the whole archive's, and so is the sha256 unless a member was not
    read (None then: the build machine hashes the archive it assembles from members it checks).
    proved (chunk key -> (bytes, sha256), Prover's) names the cached members already decompressed and
    checked against their chunks: the pack reads such a member only when it must send it, and checks
    that it is still the bytes proved."""
    cache = None
    proved = proved or {}
    if cache_dir:
        try:
            cache = PackCache(cache_dir)
        except (IOError, OSError) as e:
            log("pack cache unusable, compressing everything: %s" % e)
    stats = {"chunks": 0, "compressed": 0, "cached": 0, "damaged": 0, "skipped": 0, "proved": 0}

    def member(pieces):
        """(data or None when the build machine has it and it need not be read, how, size, sha256)."""
        key = chunk_key(pieces) if cache else None
        path = cache.path_of(key) if cache else None
        problem = None
        if key in proved:
            size, sha256 = proved[key]
            cache.touch(path)
            if skip and sha256 in skip:
                return None, "proved", size, sha256
            data = read_member(path)
            if data is not None and len(data) == size and hashlib.sha256(data).hexdigest() == sha256:
                return data, "proved", size, sha256
            problem = "damaged"  # changed since it was proved: compressed again below
        elif path:
            data, problem = cache.get(path, pieces)
            if data is not None:
                return data, "cached", len(data), hashlib.sha256(data).hexdigest()
        # Only a chunk that is not in the cache reads its files.
        data = gzip_member(chunk_bytes(release, pieces))
        if path:
            cache.put(path, data)
        return data, "damaged" if problem else "compressed", len(data), hashlib.sha256(data).hexdigest()

    workers = max(1, (os.cpu_count() if hasattr(os, "cpu_count") else 1) or 1)
    digest = [hashlib.sha256()]
    size = [0]
    # Each member's size and sha256, in order: the chunks a content-addressed store (S3) keeps.
    members = []

    with open(archive, "wb") as out:
        def write(result):
            data, how, length, sha256 = result
            if skip and sha256 in skip:
                stats["skipped"] += 1
            else:
                out.write(data)
            if data is None:
                digest[0] = None
            elif digest[0] is not None:
                digest[0].update(data)
            size[0] += length
            members.append({"bytes": length, "sha256": sha256})
            stats["chunks"] += 1
            stats[how] += 1
            if how == "damaged":
                stats["compressed"] += 1
            if how == "proved":  # from the cache, checked during the install
                stats["cached"] += 1

        try:
            from concurrent.futures import ThreadPoolExecutor
        except ImportError:  # Python 2.7: one chunk after the other
            for pieces in tar_chunks(files):
                write(member(pieces))
        else:
            import collections
            pool = ThreadPoolExecutor(workers)
            pending = collections.deque()
            try:
                # At most a few chunks in flight: memory stays a few MB per worker.
                for pieces in tar_chunks(files):
                    pending.append(pool.submit(member, pieces))
                    while len(pending) > 2 * workers:
                        write(pending.popleft().result())
                while pending:
                    write(pending.popleft().result())
            finally:
                pool.shutdown(wait=True)
    if cache:
        removed, kept = cache.prune()
        log("pack cache: %d members removed, %.1f MB kept" % (removed, kept / 1e6))
    stats["bytes"] = size[0]
    stats["sha256"] = digest[0].hexdigest() if digest[0] is not None else None
    stats["members"] = members
    return stats


def manifest(release, base, known=None):
    """Every entry under the release: path, type, mode, size, sha256, link target. Also finds any file
    that still names the base venv path (text or binary). known maps the inodes the release shares
    with an unchanged base copy to their sha256: those files are not read (the base step hashed them
    and found no mention of its path in them)."""
    base_b = base.encode("utf-8")
    files = []
    offenders = []
    known = known or {}
    for path in walk(release):
        rel = os.path.relpath(path, release)
        st = os.lstat(path)
        mode = "%04o" % stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if base in target:
                offenders.append(rel)
            files.append({"path": rel, "type": "symlink", "mode": mode, "size": 0, "sha256": None, "target": target})
        elif stat.S_ISDIR(st.st_mode):
            files.append({"path": rel, "type": "dir", "mode": mode, "size": 0, "sha256": None, "target": None})
        elif stat.S_ISREG(st.st_mode) and known.get(st.st_ino, (None,))[0] == st.st_size:
            files.append({"path": rel, "type": "file", "mode": mode, "size": st.st_size,
                          "sha256": known[st.st_ino][1], "target": None})
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            tail = b""
            found = False
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    if not found and base_b in tail + chunk:
                        found = True
                    tail = chunk[-len(base_b):]
            if found:
                offenders.append(rel)
            files.append({"path": rel, "type": "file", "mode": mode, "size": st.st_size, "sha256": h.hexdigest(),
                          "target": None})
        else:
            raise BuildFailure("verify", "%s is neither a file, a directory nor a symlink" % rel)
    return files, offenders


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("base", "release"):
        sys.stderr.write("usage: ckan_release_build.py base|release SPEC.json\n")
        return 2
    with io.open(sys.argv[2], encoding="utf-8") as f:
        spec = json.load(f)
    try:
        (cmd_base if sys.argv[1] == "base" else cmd_release)(spec)
    except BuildFailure as e:
        emit("error", kind=e.kind, message=e.message, details=e.details)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
