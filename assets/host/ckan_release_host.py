# -*- coding: utf-8 -*-
"""The part of ckan-release that runs on a CKAN host, over SSH.

Installed as <root>/.ckan-release/agent/<digest>.py and run with the release's interpreter, which may be
Python 2.7 or 3.6+ (CentOS 7): no f-strings, no pathlib, no subprocess.run.

Every command prints one JSON object on stdout and exits 0, or prints a JSON error object and exits 3
(a refused operation, with "kind" saying why). It never prints secrets: config content arrives on
stdin and is written, never echoed.

Layout (see README "Host layout"):
  <root>/releases/<ID>/               a release
  <root>/releases/.partial-<ID>-<op>/ a release being received (never a rollback target)
  <root>/current -> releases/<ID>     switched only by rename(2) of a new link over the old one
  <root>/shared/                      directories that outlive releases
  <root>/.ckan-release/ledger.jsonl   append-only history
  <root>/.ckan-release/lock/          held while an operation runs
"""
from __future__ import print_function

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import threading
import time
import zlib

try:
    import queue
except ImportError:  # Python 2
    import Queue as queue

ID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzZ-")


class Refused(Exception):
    def __init__(self, kind, message, **details):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.details = details


# In serve mode (see serve()), the answer of the command being served and its input: set per request.
SERVING = {"answer": None, "input": None}


def out(obj):
    if SERVING["input"] is not None:
        SERVING["answer"] = obj
        return
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def check_id(release_id):
    if not release_id or not set(release_id) <= ID_CHARS or len(release_id) > 64:
        raise Refused("bad-input", "not a release ID: %r" % release_id)
    return release_id


def paths(root):
    meta = os.path.join(root, ".ckan-release")
    for d in (os.path.join(root, "releases"), meta):
        # The agent may run as root: never follow a symlink planted where the layout has directories.
        if os.path.islink(d):
            raise Refused("bad-layout", "%s is a symlink; refusing to work through it" % d)
    return {
        "root": root,
        "releases": os.path.join(root, "releases"),
        "current": os.path.join(root, "current"),
        "shared": os.path.join(root, "shared"),
        "meta": meta,
        "ledger": os.path.join(meta, "ledger.jsonl"),
        "lock": os.path.join(meta, "lock"),
        # manifests/<ID>.json: the manifest of every release staged here, the delta's source of truth.
        "manifests": os.path.join(meta, "manifests"),
    }


def now_iso():
    """UTC, to the millisecond as the tool's own times (a ledger entry's `started`): an operation of
    less than a second must not end before it began."""
    now = time.time()
    return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)), int(now * 1000) % 1000)


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------ ledger


