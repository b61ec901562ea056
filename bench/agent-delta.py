# -*- coding: utf-8 -*-
"""Times (and profiles) the host agent's steps of a delta ship, without Docker or SSH.

usage: python3 bench/agent-delta.py [--python PY] [--agent SCRIPT]... [--runs N] [--profile DIR]
                                    [--work DIR] [--files N] [--link hardlink|copy]

Makes a release tree of the bench release's shape (about 29,000 entries, 27,800 files, 1,300
directories, 290 MB: packages of small modules and their __pycache__, a few symlinks, like a venv's site-packages), its manifest and archive as
the build packs them (GNU tar, owner 0, one fixed mtime), receives and finalizes it as release A with
the agent's own commands, switches to it and marks it healthy; then, per agent script given (e.g. the
one on main and this checkout's, taking turns), ships B (one small package changed) as the tool does:
delta, receive of the delta archive, finalize, switch; and prints each step's wall time. Between runs
B is removed, as the bench removes it, and A is verified again (its seals re-proved by the check the
bench's next ship would make). --profile writes one cProfile file per step and run.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import time

ID_A = "20260101000000Z-aaaaaaaa"
ID_B = "20260102000000Z-bbbbbbbb"
MTIME = 946684800
OWNER = {"owner": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}


def make_tree(root, files, changed):
    """A venv-like tree: lib/python3/site-packages/<pkg>/<sub>/mod.py and __pycache__/mod.pyc, data files
    and a few symlinks; `changed` alters one small package (pkg0007)."""
    rng = random.Random(7)
    sp = os.path.join(root, "lib", "python3", "site-packages")
    n = 0
    pkg = 0
    while n < files:
        name = "pkg%04d" % pkg
        for sub in range(2):
            d = os.path.join(sp, name, "sub%d" % sub)
            os.makedirs(os.path.join(d, "__pycache__"))
            for m in range(rng.randint(20, 34)):
                size = rng.randint(200, 20000)
                body = (("# %s.%d.%d\n" % (name, sub, m)) + "x = %d\n" % (m + (1 if changed and pkg == 7 else 0))
                        + "y" * size + "\n").encode()
                for rel, data in (("mod%d.py" % m, body), ("__pycache__/mod%d.cpython.pyc" % m, body[::-1])):
                    with open(os.path.join(d, rel), "wb") as f:
                        f.write(data)
                    n += 1
        if pkg % 50 == 0:
            os.symlink("sub0", os.path.join(sp, name, "alias"))
        pkg += 1
    os.makedirs(os.path.join(root, "bin"))
    with open(os.path.join(root, "bin", "ckan"), "wb") as f:
        f.write(b"#!/bin/sh\n")
    os.chmod(os.path.join(root, "bin", "ckan"), 0o755)
    os.symlink("python3", os.path.join(root, "bin", "python"))
    subprocess.check_call(["find", root, "-exec", "touch", "-h", "-d", "@%d" % MTIME, "{}", "+"])


def manifest_of(root, rid):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = "%04o" % (st.st_mode & 0o7777)
            if os.path.islink(path):
                out.append({"path": rel, "type": "symlink", "mode": "0777", "size": 0, "sha256": None,
                            "target": os.readlink(path)})
            elif os.path.isdir(path):
                out.append({"path": rel, "type": "dir", "mode": mode, "size": 0, "sha256": None, "target": None})
            else:
                with open(path, "rb") as f:
                    data = f.read()
                out.append({"path": rel, "type": "file", "mode": mode, "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(), "target": None})
    out.sort(key=lambda e: e["path"])
    return {"id": rid, "files": out}


def artifact(work, rid, files, changed):
    tree = os.path.join(work, "tree-" + rid)
    archive = os.path.join(work, rid + ".tar.gz")
    mpath = os.path.join(work, rid + ".json")
    if not os.path.exists(mpath):
        if os.path.exists(tree):
            shutil.rmtree(tree)
        make_tree(tree, files, changed)
        subprocess.check_call(["tar", "--numeric-owner", "--owner=0", "--group=0", "--mtime=@%d" % MTIME,
                               "--sort=name", "-czf", archive, "-C", tree, "."])
        m = manifest_of(tree, rid)
        with open(archive, "rb") as f:
            data = f.read()
        m["archive"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        with open(mpath, "w") as f:
            json.dump(m, f)
    return tree, archive, mpath


def delta_archive(tree, need):
    """The files a host needs, as the client cuts them out (owner 0, the archive's mtime, gzip)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        tar = tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT)
        for rel in need:
            path = os.path.join(tree, rel)
            info = tar.gettarinfo(path, rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = MTIME
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        tar.close()
    return buf.getvalue()


class Agent(object):
    def __init__(self, python, script, profile):
        self.python, self.script, self.profile = python, script, profile

    def run(self, command, args, stdin=b"", label=None, times=None):
        argv = [self.python]
        if self.profile and label:
            argv += ["-m", "cProfile", "-o", os.path.join(self.profile, label + ".prof")]
        argv += [self.script, command, json.dumps(args)]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        t0 = time.time()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out, err = proc.communicate(stdin)
        secs = time.time() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if os.environ.get("AGENT_DELTA_SYS"):
            sys.stderr.write(err.decode("utf-8", "replace"))
            sys.stderr.write("%s %s: user %.2f sys %.2f\n" % (os.path.basename(self.script), command,
                             r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime))
        if proc.returncode != 0:
            raise SystemExit("agent %s %s failed (%d): %s %s" % (self.script, command, proc.returncode, out, err))
        if times is not None and label:
            times[label.split(".")[-1]] = (secs, cpu)
        return json.loads(out.decode().strip().split("\n")[-1])


def finalize_args(root, rid, op, partial, manifest):
    return dict({"root": root, "id": rid, "op": op, "partial": partial, "manifest": manifest,
                 "config_file": "ckan.ini", "shared": [{"path": "data", "link": "storage"}]}, **OWNER)


def sha_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--agent", action="append")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile")
    ap.add_argument("--work", default="/tmp/agent-delta-bench")
    ap.add_argument("--files", type=int, default=27800)
    ap.add_argument("--link", default="hardlink")
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    scripts = a.agent or [os.path.join(here, "..", "assets", "host", "ckan_release_host.py")]
    if not os.path.isdir(a.work):
        os.makedirs(a.work)
    if a.profile and not os.path.isdir(a.profile):
        os.makedirs(a.profile)
    tree_a, archive_a, man_a = artifact(a.work, ID_A, a.files, False)
    tree_b, archive_b, man_b = artifact(a.work, ID_B, a.files, True)
    with open(man_a) as f:
        entries = len(json.load(f)["files"])
    print("release: %d entries, python %s" % (entries, a.python))
    results = {}
    for run in range(a.runs):
        for si, script in enumerate(scripts):
            agent = Agent(a.python, script, a.profile)
            root = os.path.join(a.work, "root%d" % si)
            if run == 0:
                if os.path.exists(root):
                    shutil.rmtree(root)
                agent.run("setup", {"root": root, "shared": ["data"]})
                os.makedirs(os.path.join(root, ".ckan-release", "tmp"))
                with open(archive_a, "rb") as f:
                    got = agent.run("receive", dict({"root": root, "id": ID_A, "op": "opa", "manifest": man_a,
                                                     "link": a.link}, **OWNER), f.read())
                agent.run("finalize", finalize_args(root, ID_A, "opa", got["partial"], man_a), b"[app:main]\n")
                agent.run("switch", {"root": root, "id": ID_A, "op": "opa"})
                agent.run("ledger", {"root": root, "entries": [{"event": "healthy", "release": ID_A}]})
            times = {}
            op = "op%d%d" % (run, si)
            tag = "s%d.r%d." % (si, run)
            t0 = time.time()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            plan = agent.run("delta", dict({"root": root, "id": ID_B, "op": op, "manifest": man_b, "mtime": MTIME,
                                            "link": a.link}, **OWNER), label=tag + "delta", times=times)
            if plan["need"]:
                data = delta_archive(tree_b, plan["need"])
                agent.run("receive", dict({"root": root, "id": ID_B, "op": op, "manifest": man_b,
                                           "delta": {"mtime": MTIME, "bytes": len(data),
                                                     "sha256": hashlib.sha256(data).hexdigest()}}, **OWNER),
                          data, label=tag + "receive", times=times)
            agent.run("finalize", finalize_args(root, ID_B, op, plan["partial"], man_b), b"[app:main]\n",
                      label=tag + "finalize", times=times)
            agent.run("switch", {"root": root, "id": ID_B, "op": op}, label=tag + "switch", times=times)
            total = time.time() - t0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime
            # The rollback target (A) still proved without reading a file?
            v = agent.run("verify", {"root": root, "id": ID_A, "manifest_sha256": sha_file(man_a),
                                     "allowed_extra": ["ckan.ini", "storage"], "full": False})
            vb = agent.run("verify", {"root": root, "id": ID_B, "manifest_sha256": sha_file(man_b),
                                      "allowed_extra": ["ckan.ini", "storage"], "full": False})
            print("%-40s run %d: %s; total %.2f s (CPU %.2f s); link %s, need %d; A after: %s hashed %s; B: %s %s" % (
                script[-40:], run, ", ".join("%s %.2f s (CPU %.2f)" % ((k,) + v) for k, v in times.items()), total, cpu,
                plan.get("link"),
                len(plan["need"]), v.get("by"), v.get("hashed"), vb.get("by"), vb.get("hashed")))
            sys.stdout.flush()
            results.setdefault(script, []).append(dict(times, total=(total, cpu)))
            # Back to A, B removed (as the bench does), then A checked as the next ship would check it.
            agent.run("switch", {"root": root, "id": ID_A, "op": op})
            shutil.rmtree(os.path.join(root, "releases", ID_B))
            for ext in (".json", ".seal", ".tree"):
                p = os.path.join(root, ".ckan-release", "manifests", ID_B + ext)
                if os.path.exists(p):
                    os.unlink(p)
            agent.run("verify", {"root": root, "id": ID_A, "manifest_sha256": sha_file(man_a), "manifest": man_a,
                                 "allowed_extra": ["ckan.ini", "storage"], "keep_manifest": True, "full": False})
    for script, rs in results.items():
        print("%s, medians of %d runs:" % (script, len(rs)))
        for step in ("delta", "receive", "finalize", "switch", "total"):
            walls = sorted(r[step][0] for r in rs if step in r)
            cpus = sorted(r[step][1] for r in rs if step in r)
            if walls:
                print("  %-8s %.2f s wall, %.2f s CPU" % (step, walls[len(walls) // 2], cpus[len(cpus) // 2]))


if __name__ == "__main__":
    main()