def ledger_read(p):
    entries = []
    try:
        with io.open(p["ledger"], encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    # A line cut short by a crash mid-append: ignore it, keep the rest.
                    continue
    except IOError as e:
        if e.errno != errno.ENOENT:
            raise
    return entries


def ledger_append(p, entries):
    """Appends whole lines with one write each and fsyncs: a crash loses at most the line being written."""
    fd = os.open(p["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for entry in entries:
            entry.setdefault("time", now_iso())
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def release_states(entries):
    """Each release's latest state, in order of first appearance."""
    states = {}
    order = []
    for e in entries:
        rid = e.get("release")
        if not rid:
            continue
        if rid not in states:
            order.append(rid)
        states[rid] = {"state": e["event"], "time": e.get("time")}
    return order, states


def verdicts(entries):
    """The last `healthy` and the last `bad` entry of each release, in ledger order: all the tool needs to
    decide the rollback target (src/plan.ts rollbackTarget), however long the ledger is."""
    last = {}
    for i, e in enumerate(entries):
        if e.get("event") in ("healthy", "bad") and e.get("release"):
            last[(e["release"], e["event"])] = i
    return [{"event": entries[i]["event"], "release": entries[i]["release"]} for i in sorted(last.values())]


# ------------------------------------------------------------------------------------------- facts


def read_current(p):
    try:
        target = os.readlink(p["current"])
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name if os.path.dirname(target.rstrip("/")) in ("releases", p["releases"]) else None


def list_releases(p):
    try:
        names = os.listdir(p["releases"])
    except OSError:
        return [], []
    releases = sorted(n for n in names if not n.startswith("."))
    partials = sorted(n for n in names if n.startswith((".partial-", ".prune-")))
    return releases, partials


# How long a lock directory just made may lack its owner file before it counts as its taker's death:
# the taker writes the file right after its mkdir (a few ms), and another operation that looks in
# between would otherwise say "locked by ?@?" of a lock whose owner it could have named.
LOCK_OWNER_WAIT = 1.0


def read_lock(p):
    waited = 0.0
    while True:
        try:
            with io.open(os.path.join(p["lock"], "owner.json"), encoding="utf-8") as f:
                return json.load(f)
        except (IOError, ValueError):
            try:
                st = os.stat(p["lock"])
            except OSError:
                return None
            if not stat.S_ISDIR(st.st_mode):
                return None
            if waited < LOCK_OWNER_WAIT and abs(time.time() - st.st_mtime) < 10:
                time.sleep(0.01)
                waited += 0.01
                continue
            # mkdir won but the owner file never came (the writer died): held, and expired after the
            # default TTL from the directory's mtime.
            return {"owner": "unknown", "expires": st.st_mtime + 3600, "since": None}


def os_release():
    """ID and VERSION_ID of /etc/os-release (the builder records its own in the manifest)."""
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


LIBRARY_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib", "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")


def missing_libraries(sonames):
    """Which of the sonames the dynamic linker would not find: not in ldconfig's cache
    (`ldconfig -p`) nor in the standard library directories."""
    if not sonames:
        return []
    cached = set()
    import subprocess
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            proc = subprocess.Popen([ldconfig, "-p"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            continue
        listing = proc.communicate()[0].decode("utf-8", "replace")
        if proc.returncode == 0:
            for line in listing.splitlines()[1:]:
                name = line.strip().split(" ", 1)[0]
                if name:
                    cached.add(name)
            break
    return [name for name in sonames if name not in cached
            and not any(os.path.exists(os.path.join(d, name)) for d in LIBRARY_DIRS)]


def python_implementation():
    """"cpython", "pypy"...: sys.implementation (3.3+) saves importing platform (9 ms) at every start."""
    impl = getattr(sys, "implementation", None)
    if impl is not None:
        return impl.name
    import platform
    return platform.python_implementation().lower()


def cmd_facts(args):
    p = paths(args["root"])
    entries = ledger_read(p)
    current = read_current(p)
    releases, partials = list_releases(p)
    order, states = release_states(entries)
    st = os.statvfs(args["root"]) if os.path.isdir(args["root"]) else None
    lock = read_lock(p)
    out({
        "python": {"path": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3],
                   "implementation": python_implementation()},
        "os": os_release(),
        # The libraries the artifact's ELF files need (args "libraries", from its manifest) that this
        # host lacks: the preflight refuses before any change.
        "missing_libraries": missing_libraries(args.get("libraries") or []),
        "layout": all(os.path.isdir(p[k]) for k in ("releases", "shared", "meta")),
        "current": current,
        # adopted: the link setup made to <root>/default (no manifest, no RELEASE.json, its own config).
        "releases": [dict(id=r, adopted=os.path.islink(os.path.join(p["releases"], r)),
                          **states.get(r, {"state": "unknown", "time": None})) for r in releases],
        "partials": partials,
        "lock": lock,
        "lock_expired": bool(lock and lock.get("expires") and lock["expires"] < time.time()),
        "disk_free": st.f_bavail * st.f_frsize if st else None,
        "ledger": entries[-200:],
        "verdicts": verdicts(entries),
        # What an interrupted operation may have left in .ckan-release/tmp (prune removes it).
        "tmp": sorted(os.listdir(os.path.join(p["meta"], "tmp"))) if os.path.isdir(os.path.join(p["meta"], "tmp")) else [],
        # For setup's plan: which of its directories exist, and whether there is an old venv to adopt.
        "existing": [d for d in args.get("dirs") or [] if os.path.isdir(d)],
        "default_python": os.path.isfile(os.path.join(p["root"], "default", "bin", "python")),
        "user": os.getuid(),
    })


# -------------------------------------------------------------------------------------------- setup


def cmd_setup(args):
    p = paths(args["root"])
    made = []
    for key in ("root", "releases", "shared", "meta"):
        if not os.path.isdir(p[key]):
            os.makedirs(p[key])
            made.append(p[key])
    for rel in args.get("shared", []):
        d = os.path.join(p["shared"], rel)
        if not os.path.isdir(d):
            os.makedirs(d)
            made.append(d)
    adopted = None
    default = os.path.join(p["root"], "default")
    if args.get("adopt") and read_current(p) is None and os.path.isfile(os.path.join(default, "bin", "python")):
        # The old playbooks' venv becomes the first release, in place: a symlink, because moving a venv
        # breaks the absolute paths inside it. It counts as healthy: it is what the site runs today.
        # One ID for every host the same `setup` adopts (the tool sends it), so the hosts agree on their
        # rollback target; without one (an older tool), the venv's mtime.
        adopted = args.get("adopt_id") and check_id(args["adopt_id"])
        if not adopted:
            adopted = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(os.stat(default).st_mtime)) + "-00000000"
        link = os.path.join(p["releases"], adopted)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..", "default"), link)
        tmp = os.path.join(p["root"], ".current-adopt-%d" % os.getpid())
        os.symlink(os.path.join("releases", adopted), tmp)
        os.rename(tmp, p["current"])
        ledger_append(p, [{"event": "adopted", "release": adopted, "from": default},
                          {"event": "activated", "release": adopted},
                          {"event": "healthy", "release": adopted}])
    out({"made": made, "adopted": adopted})


# --------------------------------------------------------------------------------------------- lock


def cmd_lock(args):
    p = paths(args["root"])
    owner = dict(args["owner"])
    owner["since"] = time.time()
    owner["expires"] = time.time() + args["ttl"]
    taken_over = None
    try:
        os.mkdir(p["lock"])
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
        held = read_lock(p)
        if held and held.get("token") == owner["token"]:
            pass  # our own lock: renew its expiry
        elif held and held.get("expires", 0) > time.time() and not (
                args.get("stale_token") and held.get("token") == args["stale_token"]):
            # (A caller on the holder's own machine may name the lock of a process that is gone.)
            raise Refused("locked", "locked by %s" % describe_owner(held), holder=held)
        else:
            # Expired: move it aside, then check that what we moved is the lock we judged expired;
            # another taker may have replaced it in between, and then it is theirs.
            stale = "%s.stale-%d-%d" % (p["lock"], os.getpid(), int(time.time()))
            try:
                os.rename(p["lock"], stale)
            except OSError:
                raise Refused("locked", "the lock changed hands while taking over an expired one", holder=held)
            moved = None
            try:
                with io.open(os.path.join(stale, "owner.json"), encoding="utf-8") as f:
                    moved = json.load(f)
            except (IOError, ValueError):
                pass
            if moved is not None and held is not None and moved.get("token") != held.get("token"):
                try:
                    os.rename(stale, p["lock"])
                except OSError:
                    pass
                raise Refused("locked", "locked by %s" % describe_owner(moved), holder=moved)
            shutil.rmtree(stale, ignore_errors=True)
            try:
                os.mkdir(p["lock"])
            except OSError as e2:
                if e2.errno != errno.EEXIST:
                    raise
                winner = read_lock(p)
                raise Refused("locked", "locked by %s" % describe_owner(winner or {}), holder=winner)
            taken_over = held
    tmp = os.path.join(p["lock"], ".owner.json.tmp")
    with io.open(tmp, "w", encoding="utf-8") as f:
        f.write(u"%s" % json.dumps(owner, sort_keys=True))
    os.rename(tmp, os.path.join(p["lock"], "owner.json"))
    out({"locked": True, "taken_over": taken_over})


def describe_owner(o):
    since = o.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "?"
    return "%s@%s (pid %s, %s, since %s)" % (o.get("user", "?"), o.get("machine", "?"), o.get("pid", "?"),
                                             o.get("operation", "?"), when)


def cmd_unlock(args):
    p = paths(args["root"])
    held = read_lock(p)
    if held is None:
        out({"unlocked": False, "holder": None})
        return
    if args.get("token") and held.get("token") != args["token"]:
        raise Refused("locked", "the lock is no longer ours: now held by %s" % describe_owner(held), holder=held)
    stale = "%s.gone-%d-%d" % (p["lock"], os.getpid(), int(time.time()))
    os.rename(p["lock"], stale)
    shutil.rmtree(stale, ignore_errors=True)
    out({"unlocked": True, "holder": held})


# ------------------------------------------------------------------------------------------ receive


def safe_member_path(name):
    """A tar member name as a clean relative path, or None if it tries to leave the release."""
    if name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if not name or name == ".":
        return ""
    if name.startswith("/") or "\\" in name or "\0" in name:
        return None
    # No empty, "." or ".." part (by substrings: a delta calls this for every entry of two manifests).
    padded = "/" + name + "/"
    if "//" in padded or "/./" in padded or "/../" in padded:
        return None
    return name


class CountingReader(object):
    """The archive as it arrives on stdin, counted and hashed to be checked against the manifest's."""

    def __init__(self, f):
        self.f = f
        self.bytes = 0
        self.sha256 = hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n) if n is not None and n >= 0 else self.f.read()
        self.bytes += len(data)
        self.sha256.update(data)
        return data

    def drain(self):
        while self.read(1 << 20):
            pass


class StdinFd(object):
    """Standard input without Python's buffered reader: a thread blocked in its read must not hold the
    reader's lock when the agent exits after a refusal (Python aborts on that at shutdown)."""

    def read(self, n=-1):
        if SERVING["input"] is not None:
            return SERVING["input"].read(n if n is not None and n >= 0 else 1 << 20)
        return os.read(0, n if n is not None and n >= 0 else 1 << 20)


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


class GunzipReader(object):
    """The uncompressed bytes of a gzip stream of one or more members, as `gzip -d` reads it (the build
    packs chunks in parallel, one member each), inflated in a second thread so that inflating overlaps
    with writing and hashing the files: zlib releases the GIL. A file object for tarfile's "r|" mode."""

    def __init__(self, raw):
        self.raw = raw
        self.chunks = queue.Queue(16)
        self.chunk = b""
        self.pos = 0
        self.done = False
        self.error = None
        self.thread = threading.Thread(target=self._inflate)
        self.thread.daemon = True
        self.thread.start()

    def _inflate(self):
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            fed = False
            while True:
                data = self.raw.read(1 << 20)
                if not data:
                    break
                while data:
                    # At most 1 MiB out per call: a hostile archive cannot balloon the queue.
                    out = d.decompress(data, 1 << 20)
                    fed = True
                    if out:
                        self.chunks.put(out)
                    # Input beyond the end of a member is the next member (or garbage: its header fails).
                    # Checked first: Python 2 leaves it in unconsumed_tail too.
                    if d.unused_data:
                        data = d.unused_data
                        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        fed = False
                    else:
                        data = d.unconsumed_tail
            if fed and not stream_ended(d):
                raise EOFError("the compressed stream ends inside a gzip member")
        except (zlib.error, EOFError, IOError, OSError) as e:
            self.error = e
        self.chunks.put(None)

    def read(self, n=-1):
        parts = []
        want = n if n is not None and n >= 0 else float("inf")
        while want > 0:
            if self.pos >= len(self.chunk):
                if self.done:
                    break
                chunk = self.chunks.get()
                if chunk is None:
                    self.done = True
                    if self.error is not None:
                        raise self.error
                    break
                self.chunk, self.pos = chunk, 0
            take = self.chunk[self.pos:self.pos + want] if want != float("inf") else self.chunk[self.pos:]
            self.pos += len(take)
            want -= len(take)
            parts.append(take)
        return b"".join(parts)

    def read_some(self, n):
        """Up to n bytes, waiting only until some are there (b"" at the end): a reader that checks
        what arrived must not wait for data the sender holds back until it has an answer."""
        while self.pos >= len(self.chunk):
            if self.done:
                return b""
            chunk = self.chunks.get()
            if chunk is None:
                self.done = True
                if self.error is not None:
                    raise self.error
                return b""
            self.chunk, self.pos = chunk, 0
        take = self.chunk[self.pos:self.pos + n]
        self.pos += len(take)
        return take


# ------------------------------------------------------------------------------------------ seals
# A release's seal, .ckan-release/manifests/<ID>.seal, records for every file the (inode, size, mtime,
# ctime, mode, uid, gid) it had when the agent last hashed it (or wrote it from hashed bytes). A later
# check that finds exactly that stat need not read the file again: any change through the file system
# (a write, truncate, chmod, chown, utime, rename over it, a new hard link) moves ctime, which no user
# process can set back. As git's index does for "racily clean" files, a file whose ctime is within
# SEAL_RACY_NS of the seal's own time is hashed anyway: a write in the same clock tick as the stat
# would leave ctime unchanged. README "Performance" says what this proves and what it does not.

SEAL_RACY_NS = 100 * 1000 * 1000


def _ns(st, name):
    v = getattr(st, name + "_ns", None)
    return v if v is not None else int(round(getattr(st, name) * 1e9))


if hasattr(os.stat_result, "st_mtime_ns"):
    def stat_key(st):
        # Without _ns's getattr: called for every file a delta links.
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid]
else:
    def stat_key(st):  # Python 2: float times only
        return [st.st_ino, st.st_size, int(round(st.st_mtime * 1e9)), int(round(st.st_ctime * 1e9)), st.st_mode,
                st.st_uid, st.st_gid]


def now_ns():
    return int(time.time() * 1e9)


class ParsedFiles(object):
    """The JSON files this agent process read or wrote (an operation's manifest and seal), parsed, each
    by its path and kept while the file's stat (device, inode, size, times, mode, owner) is the same: one
    session's delta, receive and finalize read the same manifest and seal, and each parse of a 29,000
    file manifest took 30 ms. What it gives is shared: callers never change it (they copy what they add
    to). A file this process did not write is kept only once its ctime is past the racy window (a
    rewrite in the same clock tick could keep its stat); one it wrote is kept as of that write (another
    write moves the ctime or, through a new file, the inode). These files are under the agent's own
    directory, which only root writes."""

    def __init__(self):
        self.files = {}  # path -> (identity, parsed or None, whether this process wrote it)

    @staticmethod
    def _identity(path):
        st = os.stat(path)
        return (st.st_dev,) + tuple(stat_key(st))

    def load(self, path):
        """json.load of the file at path (raises what opening or parsing raises)."""
        identity = self._identity(path)
        kept = self.files.get(path)
        if kept is not None and kept[0] == identity and kept[1] is not None:
            return kept[1]
        ours = kept is not None and kept[0] == identity and kept[2]
        with io.open(path, encoding="utf-8") as f:
            data = json.load(f)
        if self._identity(path) == identity and (ours or identity[4] < now_ns() - SEAL_RACY_NS):
            self.files[path] = (identity, data, ours)
        else:
            self.files.pop(path, None)
        return data

    def wrote(self, path, data=None):
        """Marks the file at path as just written by this process; data: what json.load would give back
        (None: parsed at the first load). Python 2 keeps no data: its json.load gives unicode where the
        data written may hold str."""
        self.files[path] = (self._identity(path), data if sys.version_info[0] >= 3 else None, True)


PARSED = ParsedFiles()


class Seal(object):
    def __init__(self, files=None, taken=0):
        self.files = files if files is not None else {}
        self.taken = taken

    def trusts(self, rel, st, key=None):
        """key: stat_key(st), when the caller has it already."""
        sealed = self.files.get(rel)
        return sealed is not None and sealed[3] < self.taken - SEAL_RACY_NS and sealed == (key or stat_key(st))

    def record(self, rel, st):
        self.files[rel] = stat_key(st)

    @staticmethod
    def load(path):
        """The seal at path; an empty one (trusting nothing) when it is missing or unreadable."""
        try:
            data = PARSED.load(path)
            if data.get("version") == 1 and isinstance(data["files"], dict):
                # Its own dict: the caller may record more (PARSED keeps what the file says).
                return Seal(dict(data["files"]), int(data["taken"]))  # JSON arrays: lists already
        except (IOError, OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return Seal()

    def save(self, path):
        """Written with the time taken now, after every stat it records was taken."""
        self.taken = now_ns()
        tmp = "%s.tmp-%d" % (path, os.getpid())
        data = {"version": 1, "taken": self.taken, "files": self.files}
        with io.open(tmp, "w", encoding="utf-8") as f:
            f.write(u"%s" % json.dumps(data))
        os.rename(tmp, path)
        PARSED.wrote(path, dict(data, files=dict(self.files)))


def seal_path(p, rid):
    return os.path.join(p["manifests"], "%s.seal" % rid)


# A release's tree seal, manifests/<ID>.tree: the sha256 of GNU find's listing of every entry's stat
# (type, inode, size, mtime, ctime, mode, owner; the config file and shared links aside), taken after a
# verification found every file as its seal or its hash says. The next check of an unchanged release is
# then one GNU `find` (a rollback on a fleet: no file read, no manifest sent). Any difference, or no GNU
# find, falls back to the per-file seal.

def tree_seal_path(p, rid):
    return os.path.join(p["manifests"], "%s.tree" % rid)


def find_pattern(path):
    """path as a GNU find -path pattern that matches only itself (fnmatch's special characters escaped)."""
    return re.sub(r"([\\*?\[])", r"\\\1", path)


def find_tree(release, exclude):
    """GNU find's listing of every entry under release, as b"path\0type inode size mtime ctime mode uid
    gid\0" in the order it walked them, the exclude paths left out (not what is under them); None without
    GNU find. C speed: a Python walk with lstat takes three times as long."""
    import subprocess
    import tempfile
    top = release.rstrip("/") or "/"
    skip = []
    for rel in sorted(exclude):
        if not isinstance(rel, str):  # Python 2's unicode from JSON: find's arguments are bytes there
            rel = rel.encode("utf-8")
        skip += (["-o"] if skip else []) + exclude_test(top + "/" + rel)
    expr = (["("] + skip + [")", "-o"] if skip else []) + ["-printf", "%P\\0%y %i %s %T@ %C@ %m %U %G\\0"]
    try:
        # Into an unlinked file, read once find is done: through a pipe, each 4 kB find writes wakes
        # this process (10 ms more for 29,000 entries).
        with tempfile.TemporaryFile() as listing:
            with open(os.devnull, "wb") as null:
                returncode = subprocess.call(["find", top, "-mindepth", "1"] + expr, stdout=listing, stderr=null)
            listing.seek(0)
            data = listing.read()
    except (IOError, OSError):
        return None
    if returncode != 0 or data.count(b"\0") % 2 != 0 or (data and not data.endswith(b"\0")):
        return None
    return data


def exclude_test(path):
    """find's test that is true for the entry at path alone: -samefile (an inode compared) where that
    names only it: a directory, or a file or symlink no other name links (find opens a file it names,
    so never a FIFO or a device); "-false" where nothing is (nothing to leave out); else -path (an
    fnmatch of every entry's path: 25 ms per path for 29,000 entries)."""
    try:
        st = os.lstat(path)
    except OSError:
        return ["-false"]
    if stat.S_ISDIR(st.st_mode) or ((stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and st.st_nlink == 1):
        return ["-samefile", path]
    return ["-path", find_pattern(path)]


# find's %y letters as the file type bits of st_mode.
FIND_TYPES = {b"f": stat.S_IFREG, b"d": stat.S_IFDIR, b"l": stat.S_IFLNK, b"p": stat.S_IFIFO, b"s": stat.S_IFSOCK,
              b"c": stat.S_IFCHR, b"b": stat.S_IFBLK}

if sys.version_info[0] >= 3:
    def fs_name(raw):
        return raw.decode("utf-8", "surrogateescape")  # as os.walk names them

    def find_time(text):
        return find_ns(text)
else:
    def fs_name(raw):
        try:
            return raw.decode("utf-8")  # as os.walk of a unicode path names them
        except UnicodeDecodeError:
            return raw

    def find_time(text):
        # stat_key's nanoseconds on Python 2: its float time (sec + 1e-9 * nsec, as posixmodule makes
        # it), rounded, so that a stat found here and one Python took of the same entry are equal.
        ns = find_ns(text)
        return int(round((ns // 1000000000 + 1e-9 * (ns % 1000000000)) * 1e9))


def tree_stats(release, exclude):
    """{path: stat_key of the entry} for every entry under release, the exclude paths left out (not what
    is under them), and find_tree's listing they came from: from one GNU find (C speed; the listing
    then seals the tree as verified, see save_tree_seal), else from a Python walk (listing None)."""
    listing = find_tree(release, exclude)
    stats = {}
    if listing is not None:
        parts = listing.split(b"\0")
        types = FIND_TYPES
        for name, line in zip(parts[0:-1:2], parts[1:-1:2]):
            f = line.split(b" ")
            stats[fs_name(name)] = [int(f[1]), int(f[2]), find_time(f[3]), find_time(f[4]),
                                    types.get(f[0], 0) | int(f[5], 8), int(f[6]), int(f[7])]
        return stats, listing
    skip = set(exclude)
    release = release.rstrip("/")
    prefix = release + "/"
    for dirpath, dirnames, filenames in os.walk(release):
        rel_dir = (dirpath + "/")[len(prefix):]
        for name in dirnames + filenames:
            rel = rel_dir + name
            if rel not in skip:
                try:
                    stats[rel] = stat_key(os.lstat(dirpath + "/" + name))
                except OSError:
                    pass  # gone since the walk listed it: missing, as it is now
    return stats, None


def find_ns(text):
    """find's %T@ (b"946684800.0000000000") in nanoseconds."""
    if text[-11:-10] == b".":  # GNU find 4.x: ten digits, the last 0 (one slice and one int: 60,000 a check)
        return int(text[:-11] + text[-10:-1])
    sec, _, frac = text.partition(b".")
    return int(sec) * 1000000000 + int((frac + b"000000000")[:9])


def tree_digest(listing):
    """The sha256 of find_tree's listing as it came: the same walk of an unchanged tree lists it the same
    (each directory's entries in the order the filesystem keeps them); a walk that lists anything
    differently, in another order too, only costs the check by the per-file seal."""
    return hashlib.sha256(listing).hexdigest()


def racy_entries(stats, taken):
    """The entries of tree_stats's stats, other than directories, whose ctime lies within SEAL_RACY_NS of
    `taken` (or after it): one written again in the same clock tick would list the same. A directory's
    content is listed itself (its entries' names and stats), so its own line need not tell a change."""
    return [rel for rel, key in stats.items() if key[3] >= taken - SEAL_RACY_NS and not stat.S_ISDIR(key[4])]


def recheck_racy(release, racy, stats, entries):
    """Whether each racy entry (see racy_entries) still is as listed and as its manifest entry says, read
    once its racy window has passed: any write after the listing then either came in the same tick (and
    this reads its bytes) or moved the ctime (and the stat differs). As git's index does for racily
    clean files."""
    wait = max(stats[rel][3] for rel in racy) + SEAL_RACY_NS + 1000000 - now_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    for rel in racy:
        path = release + "/" + rel
        e = entries.get(rel)
        try:
            if e is None or stat_key(os.lstat(path)) != stats[rel]:
                return False
            if e["type"] == "file" and file_sha256(path) == e["sha256"]:
                continue
            if e["type"] == "symlink" and os.readlink(path) == e["target"]:
                continue
        except (IOError, OSError):
            pass
        return False
    return True


# More racy entries than this and a new listing (once they are past their window) costs less than
# reading each again.
RECHECK_RACY_MAX = 200


def save_tree_seal(p, rid, release, manifest_sha256, checked, exclude, listed=None):
    """Records the tree seal of a release just verified (checked: each file's stat as the verification
    found it). listed: verify_tree's (listing, stats, when taken, manifest entries) that the check went
    by, given when nothing here changed since: the seal is that listing, its racy entries read again
    once past their window (a receive has just written the last files; with more than a few, a new
    listing instead, once past it). Either must show every file as checked. False when a file differs
    (changed since) or an entry changed too recently to be sure (waits that out once)."""
    path = tree_seal_path(p, rid)
    if os.path.exists(path):
        os.unlink(path)
    release = release.rstrip("/")
    if listed is not None:
        listing, stats, start, entries = listed
        racy = racy_entries(stats, start)
        if len(racy) <= RECHECK_RACY_MAX:
            return files_as_checked(stats, checked) and (not racy or recheck_racy(release, racy, stats, entries)) \
                and write_tree_seal(path, listing, manifest_sha256, exclude)
    for attempt in (1, 2):
        start = now_ns()
        stats, listing = tree_stats(release, exclude)
        if listing is None or not files_as_checked(stats, checked):
            return False
        racy = racy_entries(stats, start)
        if not racy:
            return write_tree_seal(path, listing, manifest_sha256, exclude)
        if attempt == 1:
            time.sleep(max(0, max(stats[rel][3] for rel in racy) + SEAL_RACY_NS - now_ns()) / 1e9 + 0.01)
    return False


def files_as_checked(stats, checked):
    """Whether every regular file of tree_stats's stats has the stat the check recorded for it."""
    files = checked.files
    return all(files.get(rel) == key for rel, key in stats.items() if stat.S_ISREG(key[4]))


def write_tree_seal(path, listing, manifest_sha256, exclude):
    with io.open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(u"%s" % json.dumps({"version": 2, "digest": tree_digest(listing),
                                    "manifest_sha256": manifest_sha256, "exclude": sorted(exclude)}))
    os.rename(path + ".tmp", path)
    return True


def tree_unchanged(p, rid, release, manifest_sha256, exclude):
    """Whether the release is exactly as its tree seal recorded it (for the manifest with that sha256)."""
    try:
        with io.open(tree_seal_path(p, rid), encoding="utf-8") as f:
            t = json.load(f)
    except (IOError, OSError, ValueError):
        return False
    if t.get("version") != 2 or t.get("manifest_sha256") != manifest_sha256 or t.get("exclude") != sorted(exclude):
        return False
    listing = find_tree(release, exclude)
    return listing is not None and tree_digest(listing) == t.get("digest")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def op_seal_path(p, op):
    """The stats of the files this operation wrote (delta copies, received files), for finalize."""
    return os.path.join(p["meta"], "tmp", "%s-seal.json" % op)


def owner_ids(args):
    """(uid, gid) for os.chown from the owner/group arguments; -1 leaves one as it is."""
    uid, gid = lookup_ids(args.get("owner"), args.get("group"))
    return (uid if uid is not None else -1), gid


def give(path, ids, mode, mtime):
    """A new, closed file's owner, mode and mtime, in this order (chown clears set-id bits); returns
    its stat for the seal. The build fixed every mtime, and a .pyc header records its source's: keep
    them equal or Python would find all bytecode stale and recompile (and write) inside the release."""
    if ids != (-1, -1):
        os.chown(path, ids[0], ids[1])
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))
    return os.lstat(path)


def check_member(name, kind, linkname, entries, seen, manifest_entries, dirs_ok):
    """The one check of an archive member against the manifest, made before anything of it is written,
    by the Python unpacker and by the GNU tar filter alike. kind: "dir", "symlink", "file" or "other".
    Returns (rel, entry); ("", None) for the archive's root entry. Never through a symlink: every
    directory above the member must be one the manifest says is a directory (or none it names at all:
    then only this receive can have made it, as a directory)."""
    rel = safe_member_path(name)
    if rel is None:
        raise Refused("bad-artifact", "archive entry %r points outside the release" % name)
    if rel == "":
        return "", None
    entry = entries.get(rel)
    if entry is None:
        raise Refused("bad-artifact", "archive entry %s is not in the manifest" % rel)
    if rel in seen:
        raise Refused("bad-artifact", "archive entry %s appears twice" % rel)
    seen.add(rel)
    parent = rel.rpartition("/")[0]
    if parent and parent not in dirs_ok:
        up = parent
        while up:
            e = manifest_entries.get(up)
            if e is not None and e["type"] != "dir":
                raise Refused("bad-artifact", "archive entry %s would be written through a symlink" % rel)
            up = up.rpartition("/")[0]
        dirs_ok.add(parent)
    if kind == "dir":
        if entry["type"] != "dir":
            raise Refused("bad-artifact", "%s: the archive has a directory, the manifest a %s" % (rel, entry["type"]))
    elif kind == "symlink":
        if entry["type"] != "symlink" or linkname != entry["target"]:
            raise Refused("bad-artifact", "%s: symlink target '%s' differs from the manifest's '%s'"
                          % (rel, linkname, entry.get("target")))
    elif kind == "file":
        if entry["type"] != "file":
            raise Refused("bad-artifact", "%s: the archive has a file, the manifest a %s" % (rel, entry["type"]))
    else:
        raise Refused("bad-artifact", "archive entry %s is a device, fifo or hard link: refused" % rel)
    return rel, entry


def member_kind(member):
    return "dir" if member.isdir() else "symlink" if member.issym() else "file" if member.isreg() else "other"


def gnu_tar():
    """Whether `tar` on PATH is GNU tar (the fast receive writes through it; any other: Python's)."""
    import subprocess
    try:
        proc = subprocess.Popen(["tar", "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return b"GNU tar" in proc.communicate()[0]
    except OSError:
        return False


def cmd_receive(args):
    out(receive(args, StdinFd()))


def receive(args, raw):
    """raw: release.tar.gz (stdin, or the chunks `fetch` downloaded). Unpacks into a hidden partial
    directory, checking every member against the manifest BEFORE writing it, then checks that every
    manifest entry arrived intact.

    With "delta": the partial already exists (made by the delta command, which wrote the list of files
    it could not take from an earlier release); the archive must hold exactly those files.
    With "heal": the files a verification could not heal from the host's own releases (its list in
    tmp/<op>-heal.json), each received into a private directory, then renamed over the wrong file of the
    release (never written through it)."""
    p = paths(args["root"])
    rid = check_id(args["id"])
    partial = os.path.join(p["releases"], ".partial-%s-%s" % (rid, args["op"]))
    manifest = PARSED.load(args["manifest"])
    if manifest.get("id") != rid:
        raise Refused("bad-artifact", "manifest is for %s, not %s" % (manifest.get("id"), rid))
    manifest_entries = entries = dict((e["path"], e) for e in manifest["files"])
    expected = set(entries)
    delta = args.get("delta")
    heal = args.get("heal")
    release = None
    if heal:
        release = os.path.join(p["releases"], rid)
        with io.open(heal_need_file(p, args["op"]), encoding="utf-8") as f:
            need = json.load(f)
        if need.get("release") != rid or os.path.islink(release) or not os.path.isdir(release):
            raise Refused("bad-input", "no heal of releases/%s was asked for by operation %s" % (rid, args["op"]))
        expected = set(need["need"])
        entries = dict((k, v) for k, v in entries.items() if k in expected and v["type"] == "file")
        partial = os.path.join(p["meta"], "tmp", "%s-heal" % args["op"])
        if os.path.lexists(partial):
            shutil.rmtree(partial)
        os.mkdir(partial, 0o700)
    elif delta:
        if not os.path.isdir(partial) or os.path.islink(partial):
            raise Refused("bad-input", "no delta partial directory %s" % partial)
        with io.open(delta_need_file(p, args["op"]), encoding="utf-8") as f:
            expected = set(json.load(f)["need"])
        entries = dict((k, v) for k, v in entries.items() if k in expected)
    else:
        if os.path.exists(partial):
            shutil.rmtree(partial)
        os.makedirs(partial)
        # Only the agent's user may enter it until finalize: nobody changes a file between its write
        # and its seal.
        os.chmod(partial, 0o700)
    ids = owner_ids(args)
    # The stats of what this operation wrote: finalize need not hash these files again (see Seal).
    seal = Seal.load(op_seal_path(p, args["op"])) if delta else Seal()
    # The whole archive is checked byte for byte below: gzip's stream reader may stop quietly where a cut
    # archive ends. A delta archive is checked against the bytes and sha256 the sender gave for it.
    want = (delta or heal or manifest.get("archive")) or {}
    stdin = CountingReader(raw)
    gunzip = GunzipReader(stdin)
    tar_proc = []
    try:
        if not delta and not heal and args.get("unpack") != "python" and gnu_tar():
            seen, dir_mtimes = unpack_with_tar(partial, gunzip, entries, manifest_entries, ids, seal, tar_proc)
        else:
            seen, dir_mtimes = unpack_with_python(partial, gunzip, entries, manifest_entries, ids, seal,
                                                  heal is not None)
        while gunzip.read(1 << 20):
            pass
        stdin.drain()
    except (tarfile.TarError, EOFError, IOError, OSError, zlib.error) as e:
        if isinstance(e, Refused):
            raise
        if no_space(e):
            raise Refused("no-space", "no space left on the host under %s while unpacking the release: %s"
                          % (args["root"], e))
        if isinstance(e, EOFError) and gunzip.done and "bytes" in want:
            raise Refused("bad-artifact", "the archive is damaged or truncated: %d bytes arrived, expected %d (%s)"
                          % (stdin.bytes, want["bytes"], e))
        raise Refused("bad-artifact", "the archive is damaged or truncated: %s" % e)
    finally:
        for proc in tar_proc:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if "bytes" in want and (stdin.bytes != want["bytes"] or stdin.sha256.hexdigest() != want.get("sha256")):
        raise Refused("bad-artifact", "the archive is damaged or truncated: %d bytes arrived (sha256 %s), expected "
                      "%d (sha256 %s)" % (stdin.bytes, stdin.sha256.hexdigest(), want["bytes"], want.get("sha256")))
    missing = sorted(expected - seen)
    if missing:
        raise Refused("bad-artifact", "%d manifest entries are missing from the archive, e.g. %s" % (len(missing), missing[0]))
    if heal:
        healed = heal_received(p, rid, release, partial, sorted(seen), seal)
        return {"release": release, "healed": healed}
    linked = 0
    if not delta and args.get("link") == "hardlink":
        linked = link_kept(p, rid, partial, manifest, seal, ids)
    seal.save(op_seal_path(p, args["op"]))
    if delta:
        finish_dirs(partial, manifest, float(delta["mtime"]))
    else:
        finish_dirs(partial, manifest, None, dir_mtimes)
    return {"partial": partial, "entries": len(seen), "linked": linked}


def flat_name(rel):
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()[:32]


def heal_received(p, rid, release, staging, rels, received):
    """Renames each received file (staging/<flat_name>) over its path in the release and seals it there
    (received: the stats they were written with, from bytes that had their sha256)."""
    seal = Seal.load(seal_path(p, rid))
    healed = []
    times = {}
    for rel in rels:
        tmp = os.path.join(staging, flat_name(rel))
        if not heal_into(release, rel, tmp, times):
            raise Refused("bad-artifact", "releases/%s/%s cannot be healed: its directory is not a real one "
                          "inside the release" % (rid, rel))
        st = os.lstat(os.path.join(release, rel))
        if rel in received.files:
            seal.record(rel, st)
        healed.append(rel)
    restore_dir_times(times)
    shutil.rmtree(staging, ignore_errors=True)
    seal.save(seal_path(p, rid))
    return healed


def unpack_with_python(partial, gunzip, entries, manifest_entries, ids, seal, flat=False):
    """The archive unpacked member by member with tarfile (where there is no GNU tar, for deltas and
    heals): each member checked (check_member) before it is written, each file hashed as written.
    flat: files land as partial/<flat_name(path)> (a heal's private directory).
    Returns (paths seen, directory mtimes)."""
    seen = set()
    dirs_ok = set()
    dir_mtimes = {}
    real_partial = os.path.realpath(partial)
    real_parents = {}
    tar = tarfile.open(fileobj=gunzip, mode="r|")
    for member in tar:
        kind = member_kind(member)
        rel, entry = check_member(member.name, kind, member.linkname, entries, seen, manifest_entries, dirs_ok)
        if rel == "":
            continue
        dest = os.path.join(partial, flat_name(rel) if flat else rel)
        parent = os.path.dirname(dest)
        # And on the disk (a delta's partial holds what the delta made): every parent a real directory
        # inside the partial.
        if parent not in real_parents:
            real = os.path.realpath(parent)
            # (Cached per directory: a directory is never replaced by a symlink during the receive,
            # mkdir and O_EXCL refuse to, and a symlink member is a new path, checked when used.)
            real_parents[parent] = not os.path.islink(parent) and (
                real == real_partial or real.startswith(real_partial + os.sep))
        if not real_parents[parent]:
            raise Refused("bad-artifact", "archive entry %s would be written through a symlink" % rel)
        mode = int(entry["mode"], 8)
        if kind == "dir":
            if not os.path.isdir(dest):
                os.mkdir(dest, 0o700)
            dir_mtimes[rel] = member.mtime
        elif kind == "symlink":
            os.symlink(member.linkname, dest)
        else:
            src = tar.extractfile(member)
            h = hashlib.sha256()
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as f:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    f.write(chunk)
            if h.hexdigest() != entry["sha256"]:
                raise Refused("bad-artifact", "%s: sha256 %s differs from the manifest's %s" % (rel, h.hexdigest(), entry["sha256"]))
            seal.record(rel, give(dest, ids, mode, member.mtime))
    tar.close()
    return seen, dir_mtimes


ZERO_BLOCK = b"\0" * 512


def tar_number(field):
    """A tar header's numeric field: octal text, or GNU's base-256 (high bit of the first byte set)."""
    if field[:1] < b"\x80":  # octal text, the common case, without the conversions below
        text = field.split(b"\0", 1)[0].strip()
        return int(text, 8) if text else 0
    field = bytearray(field)
    if field and field[0] & 0x80:
        n = field[0] & 0x3f
        for b in field[1:]:
            n = (n << 8) | b
        return -n if field[0] & 0x40 else n
    text = bytes(field).split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def tar_field(value, width):
    """value as a numeric header field: octal text, base-256 when it does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return ("%0*o" % (width - 1, value)).encode("ascii") + b"\0"
    out = bytearray(width)
    for i in range(width - 1, 0, -1):
        out[i] = value & 0xff
        value >>= 8
    out[0] = 0x80
    return bytes(out)


# The header's fields after the name when each number fits its octal field (all but huge files and ids).
OCTAL_FIELDS = b"%07o\0%07o\0%07o\0%011o\0%011o\0"
USTAR_TAIL = b"ustar  \0" + b"\0" * 247
USTAR_SUM = sum(bytearray(USTAR_TAIL))


def tar_block(name, mode, uid, gid, size, mtime, typeflag, linkname=b""):
    """One GNU tar header block (names must fit: see tar_header). Built in one pass where every number
    fits its octal field (once per member of a full ship: the generic build below was a sixth of the
    filter's own time); tar_block_generic is the same header for any value."""
    if 0 <= mode < 0o10000000 and 0 <= uid < 0o10000000 and 0 <= gid < 0o10000000 and \
            0 <= size < 0o100000000000 and 0 <= mtime < 0o100000000000:
        fields = OCTAL_FIELDS % (mode, uid, gid, size, mtime)
        # The sum of the header's bytes, its own field counted as eight spaces (256); zeros add nothing.
        chk = sum(bytearray(name + fields + typeflag + linkname)) + 256 + USTAR_SUM
        return b"".join([name, b"\0" * (100 - len(name)), fields, b"%06o\0 " % chk, typeflag, linkname,
                         b"\0" * (100 - len(linkname)), USTAR_TAIL])
    return tar_block_generic(name, mode, uid, gid, size, mtime, typeflag, linkname)


def tar_block_generic(name, mode, uid, gid, size, mtime, typeflag, linkname=b""):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = tar_field(mode, 8)
    h[108:116] = tar_field(uid, 8)
    h[116:124] = tar_field(gid, 8)
    h[124:136] = tar_field(size, 12)
    h[136:148] = tar_field(mtime, 12)
    h[148:156] = b"        "
    h[156:157] = typeflag
    h[157:157 + len(linkname)] = linkname
    h[257:265] = b"ustar  \0"
    h[148:156] = ("%06o\0 " % sum(h)).encode("ascii")
    return bytes(h)


def tar_header(name, mode, uid, gid, size, mtime, typeflag, linkname=b""):
    """The header GNU tar is given for a member the filter checked: written anew from the checked
    values (GNU long-name records where a name is longer than 100 bytes), so tar can read nothing the
    filter did not."""
    pre = []
    for kind, text in ((b"K", linkname), (b"L", name)):
        if len(text) > 100:
            pre.append(tar_block(b"././@LongLink", 0o644, 0, 0, len(text) + 1, 0, kind))
            pre.append(text + b"\0" * (512 - len(text) % 512))
    return b"".join(pre) + tar_block(name[:100], mode, uid, gid, size, mtime, typeflag, linkname[:100])


class Blocks(object):
    """The uncompressed tar stream, read as header blocks and member data."""

    def __init__(self, reader):
        self.reader = reader
        # What has arrived, not a full 1 MB: the headers are checked as soon as they are there.
        self.read = getattr(reader, "read_some", reader.read)
        self.buf = b""
        self.pos = 0

    def take(self, n):
        """Exactly n bytes (EOFError when the stream ends first)."""
        if len(self.buf) - self.pos >= n:
            self.pos += n
            return self.buf[self.pos - n:self.pos]
        parts = [self.buf[self.pos:]]
        have = len(parts[0])
        self.buf, self.pos = b"", 0
        while have < n:
            chunk = self.read(1 << 20)
            if not chunk:
                raise EOFError("the archive ends inside a member")
            if len(chunk) > n - have:
                self.buf, self.pos = chunk, n - have
                chunk = chunk[:n - have]
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def pieces(self, n):
        """n bytes as consecutive pieces, without joining them."""
        while n > 0:
            if self.pos >= len(self.buf):
                self.buf, self.pos = self.read(1 << 20), 0
                if not self.buf:
                    raise EOFError("the archive ends inside a member")
            k = min(n, len(self.buf) - self.pos)
            yield self.buf[self.pos:self.pos + k] if k < len(self.buf) else self.buf
            self.pos += k
            n -= k


def pax_records(data):
    """{keyword: value} of a pax extended header ("LEN keyword=value\\n" records)."""
    records = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            break
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise tarfile.TarError("bad pax record")
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        pos += length
    return records


def decode_name(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return repr(raw)  # names nothing in the manifest: refused as such


class TarWriter(object):
    """GNU tar extracting, in the partial directory, the stream the filter gives it (its stdin), with
    writes batched to about 1 MiB."""

    def __init__(self, partial, same_owner, procs):
        import subprocess
        argv = ["tar", "-x", "-p", "-f", "-", "--numeric-owner", "--same-owner" if same_owner else "--no-same-owner"]
        with open(os.devnull, "wb") as null:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=null, stderr=subprocess.PIPE,
                                         cwd=partial, close_fds=True)
        procs.append(self.proc)
        # tar's messages, read as they come (no temporary file: nothing is written outside the partial).
        self.errors = []
        self.reader = threading.Thread(target=self._read_errors)
        self.reader.daemon = True
        self.reader.start()
        self.fd = self.proc.stdin.fileno()
        self.parts = []
        self.size = 0
        self.total = 0

    def write(self, data):
        self.parts.append(data)
        self.size += len(data)
        if self.size >= 1 << 20:
            self.flush()

    def flush(self):
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            if e.errno == errno.EPIPE:
                self.fail()
            raise
        self.total += len(data)

    def close(self):
        """Ends the archive (two zero blocks, padded to tar's 10 KiB records) and waits for tar."""
        end = 1024 + (-(self.total + self.size + 1024)) % 10240
        self.write(b"\0" * end)
        self.flush()
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            self.fail()

    def _read_errors(self):
        for chunk in iter(lambda: self.proc.stderr.read(65536), b""):
            if sum(len(c) for c in self.errors) < 1 << 20:
                self.errors.append(chunk)

    def fail(self):
        self.proc.wait()
        self.reader.join(10)
        text = b"".join(self.errors).decode("utf-8", "replace").strip()
        full = [line for line in text.splitlines() if "No space left" in line or "Disk quota" in line]
        if full:
            raise IOError(errno.ENOSPC, full[0])
        raise Refused("bad-artifact", "tar could not unpack the checked archive (exit %s): %s" % (self.proc.returncode, text[-500:]))


TAR_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink"}


def unpack_with_tar(partial, gunzip, entries, manifest_entries, ids, seal, procs):
    """The receive at tar's speed: this filter reads the archive's headers, checks each member against
    the manifest (check_member) before anything of it goes on, and hashes every file's content as it
    streams through to GNU tar, which does the per-file work (open, write, chown, chmod, utime) in C.
    tar reads only headers the filter wrote (tar_header) from the checked values: the manifest's mode,
    the deploy owner, the member's mtime; directories 0700 until finish_dirs, as the Python unpacker
    makes them. A file whose hash differs is refused once its bytes passed (tar has written them into
    the partial directory, which the caller removes). Returns (paths seen, directory mtimes)."""
    root = os.geteuid() == 0
    uid = ids[0] if ids[0] != -1 else os.geteuid()
    gid = ids[1] if ids[1] != -1 else os.getegid()
    me_uid, me_gid = os.geteuid(), os.getegid()
    tar = TarWriter(partial, root and (uid, gid) != (me_uid, me_gid), procs)
    blocks = Blocks(gunzip)
    seen = set()
    dirs_ok = set()
    dir_mtimes = {}
    files = []
    long_name = long_link = None
    pax = {}
    while True:
        h = blocks.take(512)
        if h == ZERO_BLOCK:
            break
        chksum = tar_number(h[148:156])
        sum_h = sum(bytearray(h)) - sum(bytearray(h[148:156])) + 256
        if chksum != sum_h:
            raise tarfile.TarError("bad checksum in a tar header")
        typeflag = h[156:157]
        size = tar_number(h[124:136])
        if size < 0:
            raise tarfile.TarError("negative size in a tar header")
        padded = size + (-size) % 512
        if typeflag in (b"L", b"K", b"x", b"g"):
            data = blocks.take(padded)[:size]
            if typeflag == b"L":
                long_name = data.split(b"\0", 1)[0]
            elif typeflag == b"K":
                long_link = data.split(b"\0", 1)[0]
            elif typeflag == b"x":
                pax = pax_records(data)
                if any(k.startswith(b"GNU.sparse") for k in pax):
                    raise Refused("bad-artifact", "the archive holds a sparse file: refused")
            continue
        name = long_name if long_name is not None else h[0:100].split(b"\0", 1)[0]
        if long_name is None and h[257:263] == b"ustar\0" and h[345:346] != b"\0":
            name = h[345:500].split(b"\0", 1)[0] + b"/" + name  # POSIX ustar's prefix field
        linkname = long_link if long_link is not None else h[157:257].split(b"\0", 1)[0]
        name = pax.get(b"path", name)
        linkname = pax.get(b"linkpath", linkname)
        if b"size" in pax:
            size = int(pax[b"size"])
            padded = size + (-size) % 512
        mtime = int(float(pax[b"mtime"])) if b"mtime" in pax else tar_number(h[136:148])
        long_name = long_link = None
        pax = {}
        kind = TAR_KINDS.get(typeflag, "other")
        if kind == "other" and typeflag not in (b"1", b"3", b"4", b"6"):
            raise Refused("bad-artifact", "archive entry %s has tar type %r: refused" % (decode_name(name), typeflag))
        rel, entry = check_member(decode_name(name), kind, decode_name(linkname), entries, seen, manifest_entries, dirs_ok)
        raw = rel.encode("utf-8")
        if kind != "file" or rel == "":
            for _ in blocks.pieces(padded):
                pass
            if kind == "dir" and rel:
                tar.write(tar_header(raw + b"/", 0o700, me_uid, me_gid, 0, mtime, b"5"))
                dir_mtimes[rel] = mtime
            elif kind == "symlink":
                tar.write(tar_header(raw, 0o777, uid, gid, 0, mtime, b"2", entry["target"].encode("utf-8")))
            continue
        tar.write(tar_header(raw, int(entry["mode"], 8), uid, gid, size, mtime, b"0"))
        digest = hashlib.sha256()
        for piece in blocks.pieces(size):
            digest.update(piece)
            tar.write(piece)
        if padded > size:
            blocks.take(padded - size)
            tar.write(ZERO_BLOCK[:padded - size])
        if digest.hexdigest() != entry["sha256"]:
            raise Refused("bad-artifact", "%s: sha256 %s differs from the manifest's %s" % (rel, digest.hexdigest(), entry["sha256"]))
        files.append((rel, entry, size))
    tar.close()
    # Sealed as tar left them (in directories only the agent's user can enter): finalize need not read
    # them again. One that is not as asked is left unsealed, and finalize hashes it.
    for rel, entry, size in files:
        st = os.lstat(partial + "/" + rel)
        if stat.S_ISREG(st.st_mode) and st.st_size == size and "%04o" % stat.S_IMODE(st.st_mode) == entry["mode"] \
                and (st.st_uid, st.st_gid) == (uid, gid):
            seal.record(rel, st)
    return seen, dir_mtimes


def finish_dirs(partial, manifest, mtime=None, dir_mtimes=None):
    """Directory modes (and mtimes) last: a read-only directory must not stop the files inside it from
    being written, and writing into a directory changes its mtime. A delta gives every directory the
    archive's mtime."""
    for e in sorted((e for e in manifest["files"] if e["type"] == "dir"), key=lambda e: e["path"], reverse=True):
        rel = e["path"]
        os.chmod(os.path.join(partial, rel), int(e["mode"], 8))
        t = (dir_mtimes or {}).get(rel, mtime)
        if t is not None:
            os.utime(os.path.join(partial, rel), (t, t))


# -------------------------------------------------------------------------------------------- delta


def delta_need_file(p, op):
    return os.path.join(p["meta"], "tmp", "%s-need.json" % op)


def keep_manifest(p, rid, manifest_path):
    """Keeps a verified release's manifest as manifests/<ID>.json: what a later delta may take from it."""
    if not os.path.isdir(p["manifests"]):
        os.makedirs(p["manifests"])
    dest = os.path.join(p["manifests"], "%s.json" % rid)
    tmp = "%s.tmp-%d" % (dest, os.getpid())
    shutil.copyfile(manifest_path, tmp)
    os.rename(tmp, dest)


def delta_bases(p, current):
    """Releases on this host a delta may copy from: real directories (not an adopted link) with a kept
    manifest; the current one first, then the newest."""
    releases, _ = list_releases(p)
    out = []
    for rid in [current] + sorted(releases, reverse=True):
        if not rid or rid in [b[0] for b in out]:
            continue
        d = os.path.join(p["releases"], rid)
        m = os.path.join(p["manifests"], "%s.json" % rid)
        if os.path.islink(d) or not os.path.isdir(d) or not os.path.isfile(m):
            continue
        out.append((rid, d, m))
    return out


def copy_verified(src, dest, sha256, mode, mtime, ids, seal, base_rel):
    """Copies src to dest (a new file) if, and only if, src's content has the sha256 the manifests
    promise; returns dest's stat, or None. The content is hashed while copied (each byte read once)
    unless the base release's seal vouches for src exactly as it is (see Seal).

    A copy, not a hard link: a hard link shares the inode, so any in-place write into one release (an
    operator's hot-fix, pip run inside a release, a chmod) would silently change every release that
    links it, the rollback target included, which would then fail its own verification when it is
    needed most. See README "Performance" for the measurements behind this choice."""
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # gone, or a symlink where a file was
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        h = None if seal.trusts(base_rel, st) else hashlib.sha256()
        out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                if h is not None:
                    h.update(chunk)
                view = memoryview(chunk)
                while view:
                    n = os.write(out_fd, view)
                    view = view[n:]
        finally:
            os.close(out_fd)
    finally:
        os.close(fd)
    if h is not None and h.hexdigest() != sha256:
        os.unlink(dest)
        return None
    return give(dest, ids, mode, mtime)


# ------------------------------------------------------------------------------------------ links
# deploy.link: hardlink (the default). A file of a new release whose content, mode, owner, group and
# mtime equal a file of a release already here becomes a hard link to it, as rsync --link-dest does;
# where only the metadata differs, a reflink (FICLONE: XFS, Btrfs) or, without one, a copy. A linked
# release is then what a full ship writes, entry for entry, and costs only the disk of what changed.
# A shared inode is never changed in place by the agent: an edit found on one (an operator's editor
# writing through the link, a chmod: its ctime moves in every release that links it) is healed by
# replacing the file in the release being checked (rename(2) of the right bytes over it).

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h


def reflink(src_fd, dest_fd):
    """Whether dest now shares src's blocks (copy-on-write); False where the filesystem has no reflinks."""
    try:
        import fcntl
        fcntl.ioctl(dest_fd, FICLONE, src_fd)
        return True
    except (IOError, OSError, ImportError):
        return False


def fd_sha256(fd):
    h = hashlib.sha256()
    os.lseek(fd, 0, 0)
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


class InodeMoves(object):
    """The book of the inodes this operation moved the ctime of by adding or removing a name of theirs
    (a link made by a delta or a heal, a linked release pruned): either voids the seal of every release
    that shares the inode. finish() moves those seals along: an entry that matched the inode just
    before our change matches it just after, so a rollback still proves its release by stats, not by
    reading it."""

    def __init__(self, proved=False):
        # proved: this operation proved every inode's content before changing its names (a Linker links
        # only what a seal vouches for or it hashed), so even a racily clean entry may move.
        self.proved = proved
        self.before = {}  # inode -> its stat key just before this operation first changed its names
        self.after = {}   # inode -> its stat key after the last change

    def changed(self, before, after):
        """One name of an inode added or removed: its stat keys just before and just after. Recorded,
        and True, only if everything but ctime (the change of names moves it) is as before: the inode,
        size, mtime, mode and owner; otherwise the inode changed in between, and no seal follows it."""
        if after[:3] != before[:3] or after[4:] != before[4:]:
            return False
        self.before.setdefault(before[0], before)
        self.after[before[0]] = after
        return True

    def renamed(self, st):
        """A linked inode renamed into place (rename moves its ctime): its stat now."""
        if st.st_ino in self.after:
            self.after[st.st_ino] = stat_key(st)

    def move(self, seal):
        """Moves one seal along this operation's changes; how many entries moved. Unless the content was
        proved (see __init__), an entry the seal would not trust (racily clean, see SEAL_RACY_NS) stays
        as it is, so the next check still hashes it; a seal this operation is writing (never saved:
        taken 0) holds its own writes and moves whole."""
        moved = 0
        for rel, key in seal.files.items():
            if self.before.get(key[0]) == key and (
                    self.proved or not seal.taken or key[3] < seal.taken - SEAL_RACY_NS):
                seal.files[rel] = self.after[key[0]]
                moved += 1
        return moved

    def finish(self, p, skip=(), seals=(), loaded=None):
        """Moves the seal of every release here (and `seals`, held in memory by the caller) along the
        changes this operation made (see the class). Waits until the newest change is older than the
        seals' racy window first, so that they trust it. loaded: {release ID: its seal} the caller read
        from manifests/ in this operation (not read again; the caller holds the agent's lock, so no
        other operation wrote them since)."""
        if not self.after:
            return
        for s in seals:
            self.move(s)
        newest = max(k[3] for k in self.after.values())
        wait = newest + SEAL_RACY_NS + 1000000 - now_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        releases, _ = list_releases(p)
        for rid in releases:
            path = seal_path(p, rid)
            if rid in skip or not os.path.isfile(path):
                continue
            s = (loaded or {}).get(rid) or Seal.load(path)
            if self.move(s):
                s.save(path)


def remove_tree(path, moves):
    """shutil.rmtree(path, ignore_errors=True), but a file other releases still link (st_nlink > 1, a
    linked release) is held open while its name goes, and its stats just before and just after go to
    `moves` (InodeMoves): the unlink moves the inode's ctime in every release that shares it, whose
    seals finish() then moves along instead of leaving them void (the next rollback would read every
    shared file again)."""
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    for d, dirs, files in os.walk(path, topdown=False):
        for name in files:
            f = os.path.join(d, name)
            try:
                st = os.lstat(f)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
                    os.unlink(f)
                    continue
                fd = os.open(f, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    before = os.fstat(fd)
                    os.unlink(f)
                    moves.changed(stat_key(before), stat_key(os.fstat(fd)))
                finally:
                    os.close(fd)
            except OSError:
                pass
        for name in dirs:  # os.walk lists a symlink to a directory among the directories
            sub = os.path.join(d, name)
            try:
                if os.path.islink(sub):
                    os.unlink(sub)
                else:
                    os.rmdir(sub)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)  # what the walk could not remove, if anything


class Linker(InodeMoves):
    """Places files of a release from files of releases already on the host (a delta, a heal), linking
    where content and metadata are equal. Keeps the book of the inodes it linked (see InodeMoves)."""

    def __init__(self, ids, mtime, link=True):
        InodeMoves.__init__(self, proved=True)
        self.want_uid = ids[0] if ids[0] != -1 else os.geteuid()
        self.want_gid = ids[1] if ids[1] != -1 else os.getegid()
        self.ids = ids
        self.mtime = mtime
        self.link = link
        self.counts = {"linked": 0, "reflinked": 0, "copied": 0}

    def same_meta(self, st, mode, key=None):
        """key: stat_key(st), when the caller has it already."""
        return (stat.S_IMODE(st.st_mode) == mode and st.st_uid == self.want_uid and st.st_gid == self.want_gid
                and (key[2] if key else _ns(st, "st_mtime")) == int(round(self.mtime * 1e9)))

    def place(self, src, dest, sha256, mode, seal, base_rel, only_link=False):
        """dest (a new path) with src's content if src has the sha256 the manifests promise: a hard link
        when its metadata is the wanted one too, else a reflink or a copy given that metadata. Content
        is proved by the base's seal (or this operation's own links), else by hashing it. Returns dest's
        stat, or None (src gone, not a regular file, or other content).

        The usual case, a file the seal vouches for with the wanted metadata, costs an lstat, the link
        and an lstat of the new name (the delta of a 29,000-file release makes 28,000 of them): the new
        name must be the very inode the lstat proved, with the same size, mtime, mode and owner, or it
        is removed again (src replaced or changed in between). link(2) never follows a symlink."""
        if self.link:
            try:
                st = os.lstat(src)
            except OSError:
                return None
            if not stat.S_ISREG(st.st_mode):
                return None
            key = stat_key(st)
            if self.same_meta(st, mode, key):
                if seal.trusts(base_rel, st, key) or self.after.get(st.st_ino) == key:
                    return self._link(src, dest, st, key)
            elif only_link:
                return None
        try:
            fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            key = stat_key(st)
            if only_link and not self.same_meta(st, mode):
                return None
            trusted = seal.trusts(base_rel, st) or self.after.get(st.st_ino) == key
            if not trusted and fd_sha256(fd) != sha256:
                return None
            if self.link and self.same_meta(st, mode):
                return self._link(src, dest, st, key)
            if only_link:
                return None
            out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                if reflink(fd, out_fd):
                    self.counts["reflinked"] += 1
                else:
                    os.lseek(fd, 0, 0)
                    while True:
                        chunk = os.read(fd, 1 << 20)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out_fd, view):]
                    self.counts["copied"] += 1
            finally:
                os.close(out_fd)
            return give(dest, self.ids, mode, self.mtime)
        finally:
            os.close(fd)

    def _link(self, src, dest, st, key):
        """dest as a hard link to src, if src is still the inode st (key: its stat_key) proved."""
        link_no_follow(src, dest)
        new = os.lstat(dest)
        nkey = stat_key(new)
        # The very inode proved, with everything but ctime as proved (see InodeMoves.changed).
        if new.st_dev == st.st_dev and self.changed(key, nkey):
            self.counts["linked"] += 1
            return new
        os.unlink(dest)  # src was replaced or changed between the proof and the link: not what we proved
        return None


LINK_NO_FOLLOW = {"follow_symlinks": False} if sys.version_info[0] >= 3 else {}


def link_no_follow(src, dest):
    """link(2) of src itself, never of what a symlink there points at (Python 3's os.link follows by
    default; Python 2's is link(2), which does not follow on Linux)."""
    os.link(src, dest, **LINK_NO_FOLLOW)


class RealDirs(object):
    """Whether a directory of a release is a real one inside it, no symlink on the way: one lstat per
    directory, from the release down, remembered (os.path.realpath per directory lstats every part of
    the path, a fifth of a delta's time). A directory is never replaced by a symlink behind the
    cache's back by the agent, and what an lstat proved is proved again per file (see Linker.place)."""

    def __init__(self):
        self.known = {}

    def real(self, base, rel_dir):
        """base: a release directory (delta_bases: a real one); rel_dir: a clean relative path, or ""."""
        key = base + "/" + rel_dir
        v = self.known.get(key)
        if v is None:
            if rel_dir == "":
                v = not os.path.islink(base) and os.path.isdir(base)
            else:
                v = self.real(base, rel_dir.rpartition("/")[0])
                if v:
                    try:
                        v = stat.S_ISDIR(os.lstat(key).st_mode)
                    except OSError:
                        v = False
            self.known[key] = v
        return v


def tree_seal_inputs(p, rid, manifest_path):
    """(the paths the release's tree seal left out, the sha256 of its manifest), or None when the release
    has no readable tree seal or manifest."""
    try:
        with io.open(tree_seal_path(p, rid), encoding="utf-8") as f:
            exclude = json.load(f)["exclude"]
        return exclude, file_sha256(manifest_path)
    except (IOError, OSError, ValueError, KeyError, TypeError):
        return None


def relink_tree_seal(p, base):
    """The tree seal of the release a delta linked from (the current one: the next rollback target),
    recorded again once its seal moved along the links; the others' are recorded by their next check."""
    rid, d, mpath = base
    recorded = tree_seal_inputs(p, rid, mpath)
    if recorded is None:
        return False
    exclude, sha = recorded
    return save_tree_seal(p, rid, d, sha, Seal.load(seal_path(p, rid)), exclude)


def link_kept(p, rid, partial, manifest, seal, ids):
    """After a full receive (deploy.link: hardlink): each received file that a kept release here has
    too, with the same content, mode, owner and mtime, is replaced by a hard link to it (renamed over
    the received copy), so a full ship costs the disk of what changed as a delta does. Returns how many."""
    bases = [b for b in delta_bases(p, read_current(p)) if b[0] != rid]
    if not bases:
        return 0
    wanted = dict((e["path"], e) for e in manifest["files"] if e["type"] == "file" and e["path"] in seal.files)
    shas = set(e["sha256"] for e in wanted.values())
    index = {}
    for _, d, mpath in bases:
        try:
            with io.open(mpath, encoding="utf-8") as f:
                files = json.load(f)["files"]
        except (IOError, ValueError, KeyError):
            continue
        for e in files:
            if e.get("type") == "file" and e.get("sha256") in shas:
                rel = safe_member_path(e["path"])
                if rel:
                    index.setdefault(e["sha256"], []).append((d, rel))
    loaded = dict((b, Seal.load(seal_path(p, b))) for b, _, _ in bases)
    seals = dict((d, loaded[b]) for b, d, _ in bases)
    real_dirs = RealDirs()
    linked = 0
    linkers = {}
    for rel, e in sorted(wanted.items()):
        mtime = seal.files[rel][2]  # as received (the archive's)
        linker = linkers.get(mtime)
        if linker is None:
            linker = linkers[mtime] = Linker(ids, mtime / 1e9)
        dest = os.path.join(partial, rel)
        tmp = os.path.join(os.path.dirname(dest), ".ckan-link-%s" % os.path.basename(rel))
        for d, base_rel in index.get(e["sha256"], []):
            if not real_dirs.real(d, base_rel.rpartition("/")[0]):
                continue
            if os.path.lexists(tmp):
                os.unlink(tmp)
            st = linker.place(os.path.join(d, base_rel), tmp, e["sha256"], int(e["mode"], 8), seals[d], base_rel,
                              only_link=True)
            if st is not None:
                os.rename(tmp, dest)
                st = os.lstat(dest)
                linker.renamed(st)
                seal.record(rel, st)
                linked += 1
                break
    for linker in linkers.values():
        linker.finish(p, seals=(seal,), loaded=loaded)
    return linked


def heal_sources(p, rid, release, manifest, checked, wanted):
    """sha256 -> [(release dir, path, seal)]: where the right bytes of the files to heal may be, this
    release's own right files first (checked: this verification's seal), then every other release here
    with a kept manifest."""
    index = {}
    for e in manifest["files"]:
        if e["type"] == "file" and e["sha256"] in wanted and e["path"] in checked.files:
            index.setdefault(e["sha256"], []).append((release, e["path"], checked))
    for other, d, mpath in delta_bases(p, read_current(p)):
        if other == rid:
            continue
        try:
            with io.open(mpath, encoding="utf-8") as f:
                files = json.load(f)["files"]
        except (IOError, ValueError, KeyError):
            continue
        seal = None
        for e in files:
            if e.get("type") == "file" and e.get("sha256") in wanted:
                rel = safe_member_path(e["path"])
                if rel:
                    seal = seal or Seal.load(seal_path(p, other))
                    index.setdefault(e["sha256"], []).append((d, rel, seal))
    return index


def real_dir_in(release, rel):
    """Whether rel's directory is a real one inside the release (no symlink on the way)."""
    parent = os.path.dirname(os.path.join(release, rel))
    return not os.path.islink(parent) and os.path.realpath(parent) == os.path.join(
        os.path.realpath(release), os.path.dirname(rel)).rstrip("/")


def keep_dir_time(times, path):
    """Remembers a directory's times before the heal changes its entries (restore_dir_times)."""
    d = os.path.dirname(path)
    if d not in times:
        st = os.lstat(d)
        times[d] = (st.st_atime, st.st_mtime)


def restore_dir_times(times):
    for d, t in times.items():
        os.utime(d, t)


def heal_into(release, rel, tmp, times):
    """Renames the new file tmp over release/rel (never writing through the inode it replaces). False
    when rel's directory is not a real one inside the release, or a directory is where the file goes."""
    dest = os.path.join(release, rel)
    if not real_dir_in(release, rel) or (os.path.isdir(dest) and not os.path.islink(dest)):
        return False
    keep_dir_time(times, dest)
    os.rename(tmp, dest)
    return True


def heal_release(p, rid, release, manifest, bad, checked, ids, mtime, op):
    """Replaces every file of `bad` (path -> problem: wrong bytes, mode or owner, missing) by the right
    bytes from a file here that still has them; returns (healed, still needed from the artifact)."""
    entries = dict((e["path"], e) for e in manifest["files"])
    wanted = set(entries[r]["sha256"] for r in bad)
    index = heal_sources(p, rid, release, manifest, checked, wanted)
    linker = Linker(ids, mtime)
    healed, need = [], []
    times = {}
    for rel in sorted(bad):
        e = entries[rel]
        tmp = os.path.join(release, os.path.dirname(rel), ".ckan-heal-%s-%s" % (op, os.path.basename(rel)))
        done = False
        if not real_dir_in(release, rel):
            need.append(rel)  # refused when the files arrive
            continue
        keep_dir_time(times, tmp)
        for d, base_rel, seal in index.get(e["sha256"], []):
            if d == release and base_rel in bad:
                continue
            src = os.path.join(d, base_rel)
            if os.path.realpath(os.path.dirname(src)) != os.path.join(os.path.realpath(d), os.path.dirname(base_rel)).rstrip("/"):
                continue
            if os.path.lexists(tmp):
                os.unlink(tmp)
            try:
                st = linker.place(src, tmp, e["sha256"], int(e["mode"], 8), seal, base_rel)
            except OSError:
                st = None
            if st is not None and heal_into(release, rel, tmp, times):
                st = os.lstat(os.path.join(release, rel))
                linker.renamed(st)
                checked.record(rel, st)
                healed.append({"path": rel, "was": bad[rel], "from": os.path.relpath(src, p["releases"])})
                done = True
                break
            if os.path.lexists(tmp):
                os.unlink(tmp)
        if not done:
            need.append(rel)
    restore_dir_times(times)
    linker.finish(p, skip=(rid,), seals=(checked,))
    return healed, need


def bulk_copy(p, base, partial, old_files, new_entries):
    """Copies a whole earlier release to partial with one `cp -a` (C: about a second for 28,000 files,
    where a copy per file in Python takes several), if its tree seal proves it unchanged both before and
    after the copy (a change in between moves a ctime), then removes what the new release does not have
    the same: other content, type or link target, and the config file and shared links. Returns the
    paths kept, or None when nothing was copied (no tree seal, a change, no GNU cp)."""
    import subprocess
    rid, d, mpath = base
    recorded = tree_seal_inputs(p, rid, mpath)
    if recorded is None:
        return None
    exclude, sha = recorded
    if not tree_unchanged(p, rid, d, sha, exclude):
        return None
    # Copied inside a directory only the agent's user can enter, then moved into place closed (0700):
    # no other user can change a copied file between the copy and its stat being sealed.
    head, op = partial.rsplit("-", 1)
    wrapper = "%s-copy-%s" % (head, op)  # a partial of this operation: `clean` removes it
    if os.path.lexists(wrapper):
        shutil.rmtree(wrapper)
    os.mkdir(wrapper, 0o700)
    copy = os.path.join(wrapper, "release")
    with open(os.devnull, "wb") as null:
        code = subprocess.call(["cp", "-a", "--reflink=auto", "--", d, copy], stdout=null, stderr=null)
    if code == 0 and tree_unchanged(p, rid, d, sha, exclude):
        os.lchown(copy, os.getuid(), os.getgid())
        os.chmod(copy, 0o700)
        os.rename(copy, partial)
    shutil.rmtree(wrapper, ignore_errors=True)
    if not os.path.isdir(partial):
        return None
    old_entries = dict((e["path"], e) for e in old_files)
    for rel in exclude:
        path = os.path.join(partial, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    kept = set()
    # Deepest first, so a directory that goes takes only what is already decided.
    for rel in sorted(old_entries, reverse=True):
        b, e = old_entries[rel], new_entries.get(rel)
        same = e is not None and e["type"] == b["type"] and (
            (e["type"] == "file" and e["sha256"] == b["sha256"]) or
            (e["type"] == "symlink" and e["target"] == b["target"]) or e["type"] == "dir")
        if same:
            kept.add(rel)
            continue
        path = os.path.join(partial, rel)
        if b["type"] == "dir" and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    # A kept directory under one that went is gone too.
    return set(rel for rel in kept if os.path.lexists(os.path.join(partial, rel)))


def settle(path, ids, mode, mtime):
    """A file kept from the bulk copy with the new manifest's owner, mode and mtime; its stat."""
    st = os.lstat(path)
    changed = False
    if (ids[0] != -1 and st.st_uid != ids[0]) or (ids[1] != -1 and st.st_gid != ids[1]):
        os.lchown(path, ids[0], ids[1])
        changed = True
    if stat.S_IMODE(st.st_mode) != mode or changed:
        os.chmod(path, mode)
        changed = True
    if st.st_mtime != mtime:
        os.utime(path, (mtime, mtime))
        changed = True
    return os.lstat(path) if changed else st


def cmd_delta(args):
    """Assembles as much of a new release as this host already has, in the partial directory.

    For every file of the new manifest, a file with the same sha256 in an earlier release here (by that
    release's kept manifest) is copied, and hashed while copied: a base file whose content does not match
    (tampered, damaged) is never used; the next candidate is tried, or the file is left for the sender.
    Directories and symlinks come from the manifest.
    Every copy, and every directory, gets the archive's mtime (the build gives all members the same one),
    never the base's: a .pyc header records its source's mtime. Writes the paths still needed to
    tmp/<op>-need.json and answers {delta, partial, need, reused, reused_bytes, tampered, bases}.
    With nothing to reuse the partial is removed and delta is false: the caller sends the full archive."""
    p = paths(args["root"])
    rid = check_id(args["id"])
    bases = [b for b in delta_bases(p, read_current(p)) if b[0] != rid]
    if not bases:
        # A first ship: nothing to copy from, and the manifest (7 MB of JSON for 29,000 files) is not
        # read for nothing; receive reads and checks it.
        out({"delta": False, "bases": [], "need": None})
        return
    manifest = PARSED.load(args["manifest"])
    if manifest.get("id") != rid:
        raise Refused("bad-artifact", "manifest is for %s, not %s" % (manifest.get("id"), rid))
    loaded = dict((b, Seal.load(seal_path(p, b))) for b, _, _ in bases)
    seals = dict((d, loaded[b]) for b, d, _ in bases)
    ids = owner_ids(args)
    seal = Seal()
    mtime = float(args["mtime"])
    files = sorted(manifest["files"], key=lambda e: e["path"])
    wanted = set(e["sha256"] for e in files if e["type"] == "file")
    # sha256 -> [(base dir, path)]: the current release's copy first.
    index = {}
    first_files = None  # the current release's manifest entries, for the whole copy
    for i, (_, d, mpath) in enumerate(bases):
        try:
            with io.open(mpath, encoding="utf-8") as f:
                base_files = json.load(f)["files"]
        except (IOError, ValueError, KeyError):
            continue
        if i == 0:
            first_files = base_files
        for e in base_files:
            if e.get("type") == "file" and e.get("sha256") in wanted:
                # The base's path as its manifest gives it: checked by safe_member_path when used.
                index.setdefault(e["sha256"], []).append((d, e["path"]))
    if not index:
        out({"delta": False, "bases": [b[0] for b in bases], "need": None})
        return
    partial = os.path.join(p["releases"], ".partial-%s-%s" % (rid, args["op"]))
    if os.path.exists(partial):
        shutil.rmtree(partial)
    # The current release copied whole when its tree seal proves it unchanged, then trimmed to the new
    # manifest: the files kept are the ones both manifests give the same path and content.
    # deploy.link: hardlink (the default) links every file it can, file by file (see Linker); copy
    # copies, the current release whole when its tree seal proves it unchanged, then trimmed to the new
    # manifest: the files kept are the ones both manifests give the same path and content.
    linker = Linker(ids, mtime) if args.get("link") == "hardlink" else None
    bulk = None
    if linker is None and first_files:
        bulk = bulk_copy(p, bases[0], partial, first_files, dict((e["path"], e) for e in files))
    if bulk is None:
        os.makedirs(partial)
        os.chmod(partial, 0o700)
    need = []
    tampered = []
    real_dirs = RealDirs()
    # The directories of the partial this delta made (or the whole copy kept), as the manifest gives
    # them: every entry's parent must be one (sorted by path, a directory comes before what is in it).
    made_dirs = set([""])
    reused = 0
    reused_bytes = 0
    for e in files:
        rel = safe_member_path(e["path"])
        if not rel:
            raise Refused("bad-artifact", "manifest entry %r points outside the release" % e["path"])
        dest = partial + "/" + rel
        kind = e["type"]
        if rel.rpartition("/")[0] not in made_dirs:
            raise Refused("bad-artifact", "manifest entry %s has no directory to go in" % rel)
        if bulk is not None and rel in bulk:
            if kind == "file":
                seal.record(rel, settle(dest, ids, int(e["mode"], 8), mtime))
                reused += 1
                reused_bytes += e["size"]
            elif kind == "dir":
                made_dirs.add(rel)
            continue  # a directory or symlink already as the manifest says (modes: finish_dirs)
        if kind == "dir":
            os.mkdir(dest, 0o700)
            made_dirs.add(rel)
        elif kind == "symlink":
            os.symlink(e["target"], dest)
        elif kind == "file":
            done = False
            for d, base_path in index.get(e["sha256"], []):
                # Never read through a symlink planted in the base: its parent must be a real
                # directory inside the base release.
                base_rel = safe_member_path(base_path)
                src = d + "/" + (base_rel or "")
                if not base_rel or not real_dirs.real(d, base_rel.rpartition("/")[0]):
                    tampered.append(os.path.relpath(src, p["releases"]))
                    continue
                if linker is not None:
                    st = linker.place(src, dest, e["sha256"], int(e["mode"], 8), seals[d], base_rel)
                else:
                    st = copy_verified(src, dest, e["sha256"], int(e["mode"], 8), mtime, ids, seals[d], base_rel)
                if st is not None:
                    seal.record(rel, st)
                    done = True
                    reused += 1
                    reused_bytes += e["size"]
                    break
                tampered.append(os.path.relpath(src, p["releases"]))
            if not done:
                need.append(rel)
        else:
            raise Refused("bad-artifact", "manifest entry %s has unknown type %s" % (rel, kind))
    if reused == 0:
        shutil.rmtree(partial)
        out({"delta": False, "bases": [b[0] for b in bases], "need": None, "tampered": tampered[:20]})
        return
    need_file = delta_need_file(p, args["op"])
    if not os.path.isdir(os.path.dirname(need_file)):
        os.makedirs(os.path.dirname(need_file))
    with io.open(need_file, "w", encoding="utf-8") as f:
        f.write(u"%s" % json.dumps({"need": need}))
    if linker is not None:
        # The earlier releases' seals follow the inodes linked (and this operation's own, for finalize).
        linker.finish(p, seals=(seal,), loaded=loaded)
        relink_tree_seal(p, bases[0])
    seal.save(op_seal_path(p, args["op"]))
    if not need:
        finish_dirs(partial, manifest, mtime)
    out({"delta": True, "partial": partial, "need": need, "reused": reused, "reused_bytes": reused_bytes,
         "tampered": tampered[:20], "tampered_count": len(tampered), "bases": [b[0] for b in bases],
         "whole": bulk is not None, "link": linker.counts if linker is not None else None})


def verify_tree(release, manifest, seal=None, owner=None):
    """Every manifest entry exists with its type, mode, link target and sha256 (and, given owner (uid,
    gid), every file that owner); nothing else exists. A file the seal vouches for (unchanged since it
    was hashed, see Seal) is not read again. Returns (problems, extra, the seal of this check: every
    file's stat as it was found matching); the seal's `bad` maps each file entry found wrong in a way a
    heal can put right (bytes, mode, owner, missing) to its problem, and its `listed` is (find's
    listing the check went by, its stats, when it was taken, the manifest's entries by path) for
    save_tree_seal (None without GNU find)."""
    seal = seal if seal is not None else Seal()
    checked = Seal()
    checked.hashed = 0
    checked.bad = {}
    entries = dict((e["path"], e) for e in manifest["files"])
    release = release.rstrip("/")
    prefix = release + "/"
    # One listing of every entry's stat (the config file and shared links left out), taken before any
    # file is read: a change after it moves the ctime past what the seal records.
    listed_at = now_ns()
    stats, listing = tree_stats(release, manifest.get("_allowed_extra", []))
    checked.listed = (listing, stats, listed_at, entries) if listing is not None else None
    extra = []
    for rel in stats:
        if rel in entries:
            continue
        # Bytecode Python wrote at run time for a module the build could not compile: harmless.
        head, _, name = rel.rpartition("/")
        if name == "__pycache__" or (head.rpartition("/")[2] == "__pycache__" and name.endswith(".pyc")):
            continue
        extra.append(rel)
    extra.sort()
    problems = []
    for rel, e in sorted(entries.items()):
        key = stats.get(rel)
        if key is None:
            problems.append("%s is missing" % rel)
            if e["type"] == "file":
                checked.bad[rel] = problems[-1]
            continue
        mode = key[4]
        if "%04o" % stat.S_IMODE(mode) != e["mode"] and e["type"] != "symlink":
            problems.append("%s has mode %04o, not %s" % (rel, stat.S_IMODE(mode), e["mode"]))
            if e["type"] == "file" and stat.S_ISREG(mode):
                checked.bad[rel] = problems[-1]
                continue
        if owner is not None and e["type"] == "file" and stat.S_ISREG(mode) and (key[5], key[6]) != owner:
            problems.append("%s is owned by %d:%d, not %d:%d" % (rel, key[5], key[6], owner[0], owner[1]))
            checked.bad[rel] = problems[-1]
            continue
        if e["type"] == "symlink":
            try:
                target = os.readlink(prefix + rel) if stat.S_ISLNK(mode) else None
            except OSError:
                target = None
            if target != e["target"]:
                problems.append("%s is not a symlink to %s" % (rel, e["target"]))
        elif e["type"] == "dir":
            if not stat.S_ISDIR(mode):
                problems.append("%s is not a directory" % rel)
        else:
            if not stat.S_ISREG(mode):
                problems.append("%s is not a regular file" % rel)
                if stat.S_ISLNK(mode):
                    checked.bad[rel] = problems[-1]
                continue
            if seal.trusts(rel, None, key):
                checked.files[rel] = key
                continue
            checked.hashed += 1
            if file_sha256(prefix + rel) != e["sha256"]:
                problems.append("%s: sha256 differs from the manifest" % rel)
                checked.bad[rel] = problems[-1]
            else:
                # The stat from before the read: a change while hashing moves ctime past it.
                checked.files[rel] = key
    return problems, extra, checked


# --------------------------------------------------------------------------------------- finalize


def write_file_atomic(path, data, mode, uid, gid):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if uid is not None:
        os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def lookup_ids(owner, group):
    import grp
    import pwd
    uid = pwd.getpwnam(owner).pw_uid if owner else None
    gid = grp.getgrnam(group).gr_gid if group else (pwd.getpwnam(owner).pw_gid if owner else None)
    if uid is None and gid is not None:
        uid = -1
    return uid, (gid if gid is not None else -1)


def chown_if_not(path, uid, gid):
    """lchown(path) to uid:gid (-1: either left as it is) unless it has them already."""
    st = os.lstat(path)
    if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
        os.lchown(path, uid, gid)


def cmd_finalize(args):
    """stdin: the rendered config file. Writes it (0640, owner/group), links shared paths, verifies the
    whole tree against the manifest, renames the partial into releases/<ID>, records 'staged'."""
    p = paths(args["root"])
    rid = check_id(args["id"])
    partial = args["partial"]
    if os.path.dirname(partial) != p["releases"] or not os.path.basename(partial).startswith(".partial-"):
        raise Refused("bad-input", "not a partial directory: %s" % partial)
    manifest = PARSED.load(args["manifest"])
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    config = stdin.read()
    uid, gid = lookup_ids(args.get("owner"), args.get("group"))
    allowed = [args["config_file"]]
    write_file_atomic(os.path.join(partial, args["config_file"]), config, 0o640, uid if uid != -1 else None, gid)
    for s in args.get("shared", []):
        target = os.path.join(p["shared"], s["path"])
        if not os.path.isdir(target):
            os.makedirs(target)
        link = os.path.join(partial, s["link"])
        if os.path.lexists(link):
            raise Refused("bad-artifact", "shared link %s: the release already has a %s there" % (s["link"], s["link"]))
        os.symlink(target, link)
        allowed.append(s["link"])
    manifest = dict(manifest, _allowed_extra=allowed)  # a copy: PARSED's is shared
    op_seal = Seal.load(op_seal_path(p, args["op"]))
    want_uid = uid if uid is not None else -1
    owned = want_uid != -1 or gid != -1
    if owned:
        # Directories, symlinks, the config and the shared links, by the manifest (one lstat each, not
        # a walk of every entry; never through a symlink on the way); receive and delta gave every file
        # they wrote its owner already, which the check below sees in each file's stat.
        real_dirs = RealDirs()
        for e in manifest["files"]:
            rel = safe_member_path(e["path"]) if e["type"] != "file" else None
            if rel and real_dirs.real(partial, rel.rpartition("/")[0]) and os.path.lexists(partial + "/" + rel):
                chown_if_not(partial + "/" + rel, want_uid, gid)
        for rel in allowed:
            chown_if_not(os.path.join(partial, rel), want_uid, gid)
        chown_if_not(partial, want_uid, gid)
    problems, extra, checked = verify_tree(partial, manifest, op_seal)
    if owned and not problems and not extra and [1 for key in checked.files.values() if (
            want_uid != -1 and key[5] != want_uid) or (gid != -1 and key[6] != gid)]:
        # A file without the owner (another operation's, or other owner arguments): every entry given
        # it, then checked again (a file changed here no longer matches its seal: hashed).
        for dirpath, dirnames, filenames in os.walk(partial):
            for name in dirnames + filenames:
                chown_if_not(os.path.join(dirpath, name), want_uid, gid)
        problems, extra, checked = verify_tree(partial, manifest, op_seal)
    if problems or extra:
        raise Refused("bad-artifact", "the unpacked release differs from its manifest: %s"
                      % "; ".join((problems + ["unexpected %s" % x for x in extra])[:5]))
    final = os.path.join(p["releases"], rid)
    if os.path.exists(final):
        # Already there from an earlier run (a retry after a failure): verify it and keep it.
        moves = InodeMoves()
        remove_tree(partial, moves)
        moves.finish(p)
        out({"release": final, "existed": True})
        return
    os.chmod(partial, 0o755)
    os.rename(partial, final)
    fsync_dir(p["releases"])
    keep_manifest(p, rid, args["manifest"])
    checked.save(seal_path(p, rid))
    # The listing verified (of the partial: its paths are relative, the rename changed none of them).
    save_tree_seal(p, rid, final, file_sha256(args["manifest"]), checked, allowed, checked.listed)
    if os.path.exists(op_seal_path(p, args["op"])):
        os.unlink(op_seal_path(p, args["op"]))
    ledger_append(p, [{"event": "staged", "release": rid, "op": args["op"], "by": args.get("by")}])
    out({"release": final, "existed": False})


def cmd_verify(args):
    """Checks an existing release against its manifest (before switching back to an older one, or a
    re-ship). An unchanged tree seal proves it at once; else each file is checked against its seal or
    hashed ("full": every file hashed). The manifest is the kept one when its sha256 is manifest_sha256;
    without either, answers need_manifest and the caller sends it."""
    p = paths(args["root"])
    rid = check_id(args["id"])
    release = os.path.join(p["releases"], rid)
    exclude = args.get("allowed_extra", [])
    want = args.get("manifest_sha256")
    kept = os.path.join(p["manifests"], "%s.json" % rid)
    if not args.get("full") and want and tree_unchanged(p, rid, release, want, exclude):
        out({"ok": True, "problems": [], "extra": [], "by": "tree seal", "hashed": 0})
        return
    manifest_path = args.get("manifest")
    if not manifest_path:
        if not (want and os.path.isfile(kept) and file_sha256(kept) == want):
            out({"need_manifest": True})
            return
        manifest_path = kept
    manifest = dict(PARSED.load(manifest_path), _allowed_extra=exclude)  # a copy: PARSED's is shared
    if manifest.get("id") != rid:
        raise Refused("bad-artifact", "manifest is for %s, not %s" % (manifest.get("id"), rid))
    # With "heal" (deploy.link: hardlink), files are also checked for their owner, and every file found
    # wrong (bytes, mode, owner, missing) is replaced by the right bytes from a release here that still
    # has them; what none has is answered as heal_need, for the caller to send (receive with "heal").
    heal = args.get("heal")
    ids = owner_ids(args)
    owner = None
    if heal:
        owner = (ids[0] if ids[0] != -1 else os.geteuid(), ids[1] if ids[1] != -1 else os.getegid())
    problems, extra, checked = verify_tree(release, manifest, None if args.get("full") else Seal.load(seal_path(p, rid)),
                                           owner)
    healed, need = [], []
    if heal and problems and not extra and len(checked.bad) == len(problems):
        healed, need = heal_release(p, rid, release, manifest, checked.bad, checked, ids, float(heal["mtime"]), args["op"])
        problems = []
        if need:
            need_file = heal_need_file(p, args["op"])
            if not os.path.isdir(os.path.dirname(need_file)):
                os.makedirs(os.path.dirname(need_file))
            with io.open(need_file, "w", encoding="utf-8") as f:
                f.write(u"%s" % json.dumps({"release": rid, "need": need}))
            # Seal what is right so far: the check after the files arrive reads only those.
            checked.save(seal_path(p, rid))
            out({"ok": False, "problems": [], "extra": [], "healed": healed, "heal_need": need,
                 "manifest": manifest_path, "by": "seal", "hashed": checked.hashed})
            return
    ok = not problems and not extra
    if heal and os.path.exists(heal_need_file(p, args["op"])):
        os.unlink(heal_need_file(p, args["op"]))
    if ok and args.get("keep_manifest"):
        if manifest_path != kept:
            keep_manifest(p, rid, manifest_path)
        checked.save(seal_path(p, rid))
        save_tree_seal(p, rid, release, file_sha256(kept), checked, exclude, None if healed else checked.listed)
    elif not ok and manifest_path == kept:
        # A check that found something wrong still seals every file it found right (the wrong ones are
        # not in it): once the operator puts the file back, the next check reads only that file. The
        # tree seal is not written: the tree as a whole did not match.
        checked.save(seal_path(p, rid))
    out({"ok": ok, "problems": problems[:20], "extra": extra[:20], "by": "full" if args.get("full") else "seal",
         "hashed": checked.hashed, "healed": healed})


def heal_need_file(p, op):
    return os.path.join(p["meta"], "tmp", "%s-heal.json" % op)


def cmd_config(args):
    """stdin: the rendered config file, written atomically (0640, owner/group) into an existing release."""
    p = paths(args["root"])
    rid = check_id(args["id"])
    release = os.path.join(p["releases"], rid)
    if os.path.islink(release) or not os.path.isdir(release):
        raise Refused("missing", "releases/%s is not a release directory on this host" % rid)
    uid, gid = lookup_ids(args.get("owner"), args.get("group"))
    data = getattr(sys.stdin, "buffer", sys.stdin).read()
    write_file_atomic(os.path.join(release, args["config_file"]), data, 0o640, uid if uid != -1 else None, gid)
    out({"written": True})


# ------------------------------------------------------------------------------------------ switch


def cmd_switch(args):
    """Points current at releases/<ID> by rename(2) of a fresh symlink over the old one: atomic, so a
    reader sees the old release or the new one, never nothing."""
    p = paths(args["root"])
    previous = read_current(p)
    tmp = os.path.join(p["root"], ".current-%s-%d" % (args["op"], os.getpid()))
    if os.path.lexists(tmp):
        os.unlink(tmp)
    if args["id"] is None:
        # Back to no release at all (a failed first deploy): move the link away, then drop it.
        if os.path.lexists(p["current"]):
            os.rename(p["current"], tmp)
            os.unlink(tmp)
        fsync_dir(p["root"])
        out({"previous": previous, "current": None})
        return
    rid = check_id(args["id"])
    if not os.path.isdir(os.path.join(p["releases"], rid)):
        raise Refused("missing", "releases/%s does not exist on this host" % rid)
    # The ledger first: if it cannot be written (disk full), nothing has switched yet.
    ledger_append(p, [{"event": "activated", "release": rid, "op": args["op"], "previous": previous, "by": args.get("by")}])
    os.symlink(os.path.join("releases", rid), tmp)
    os.rename(tmp, p["current"])
    fsync_dir(p["root"])
    out({"previous": previous, "current": rid})


def cmd_ledger(args):
    p = paths(args["root"])
    for e in args["entries"]:
        if e.get("release"):
            check_id(e["release"])
    ledger_append(p, args["entries"])
    out({"appended": len(args["entries"])})


# ------------------------------------------------------------------------------------------- prune


def prune_refusal(item, current, protect, op):
    """Why the agent refuses to remove a prune item, or None: the safety rule of src/plan.ts pruneRefusal
    (a unit test runs both on one table). Never `current`, nor what the running operation protects, nor
    a leftover of the running operation, nor a path outside releases/<partial> and .ckan-release/tmp/."""
    release = item.get("release")
    if release:
        if not set(release) <= ID_CHARS or len(release) > 64:
            return "outside the layout"
        if release == current:
            return "current"
        if release in protect:
            return "protected"
        return None
    path = item.get("path") or ""
    prefix = ".ckan-release/tmp/"
    tmp = path[len(prefix):] if path.startswith(prefix) else None
    name = path if tmp is None else tmp
    if name in ("", ".", "..") or "/" in name or "\0" in name or (
            tmp is None and not name.startswith((".partial-", ".prune-"))):
        return "outside the layout"
    if (name.startswith(op + "-") if tmp is not None else op in name):
        return "running operation"
    return None


def cmd_prune(args):
    """Removes what the tool's plan names (src/plan.ts prunePlan decides: releases beyond keep_releases,
    leftovers of interrupted operations): args remove [{release, why}], paths [{path, why}], protect
    [IDs]. Refuses the whole call, before removing anything, if one item breaks prune_refusal."""
    p = paths(args["root"])
    current = read_current(p)
    protect = set(args.get("protect") or [])
    items = list(args.get("remove") or []) + list(args.get("paths") or [])
    for item in items:
        why = prune_refusal(item, current, protect, args["op"])
        if why:
            raise Refused("protected", "refusing to prune %s: %s" % (item.get("release") or item.get("path"), why),
                          item=item)
    removed = []
    moves = InodeMoves()
    for item in args.get("remove") or []:
        r = item["release"]
        src = os.path.join(p["releases"], r)
        if not os.path.lexists(src):
            continue  # already gone: prune is idempotent
        doomed = os.path.join(p["releases"], ".prune-%s-%d" % (r, os.getpid()))
        os.rename(src, doomed)
        if os.path.islink(doomed):
            os.unlink(doomed)  # an adopted release: the link goes, the old venv stays where it was
        else:
            remove_tree(doomed, moves)
        for leftover in (os.path.join(p["manifests"], "%s.json" % r), seal_path(p, r), tree_seal_path(p, r)):
            if os.path.exists(leftover):
                os.unlink(leftover)
        removed.append({"release": r, "why": item["why"]})
    for item in args.get("paths") or []:
        rel = item["path"]
        path = os.path.join(p["root"], rel) if rel.startswith(".ckan-release/") else os.path.join(p["releases"], rel)
        if not os.path.lexists(path):
            continue
        remove_tree(path, moves)  # a partial of a linked delta shares inodes too
        removed.append({"release": None, "path": rel, "why": item["why"]})
    # The kept releases' seals follow the shared inodes whose ctime the removals moved.
    moves.finish(p)
    if removed:
        ledger_append(p, [{"event": "pruned", "release": r["release"], "why": r["why"], "op": args["op"]}
                          for r in removed if r["release"]])
    out({"removed": removed})


def cmd_clean(args):
    """Removes this operation's own partial directory (after a failure in phase 1)."""
    p = paths(args["root"])
    removed = []
    moves = InodeMoves()
    for d in list_releases(p)[1]:
        if d.endswith("-" + args["op"]) or args.get("all"):
            remove_tree(os.path.join(p["releases"], d), moves)  # a linked delta's partial shares inodes
            removed.append(d)
    moves.finish(p)
    for leftover in (op_manifest_path(p, args["op"]), delta_need_file(p, args["op"]),
                     op_seal_path(p, args["op"]), heal_need_file(p, args["op"])):
        if os.path.exists(leftover):
            os.unlink(leftover)
    out({"removed": removed})


# ----------------------------------------------------------------------------------- server files


def server_backup_path(p, dest):
    return os.path.join(p["meta"], "server-files", hashlib.sha256(dest.encode("utf-8")).hexdigest()[:16] + ".prev")


def cmd_install_file(args):
    try:
        install_file(args)
    except (IOError, OSError) as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise Refused("permission", "cannot install %s: %s (server files are written as root: the SSH "
                          "user needs sudo, see deploy.become)" % (args["dest"], os.strerror(e.errno)))
        raise


def install_file(args):
    """stdin: the rendered content of one web server file (WSGI script, vhost, uwsgi ini...). Installs it
    at dest with mode/owner/group by rename(2) of a temp file beside it, unless it is already so. The
    file it replaces is kept under .ckan-release/server-files/, so a failed deploy can put it back.
    With check: only says whether it would change."""
    p = paths(args["root"])
    dest = args["dest"]
    if not os.path.isabs(dest) or ".." in dest.split("/"):
        raise Refused("bad-input", "not an absolute path: %r" % dest)
    data = read_stdin_bytes()
    uid, gid = lookup_server_ids(args["owner"], args["group"])
    mode = int(args["mode"])
    if os.path.islink(dest):
        raise Refused("bad-input", "%s is a symlink (to %s): name the file itself in server.files" % (dest, os.readlink(dest)))
    exists = os.path.lexists(dest)
    if exists and not os.path.isfile(dest):
        raise Refused("bad-input", "%s exists and is not a regular file" % dest)
    same = False
    if exists:
        st = os.stat(dest)
        with open(dest, "rb") as f:
            same = f.read() == data and stat.S_IMODE(st.st_mode) == mode and st.st_uid == uid and st.st_gid == gid
    if same or args.get("check"):
        out({"changed": not same, "existed": exists, "backup": None})
        return
    backup = None
    if exists:
        backup = server_backup_path(p, dest)
        if not os.path.isdir(os.path.dirname(backup)):
            os.makedirs(os.path.dirname(backup), 0o700)
        st = os.stat(dest)
        with open(dest, "rb") as f:
            write_file_atomic(backup, f.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    parent = os.path.dirname(dest)
    made = None
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o755)
        made = parent
    write_file_atomic(dest, data, mode, uid, gid)
    fsync_dir(parent)
    out({"changed": True, "existed": exists, "backup": backup, "made": made})


def cmd_restore_file(args):
    """Puts back what install-file replaced: the kept copy, or no file at all if there was none."""
    p = paths(args["root"])
    dest = args["dest"]
    if not os.path.isabs(dest) or ".." in dest.split("/") or os.path.islink(dest):
        raise Refused("bad-input", "not a server file to restore: %r" % dest)
    backup = args.get("backup")
    if backup:
        if os.path.dirname(backup) != os.path.join(p["meta"], "server-files"):
            raise Refused("bad-input", "not a server-file backup: %r" % backup)
        st = os.stat(backup)
        with open(backup, "rb") as f:
            write_file_atomic(dest, f.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    elif os.path.isfile(dest) and not os.path.islink(dest):
        os.unlink(dest)
    fsync_dir(os.path.dirname(dest))
    out({"restored": dest})


def read_stdin_bytes():
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    return stream.read()


def lookup_server_ids(owner, group):
    import grp
    import pwd
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise Refused("bad-input", "no user %r on this host" % owner)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise Refused("bad-input", "no group %r on this host" % group)
    return uid, gid


# -------------------------------------------------------------------------------------- restarts


def process_table():
    """pid -> (comm, ppid, argv0, start) for every process this agent can see; start is the process's
    start time in clock ticks since boot (/proc/PID/stat field 22)."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                st = f.read().decode("utf-8", "replace")
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode("utf-8", "replace").strip()
        except (IOError, OSError):
            continue
        close = st.rindex(")")
        fields = st[close + 2:].split()
        if fields[0] == "Z":
            continue  # a zombie has exited: it serves nothing
        procs[int(name)] = (st[st.index("(") + 1:close], int(fields[1]), argv0, int(fields[19]))
    return procs


def now_ticks():
    """Now, in the clock ticks since boot that /proc/PID/stat counts process start times in."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            st = f.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return False
    return st[st.rindex(")") + 2:].split()[0] != "Z"


def run_command(argv, what):
    import subprocess
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.communicate()[0].decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise Refused("restart", "%s failed (exit %s): %s" % (what, proc.returncode, output[-500:]))
    return output


def display_name_matches(argv0, names):
    """mod_wsgi writes the display-name over argv[0], cut to the length httpd's argv[0] had (15 characters
    for /usr/sbin/httpd): a cut name matches too, when at least 8 characters of it are left."""
    for name in names:
        if argv0 == name or (len(argv0) >= 8 and name.startswith(argv0)):
            return True
    return False


def wsgi_daemons(group, procs=None):
    """mod_wsgi daemon processes of a WSGIDaemonProcess group: children of Apache (httpd / apache2)
    whose argv[0] is the group's display-name: "(wsgi:GROUP)" for display-name=%{GROUP}, or GROUP."""
    procs = process_table() if procs is None else procs
    names = ("(wsgi:%s)" % group, group)
    return sorted(pid for pid, (comm, ppid, argv0, start) in procs.items()
                  if display_name_matches(argv0, names) and ppid in procs and procs[ppid][0] in ("httpd", "apache2"))


def started_since(pids, mark):
    procs = process_table()
    return [pid for pid in pids if pid in procs and procs[pid][3] >= mark]


def wait_replaced(old, current, timeout, what, mark):
    """Waits until no pid of `old` is alive and `current()` lists at least one process started after
    `mark` (clock ticks since boot, taken before the signal): a process recycled by max-requests just
    before the signal runs the old code, and does not count."""
    deadline = time.time() + timeout
    while True:
        left = [pid for pid in old if alive(pid)]
        new = [pid for pid in started_since(current(), mark) if pid not in old]
        if not left and new:
            return new
        if time.time() > deadline:
            raise Refused("restart", "%s: after %ss, old processes still alive: %s; new ones: %s" % (
                what, timeout, left or "none", new or "none"))
        time.sleep(0.1)


def restart_apache(args):
    group = args["process_group"]
    timeout = args["timeout"]
    old = wsgi_daemons(group)
    if not old or args.get("first"):
        # Nothing of ours is serving (first release, or Apache without our daemons yet): a plain
        # graceful re-reads the config, which is what a first activation needs.
        mark = now_ticks()
        run_command([args["command"], "graceful"], "%s graceful" % args["command"])
        new = wait_replaced(old, lambda: wsgi_daemons(group), timeout,
                            "%s graceful: waiting for mod_wsgi daemon processes of group %s" % (args["command"], group), mark)
        return {"method": "apachectl graceful", "old": old, "new": new}
    import signal
    mark = now_ticks()
    for pid in old:
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise Refused("restart", "cannot signal mod_wsgi daemon process %d: %s" % (pid, e))
    new = wait_replaced(old, lambda: wsgi_daemons(group), timeout,
                        "graceful restart of mod_wsgi daemon group %s" % group, mark)
    return {"method": "SIGUSR1 to mod_wsgi daemons", "old": old, "new": new}


def uwsgi_master(pidfile):
    """The live uWSGI master the pidfile names, or None. The pidfile may be writable by the web app's
    user: the pid is used only if that process really is a uWSGI master (comm or argv[0] says uwsgi)."""
    if os.path.islink(pidfile):
        raise Refused("restart", "%s is a symlink: refusing to trust it as the uWSGI pidfile" % pidfile)
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (IOError, OSError, ValueError):
        return None
    proc = process_table().get(pid)
    if proc is None:
        return None
    comm, ppid, argv0, start = proc
    if "uwsgi" not in comm and "uwsgi" not in os.path.basename(argv0.split(" ")[0]):
        return None
    return pid


def uwsgi_workers(master):
    if master is None:
        return []
    return sorted(pid for pid, (comm, ppid, argv0, start) in process_table().items() if ppid == master)


def restart_uwsgi(args):
    pidfile = args["pidfile"]
    timeout = args["timeout"]
    master = uwsgi_master(pidfile)
    if master is None:
        if not args.get("start"):
            raise Refused("restart", "uwsgi is not running: %s names no live process; set server.uwsgi.start to a command that starts it" % pidfile)
        mark = now_ticks()
        run_command(["sh", "-c", args["start"]], "starting uwsgi")
        new = wait_replaced([], lambda: uwsgi_workers(uwsgi_master(pidfile)), timeout,
                            "waiting for uwsgi workers after %r" % args["start"], mark)
        return {"method": "start", "old": [], "new": new}
    import signal
    old = uwsgi_workers(master)
    # SIGHUP: uWSGI's graceful reload. The master waits for the workers to finish their requests,
    # then re-executes itself (same pid, the listening socket kept open: new connections wait in its
    # backlog), loads the application anew from `current`, and forks fresh workers.
    mark = now_ticks()
    try:
        os.kill(master, signal.SIGHUP)
    except OSError as e:
        raise Refused("restart", "cannot signal the uWSGI master %d: %s" % (master, os.strerror(e.errno)))
    new = wait_replaced(old, lambda: uwsgi_workers(uwsgi_master(pidfile)), timeout,
                        "graceful reload of uwsgi (master %d)" % master, mark)
    return {"method": "SIGHUP to the uwsgi master", "old": old, "new": new}


def cmd_restart(args):
    recipe = args["recipe"]
    t0 = time.time()
    if recipe == "apache-graceful":
        r = restart_apache(args)
    elif recipe == "uwsgi-reload":
        r = restart_uwsgi(args)
    else:
        raise Refused("bad-input", "no restart recipe %r" % recipe)
    r["seconds"] = round(time.time() - t0, 3)
    out(r)


# ----------------------------------------------------------------------------------- server facts


def command_output(argv):
    """(exit code, stdout+stderr) of a command, or None when it cannot be run (not installed)."""
    import subprocess
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except (IOError, OSError):
        return None
    output = proc.communicate()[0].decode("utf-8", "replace")
    return proc.returncode, output


def apache_compiled(command):
    """`<command> -V` of the first Apache control command or binary that answers: its version, its
    compiled-in HTTPD_ROOT, SERVER_CONFIG_FILE and DEFAULT_ERRORLOG."""
    import re
    tried = []
    for c in (command, "apachectl", "httpd", "apache2", "/usr/sbin/apachectl", "/usr/sbin/httpd", "/usr/sbin/apache2"):
        if c in tried:
            continue
        tried.append(c)
        r = command_output([c, "-V"])
        if r is None:
            continue
        m = re.search(r"Server version:\s*Apache/(\d+\.\d+\.\d+)", r[1])
        if not m:
            continue
        defs = dict(re.findall(r'-D\s+(\w+)="([^"]*)"', r[1]))
        return {"command": c, "version": m.group(1), "root": defs.get("HTTPD_ROOT"),
                "config_file": defs.get("SERVER_CONFIG_FILE"), "default_errorlog": defs.get("DEFAULT_ERRORLOG")}, tried
    return None, tried


def apache_load_modules(root, config_file):
    """{module name: file} of the LoadModule lines in Apache's config and the files it includes
    (Include / IncludeOptional, with wildcards and directories), relative paths against ServerRoot.
    <IfModule>/<IfDefine> are not evaluated: a LoadModule anywhere counts."""
    import glob
    found = {}
    seen = set()
    server_root = [root or "/"]

    def absolute(p):
        p = p.strip().strip('"')
        return p if os.path.isabs(p) else os.path.join(server_root[0], p)

    def read(path, depth):
        if depth > 20 or path in seen:
            return
        seen.add(path)
        if os.path.isdir(path):
            for f in sorted(os.listdir(path)):
                read(os.path.join(path, f), depth + 1)
            return
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except (IOError, OSError):
            return
        for line in text.splitlines():
            words = line.strip().split(None, 2)
            if not words or words[0].startswith("#"):
                continue
            key = words[0].lower()
            if key == "serverroot" and len(words) > 1:
                server_root[0] = words[1].strip('"')
            elif key == "loadmodule" and len(words) > 2:
                found.setdefault(words[1], absolute(words[2]))
            elif key in ("include", "includeoptional") and len(words) > 1:
                pattern = absolute(" ".join(words[1:]))
                if "${" in pattern:
                    continue  # an environment variable of the init script: not known here
                for p in sorted(glob.glob(pattern)):
                    read(p, depth + 1)

    if config_file:
        read(absolute(config_file), 0)
    return found


def package_version(path):
    """(package, upstream version) of the dpkg or rpm package that owns `path`, or (None, None)."""
    import re
    for p in (path, os.path.realpath(path)):
        r = command_output(["dpkg-query", "-S", p])
        if r and r[0] == 0 and ":" in r[1]:
            pkg = r[1].split(":")[0].split(",")[0].strip()
            v = command_output(["dpkg-query", "-W", "-f", "${Version}", pkg])
            if v and v[0] == 0 and v[1].strip():
                # [epoch:]upstream[-debian revision]
                return pkg, re.sub(r"-[^-]*$", "", v[1].strip().split(":")[-1])
        r = command_output(["rpm", "-qf", "--qf", "%{NAME} %{VERSION}\\n", p])
        if r and r[0] == 0 and len(r[1].split()) == 2:
            name, version = r[1].split()
            return name, version
    return None, None


def mod_wsgi_facts(module):
    """What the mod_wsgi module file says: its version (the owning package's, else mod_wsgi 3.x's
    "mod_wsgi/X.Y" banner string in the file; None when neither tells) and the Python it links."""
    import re
    try:
        with open(module, "rb") as f:
            data = f.read()
    except (IOError, OSError) as e:
        return {"module": module, "version": None, "source": "unreadable: %s" % e, "python": None}
    pkg, version = package_version(module)
    source = "package %s %s" % (pkg, version) if pkg else None
    if not version:
        m = re.search(br"mod_wsgi/(\d+\.\d+(?:\.\d+)?)", data)
        if m:
            version = m.group(1).decode("ascii")
            source = "the module's banner string"
    py = re.search(br"libpython(\d+\.\d+)", data)
    return {"module": module, "version": version, "source": source,
            "python": py.group(1).decode("ascii") if py else None}


def cmd_server_facts(args):
    """What the web server recipes and templates depend on (README "Web servers"): Apache's version, where
    its logs go, the mod_wsgi it loads (version, Python); and whether each of `paths` is an executable."""
    apache, tried = apache_compiled(args.get("command") or "apachectl")
    if apache:
        root = apache["root"] or "/"
        config = apache["config_file"] or ""
        config_path = config if os.path.isabs(config) else os.path.join(root, config)
        modules = apache_load_modules(root, config_path)
        envvars = os.path.join(os.path.dirname(config_path), "envvars")
        try:
            with open(envvars) as f:
                debian_logs = "APACHE_LOG_DIR" in f.read()
        except (IOError, OSError):
            debian_logs = False
        errorlog = apache["default_errorlog"] or "logs/error_log"
        apache = {
            "command": apache["command"],
            "version": apache["version"],
            "config": config_path,
            # Debian/Ubuntu define APACHE_LOG_DIR in envvars; elsewhere the compiled-in log directory.
            "log_dir": "${APACHE_LOG_DIR}" if debian_logs else (os.path.dirname(errorlog) or "logs"),
            "mod_wsgi": mod_wsgi_facts(modules["wsgi_module"]) if "wsgi_module" in modules else None,
        }
    out({"apache": apache, "apache_tried": tried,
         "paths": dict((p, os.path.isfile(p) and os.access(p, os.X_OK)) for p in args.get("paths", []))})


# ------------------------------------------------------------------------------------- healthcheck


HTTP_URL = re.compile(r"^http://(\[[^\]/]+\]|[^\[\]/:?#@]+)(?::([0-9]{1,5}))?([/?][^#]*)?(#.*)?$")
HTTP_ANSWER_MAX = 16 << 20


def http_get(url, headers, timeout):
    """(status, body) of a GET of url. A plain http:// URL is fetched over a socket here (HTTP/1.0, the
    answer read to its close): urllib and http.client import email and ssl, about 40 ms of every
    operation's agent CPU on each host for one local request. https, an answer that redirects (urllib
    follows it), refuses HTTP/1.0 (505) or does not parse goes through urllib, as before."""
    import socket
    m = HTTP_URL.match(url)
    if m:
        host, port, target = m.group(1), int(m.group(2) or 80), m.group(3) or "/"
        if target.startswith("?"):
            target = "/" + target
        name = headers.get("Host") or (host if port == 80 else "%s:%d" % (host, port))
        conn = socket.create_connection((host.strip("[]"), port), timeout)
        try:
            conn.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\nAccept-Encoding: identity\r\n"
                          "User-Agent: ckan-release\r\nConnection: close\r\n\r\n" % (target, name)).encode("utf-8"))
            parts, size = [], 0
            while size <= HTTP_ANSWER_MAX:
                data = conn.recv(1 << 16)
                if not data:
                    break
                parts.append(data)
                size += len(data)
        finally:
            conn.close()
        head, sep, body = b"".join(parts).partition(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        status = lines[0].split(" ", 2)
        fields = dict((k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:]))
        length = fields.get("content-length", "")
        if sep and len(status) >= 2 and status[0].startswith("HTTP/1.") and status[1].isdigit() and \
                not status[1].startswith("3") and status[1] != "505" and "chunked" not in fields.get("transfer-encoding", "").lower() \
                and (not length.isdigit() or len(body) >= int(length)):
            return int(status[1]), body[:int(length)] if length.isdigit() else body
    try:
        from urllib.request import Request, urlopen
        from urllib.error import HTTPError
    except ImportError:
        from urllib2 import HTTPError, Request, urlopen
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)
        return resp.getcode(), resp.read()
    except HTTPError as e:
        return e.code, b""


def cmd_health(args):
    """Polls CKAN's status_show until it answers 200 with every configured plugin, or the timeout."""
    # The site's Host header: on a port a distribution's default site shares, only it reaches CKAN's vhost.
    headers = {"Host": args["host"]} if args.get("host") else {}
    deadline = time.time() + args["timeout"]
    last = "no answer"
    while True:
        try:
            code, raw = http_get(args["url"], headers, 10)
            body = raw.decode("utf-8", "replace")
            if code == 200:
                data = json.loads(body)
                result = data.get("result") or {}
                plugins = result.get("extensions") or []
                missing = [x for x in args["plugins"] if x not in plugins]
                if data.get("success") and not missing:
                    out({"healthy": True, "ckan_version": result.get("ckan_version"), "extensions": plugins,
                         "fixture": result.get("fixture")})
                    return
                last = "status_show answered without plugins %s" % ", ".join(missing) if missing else "success is false"
            else:
                last = "HTTP %s" % code
        except Exception as e:  # noqa: any failure is "not healthy yet"
            code = getattr(e, "code", None)
            last = "HTTP %s" % code if code else "%s: %s" % (type(e).__name__, e)
        if time.time() > deadline:
            via = " (Host: %s)" % args["host"] if args.get("host") else ""
            raise Refused("unhealthy", "%s%s did not become healthy within %ss: %s" % (args["url"], via, args["timeout"], last))
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------ fetch
# deploy.fetch: direct. The host downloads the artifact from the S3 store itself, through presigned GET
# URLs the tool gives on stdin: never on a command line, and never printed (each carries a signature;
# errors name chunks by their sha256, and no_url() takes any URL out of a message). Every chunk's
# length and sha256 are checked as it arrives; the chunks then go, in order, through the same receive
# as an archive sent over SSH. Chunks are kept in .ckan-release/chunks/<sha256>, the chunk cache: a
# later full ship downloads only what it lacks; after a receive it keeps that artifact's chunks only.

FETCH_PARALLEL = 4
FETCH_TIMEOUT = 30


class StoreUnreachable(Exception):
    """No usable answer from the store (refused, DNS, TLS, a timeout, 403 or another HTTP error): the
    tool sends through SSH instead."""


class StoreDamaged(Exception):
    """The store answered with the wrong bytes, or has no object where the manifest says: refused."""


def no_url(text):
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S*", "<url>", text)


def web():
    """(urlopen, HTTPError, the errors of a failed download), imported only by the commands that fetch:
    http.client and urllib (with ssl and email) were 40 ms of every agent's start, a third of it."""
    import socket
    try:
        import http.client as httplib
        from urllib.error import HTTPError, URLError
        from urllib.request import urlopen
    except ImportError:  # Python 2
        import httplib
        from urllib2 import HTTPError, URLError, urlopen
    return urlopen, HTTPError, (URLError, httplib.HTTPException, socket.error, socket.timeout, ValueError,
                                EnvironmentError)


def reason_of(e):
    _, HTTPError, network_errors = web()
    URLError = network_errors[0]
    if isinstance(e, HTTPError):
        code = ""
        try:
            m = re.search(r"<Code>([A-Za-z0-9]+)</Code>", e.read(4096).decode("utf-8", "replace"))
            code = " %s" % m.group(1) if m else ""
        except Exception:  # the body is only a detail
            pass
        return "HTTP %d%s" % (e.code, code)
    if isinstance(e, URLError):
        e = e.reason
    return no_url("%s: %s" % (type(e).__name__, e))


def download(url, size, sha256, dest):
    """GETs url into dest (through a temporary file, renamed once its length and sha256 match)."""
    urlopen, HTTPError, NETWORK_ERRORS = web()
    tmp = "%s.part-%d-%d" % (dest, os.getpid(), id(threading.current_thread()))
    try:
        try:
            r = urlopen(url, timeout=FETCH_TIMEOUT)
        except HTTPError as e:
            if e.code == 404:
                raise StoreDamaged("the store does not have it (%s)" % reason_of(e))
            raise StoreUnreachable(reason_of(e))
        except NETWORK_ERRORS as e:
            raise StoreUnreachable(reason_of(e))
        h = hashlib.sha256()
        n = 0
        with open(tmp, "wb") as f:
            while True:
                try:
                    data = r.read(1 << 20)
                except NETWORK_ERRORS as e:
                    raise StoreUnreachable(reason_of(e))
                if not data:
                    break
                n += len(data)
                if n > size:
                    raise StoreDamaged("the store sent more than its %d bytes" % size)
                h.update(data)
                f.write(data)
        r.close()
        if n != size or h.hexdigest() != sha256:
            raise StoreDamaged("the store sent %d bytes with sha256 %s, expected %d bytes with sha256 %s"
                               % (n, h.hexdigest(), size, sha256))
        os.rename(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def chunk_cache(p):
    d = os.path.join(p["meta"], "chunks")
    if not os.path.isdir(d):
        os.makedirs(d)
    return d


def store_refusal(e, what):
    if isinstance(e, StoreUnreachable):
        return Refused("store-unreachable", "cannot fetch %s from the store: %s" % (what, e))
    return Refused("bad-artifact", "%s from the store is refused: %s (the bucket holds a damaged or missing "
                   "object: publish the artifact again, `ckan-release artifacts publish ID`)" % (what, e))


def check_op(op):
    """An operation ID as the tool makes them (hex), refused if it could name a path elsewhere."""
    if not isinstance(op, (type(u""), str)) or not re.match(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}\Z", op):
        raise Refused("bad-input", "not an operation ID: %r" % (op,))
    return op


def op_manifest_path(p, op):
    """Where this operation's copy of the release's manifest is (put-manifest, fetch-manifest), for
    receive, delta, finalize and verify; `clean` removes it."""
    return os.path.join(p["meta"], "tmp", "%s-manifest.json" % op)


def cmd_put_manifest(args):
    """stdin: the release's manifest, as the sender has it (with "gzip", gzipped: inflated here, never
    past the bytes given). Written to this operation's manifest path once all of it arrived with the
    bytes and sha256 the sender gave (a cut-off stream writes nothing); receive, delta and verify read
    and check its content. Answers {manifest: the path}."""
    p = paths(args["root"])
    op = check_op(args.get("op"))
    data = read_stdin_bytes()
    want = args.get("bytes")
    if isinstance(want, bool) or not isinstance(want, (int, type(2 ** 64))) or want < 0:
        raise Refused("bad-input", "put-manifest: bytes must be the manifest's length, not %r" % (want,))
    if args.get("gzip"):
        try:
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, want + 1)
        except zlib.error as e:
            raise Refused("bad-input", "the manifest arrived damaged (not gzip as sent): %s" % e)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != want or digest != args["sha256"]:
        raise Refused("bad-input", "the manifest arrived cut off or changed: %d bytes (sha256 %s), expected %d (%s)"
                      % (len(data), digest, args["bytes"], args["sha256"]))
    path = op_manifest_path(p, op)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    PARSED.wrote(path)
    out({"manifest": path})


def cmd_fetch_manifest(args):
    """stdin: {"url": the manifest's presigned URL, "chunks": [{sha256, bytes}] of its archive}. Puts the
    manifest at this operation's manifest path (checked against the bytes and sha256 the tool read from
    the store) and answers it and the chunks the chunk cache holds, each read and checked (a damaged one
    is removed)."""
    p = paths(args["root"])
    rid = check_id(args["id"])
    given = json.loads(read_stdin_bytes().decode("utf-8"))
    dest = op_manifest_path(p, check_op(args.get("op")))
    if not os.path.isdir(os.path.dirname(dest)):
        os.makedirs(os.path.dirname(dest))
    try:
        download(given["url"], args["bytes"], args["sha256"], dest)
    except (StoreUnreachable, StoreDamaged) as e:
        raise store_refusal(e, "the manifest of %s" % rid)
    PARSED.wrote(dest)
    if PARSED.load(dest).get("id") != rid:
        raise Refused("bad-artifact", "the store's manifest is not that of %s" % rid)
    cache = chunk_cache(p)
    cached = []
    for c in given["chunks"]:
        path = os.path.join(cache, c["sha256"])
        if c["sha256"] in cached or not os.path.isfile(path):
            continue
        if os.path.getsize(path) == c["bytes"] and file_sha256(path) == c["sha256"]:
            cached.append(c["sha256"])
        else:
            os.unlink(path)
    out({"cached": cached, "manifest": dest})


class Fetching(object):
    """The downloads of one fetch: FETCH_PARALLEL threads, an event per chunk, the first failure."""

    def __init__(self, cache, todo):
        self.cache = cache
        self.todo = list(todo)  # (sha256, bytes, url), in the archive's order
        self.ready = dict((sha, threading.Event()) for sha, _, _ in self.todo)
        self.first = threading.Event()
        self.failure = None
        self.stopped = False
        self.lock = threading.Lock()
        self.next = 0
        self.downloaded = 0
        self.threads = [threading.Thread(target=self._work) for _ in range(min(FETCH_PARALLEL, len(self.todo)))]
        for t in self.threads:
            t.daemon = True
            t.start()
        if not self.todo:
            self.first.set()

    def _work(self):
        while True:
            with self.lock:
                if self.failure is not None or self.stopped or self.next >= len(self.todo):
                    return
                sha, size, url = self.todo[self.next]
                self.next += 1
            try:
                download(url, size, sha, os.path.join(self.cache, sha))
                with self.lock:
                    self.downloaded += size
            except Exception as e:  # every failure ends the fetch, and is reported by the main thread
                with self.lock:
                    if self.failure is None:
                        self.failure = (sha, e)
                for ev in list(self.ready.values()) + [self.first]:
                    ev.set()
                return
            self.ready[sha].set()
            self.first.set()

    def wait(self, sha):
        ev = self.ready.get(sha)
        if ev is not None:
            while not ev.wait(1):
                pass
        if self.failure is not None:
            raise IOError("a download failed")

    def refusal(self):
        sha, e = self.failure
        if isinstance(e, (StoreUnreachable, StoreDamaged)):
            return store_refusal(e, "chunk %s" % sha)
        if no_space(e):
            return Refused("no-space", "no space left on the host for the chunk cache: %s" % e)
        return Refused("store-unreachable", "cannot fetch chunk %s from the store: %s" % (sha, no_url(str(e))))


class ChunkStream(object):
    """The archive for receive: the chunks in order, each read from the cache once it is there."""

    def __init__(self, fetching, shas):
        self.fetching = fetching
        self.shas = shas
        self.i = 0
        self.f = None

    def read(self, n=-1):
        while self.i < len(self.shas):
            if self.f is None:
                self.fetching.wait(self.shas[self.i])
                self.f = open(os.path.join(self.fetching.cache, self.shas[self.i]), "rb")
            data = self.f.read(n if n is not None and n > 0 else 1 << 20)
            if data:
                return data
            self.f.close()
            self.f = None
            self.i += 1
        return b""


def cmd_fetch(args):
    """stdin: {"chunks": [{sha256, bytes, url?}]}, the archive's chunks in order, with a presigned URL for
    each one the chunk cache lacks. Downloads those (FETCH_PARALLEL at once) and feeds every chunk, in
    order and as soon as it is there, to receive: the same checks as an archive sent through SSH. Nothing
    is unpacked before the first download has arrived, so a store this host cannot reach is refused
    ("store-unreachable": the tool sends through SSH instead) with the partial directory untouched."""
    p = paths(args["root"])
    chunks = json.loads(read_stdin_bytes().decode("utf-8"))["chunks"]
    cache = chunk_cache(p)
    todo, seen = [], set()
    for c in chunks:
        if c["sha256"] in seen:
            continue
        seen.add(c["sha256"])
        if c.get("url"):
            todo.append((c["sha256"], c["bytes"], c["url"]))
        elif not os.path.isfile(os.path.join(cache, c["sha256"])):
            raise Refused("bad-input", "chunk %s is not in the chunk cache and has no URL" % c["sha256"])
    fetching = Fetching(cache, todo)
    started = time.time()
    while not fetching.first.wait(1):
        pass
    if fetching.failure is not None:
        raise fetching.refusal()
    try:
        got = receive(args, ChunkStream(fetching, [c["sha256"] for c in chunks]))
    except Refused:
        if fetching.failure is not None:
            raise fetching.refusal()
        raise
    finally:
        fetching.stopped = True
    for name in os.listdir(cache):
        if name not in seen:
            os.unlink(os.path.join(cache, name))
    got.update({"downloaded": len(todo), "downloaded_bytes": fetching.downloaded,
                "cached": len(seen) - len(todo), "seconds": round(time.time() - started, 3)})
    out(got)


def no_space(e):
    """A full disk (blocks or inodes) or an exhausted quota."""
    return getattr(e, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


COMMANDS = {
    "facts": cmd_facts,
    "setup": cmd_setup,
    "lock": cmd_lock,
    "unlock": cmd_unlock,
    "receive": cmd_receive,
    "put-manifest": cmd_put_manifest,
    "fetch-manifest": cmd_fetch_manifest,
    "fetch": cmd_fetch,
    "delta": cmd_delta,
    "finalize": cmd_finalize,
    "verify": cmd_verify,
    "config": cmd_config,
    "switch": cmd_switch,
    "ledger": cmd_ledger,
    "prune": cmd_prune,
    "clean": cmd_clean,
    "health": cmd_health,
    "install-file": cmd_install_file,
    "restore-file": cmd_restore_file,
    "restart": cmd_restart,
    "server-facts": cmd_server_facts,
}


def run_agent_command(command, args):
    """Runs one command; its answer is what it out()s. Returns a refusal as {error, message, details},
    or None; anything else it raises is not a refusal (a bug, or the host failing under it)."""
    try:
        COMMANDS[command](args)
    except Refused as e:
        return {"error": e.kind, "message": e.message, "details": e.details}
    except (IOError, OSError) as e:
        if not no_space(e):
            raise
        return {"error": "no-space", "message": "no space left on the host: %s" % e, "details": {}}
    return None


# ------------------------------------------------------------------------------------------- serve
# One privileged process serves a whole operation on this host (README "How a host is driven"): it
# reads requests, one JSON object a line, on stdin and writes one answer line per request on stdout:
#   request  {"id": N, "command": "facts", "args": {...}, "stdin": false}
#   answer   {"id": N, "status": "done", "answer": {...}}        (exit 0 of a one-shot call)
#            {"id": N, "status": "refused", "error": KIND, "message": ..., "details": {...}}   (exit 3)
#            {"id": N, "status": "failed", "message": ..., "stderr": traceback}    (any other exit)
# A request with "stdin": true is followed by its data (what a one-shot call reads on stdin) in frames:
# a line with the decimal byte count, then that many bytes; "0" ends the data, "-" says the sender gave
# up (the command then sees a read error, as when the connection drops). The answer may come before
# the data ends (a refusal early in an archive): the rest of the data is read and dropped.
# Requests run one at a time, each to its end: when stdin closes in the middle of one (the connection
# dropped, the client was killed), that command still finishes (or fails, if it was reading the data
# that was cut off) exactly as a one-shot call would, its answer goes nowhere, and the process exits
# without reading anything more: no later step ever runs on a connection that was lost.


class FdReader(object):
    """Buffered reads from a file descriptor, without Python's file objects (see StdinFd)."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def _fill(self):
        if self.eof:
            return False
        try:
            data = os.read(self.fd, 1 << 20)
        except OSError as e:
            if e.errno == errno.EINTR:
                return True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf = self.buf + data if self.buf else data
        return True

    def readline(self, limit=64 << 20):
        """A line with its newline; without one (end of input mid-line) what there was, or b""."""
        while b"\n" not in self.buf:
            if len(self.buf) > limit or not self._fill():
                line, self.buf = self.buf, b""
                return line
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read_some(self, n):
        """Between 1 and n bytes, or b"" at the end of input."""
        if not self.buf and not self._fill():
            return b""
        if len(self.buf) <= n:
            data, self.buf = self.buf, b""
        else:
            data, self.buf = self.buf[:n], self.buf[n:]
        return data


class CutOff(IOError):
    """The request's data ended before its end frame: the connection dropped, or the sender gave up."""


class FramedInput(object):
    """One request's data, de-framed: a file object for the command (read until b""). Reads are
    serialised (receive inflates in a thread of its own); once the command has returned, that thread
    (which may still be reading, or stuck) sees the end, and drain() alone reads what is left."""

    def __init__(self, reader, framed):
        self.reader = reader
        self.left = 0
        self.done = not framed
        self.error = None
        self.lock = threading.Lock()
        self.detached = False

    def read(self, n=-1):
        if n is None or n < 0:
            parts = []
            while True:
                chunk = self.read(1 << 20)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        with self.lock:
            if self.detached:
                return b""
            return self._read(n)

    def _read(self, n):
        if self.error is not None:
            raise self.error
        while not self.done and self.left == 0:
            header = self.reader.readline(32)
            if not header.endswith(b"\n"):
                self.error = CutOff(errno.EPIPE, "the connection was lost in the middle of the data")
                raise self.error
            header = header.strip()
            if header == b"0":
                self.done = True
            elif header == b"-":
                self.done = True  # the data ended where the sender gave up: the protocol goes on
                self.error = CutOff(errno.EPIPE, "the sender stopped sending the data")
                raise self.error
            else:
                try:
                    self.left = int(header)
                except ValueError:
                    self.left = -1
                if self.left <= 0:
                    self.error = CutOff(errno.EPROTO, "bad frame header %r" % header[:20])
                    raise self.error
        if self.done or n == 0:
            return b""
        data = self.reader.read_some(min(n, self.left))
        if not data:
            self.error = CutOff(errno.EPIPE, "the connection was lost in the middle of the data")
            raise self.error
        self.left -= len(data)
        return data

    def drain(self):
        """Reads (and drops) the rest, to the end frame; False if the input ended (or broke) first."""
        with self.lock:
            self.detached = True
        try:
            while True:
                with self.lock:
                    if not self._read(1 << 20):
                        return True
        except IOError:
            return self.done


def serve_one(req, reader, install=None):
    """Runs one request; returns (answer, its data)."""
    rid = req.get("id") if isinstance(req, dict) else None
    if isinstance(req, dict) and req.get("command") == "install-agent":
        # A session started from the agent's text (nothing written yet) writes the agent after all.
        try:
            return {"id": rid, "status": "done", "answer": {"installed": bool(install and install())}}, \
                FramedInput(reader, bool(req.get("stdin")))
        except (IOError, OSError) as e:
            return {"id": rid, "status": "failed", "message": "cannot install the host agent: %s" % e,
                    "stderr": ""}, FramedInput(reader, bool(req.get("stdin")))
    if not isinstance(req, dict) or req.get("command") not in COMMANDS or not isinstance(req.get("args"), dict):
        return ({"id": rid, "status": "failed", "message": "not a request for a known command: %r"
                 % (req.get("command") if isinstance(req, dict) else req,), "stderr": ""},
                FramedInput(reader, bool(isinstance(req, dict) and req.get("stdin"))))
    data = FramedInput(reader, bool(req.get("stdin")))
    SERVING["input"], SERVING["answer"] = data, None
    saved_stdin = sys.stdin
    sys.stdin = data  # commands that read sys.stdin (or .buffer of it) read the request's data
    try:
        refusal = run_agent_command(req["command"], req["args"])
        if refusal is not None:
            answer = dict(refusal, id=rid, status="refused")
        elif SERVING["answer"] is None:
            answer = {"id": rid, "status": "failed", "message": "%s gave no answer" % req["command"], "stderr": ""}
        else:
            answer = {"id": rid, "status": "done", "answer": SERVING["answer"]}
    except Exception as e:  # a bug, or the host failing under the command: what a one-shot exit 1 says
        import traceback
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        answer = {"id": rid, "status": "failed", "message": "%s: %s" % (type(e).__name__, e), "stderr": tb}
    finally:
        sys.stdin = saved_stdin
        SERVING["input"], SERVING["answer"] = None, None
    return answer, data


def serve(install=None):
    """Serves requests until stdin ends (see above). Exit 0 at a clean end, 4 when stdin ended inside
    a request or its data. install: how the bootstrap that started this agent from its text (without
    writing it) writes it to the host, for the install-agent request."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    # Nothing else may read the requests or write into the answers: subprocesses and stray prints get
    # /dev/null for stdin and stderr for stdout.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    reader = FdReader(proto_in)

    def send(obj):
        data = (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(proto_out, data):]
        except OSError:
            return False  # the client is gone; the loop ends at the end of stdin
        return True

    send({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0], "executable": sys.executable})
    while True:
        line = reader.readline()
        if not line:
            return 0
        if not line.endswith(b"\n"):
            return 4  # a request cut off: never run
        try:
            req = json.loads(line.decode("utf-8"))
        except ValueError:
            req = None
        answer, data = serve_one(req, reader, install)
        send(answer)
        if not data.drain():
            return 4


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["serve"]:
        return serve()
    if len(argv) != 2 or argv[0] not in COMMANDS:
        sys.stderr.write("usage: ckan_release_host.py COMMAND JSON-ARGS | serve\n")
        return 2
    refusal = run_agent_command(argv[0], json.loads(argv[1]))
    if refusal is not None:
        out(refusal)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
