# -*- coding: utf-8 -*-
"""Generates the benchmark's ballast: pure-python wheels that, installed, weigh like a real CKAN venv.

usage: python3 ballast.py OUT_DIR PACKAGES FILES_PER_PACKAGE

Deterministic (seeded, fixed zip timestamps): the same arguments always give byte-identical wheels, so
the base venv image built from them is reused from one bench run to the next. Each package holds, like
site-packages does: Python modules (valid, so compileall compiles them: ~25 % of the files), text
data (templates, i18n, JS/CSS: ~65 %) and incompressible binaries (shared objects: ~10 %, ~35 % of the
bytes). About 10 KB per file on average.
"""
import base64
import hashlib
import os
import random
import sys
import zipfile

WORDS = [w.encode() for w in (
    "ckan package resource dataset organization group user activity harvest source extent spatial "
    "schema field value display label validator converter action logic auth helper plugin config "
    "request response session template render snippet form widget solr index search query facet "
    "result count limit offset sort order filter revision state active deleted private public "
    "license title notes author maintainer version url name id tag vocabulary extra metadata created "
    "modified format mimetype size hash upload storage datastore datapusher resource_view view "
    "import def return self None True False for in if else elif try except raise with as class "
    "lambda yield from global pass break continue while and or not is").split()]


def text(rng, size):
    out = []
    n = 0
    while n < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        out.append(line)
        n += len(line) + 1
    return b"\n".join(out)[:size] + b"\n"


def module(rng, size):
    out = [b'"""Generated ballast module."""', b""]
    n = 40
    i = 0
    while n < size:
        line = b"V%d = %r" % (i, text(rng, rng.randint(40, 200)).strip())
        out.append(line)
        n += len(line) + 1
        i += 1
    return b"\n".join(out) + b"\n"


def main():
    out_dir, packages, per_package = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    for p in range(packages):
        name = "ballast%02d" % p
        rng = random.Random(p)
        files = {}
        for i in range(per_package):
            kind = i % 20
            d = "%s/part%02d" % (name, i % 25)
            if kind < 5:
                files["%s/mod%04d.py" % (d, i)] = module(rng, rng.randint(4000, 14000))
            elif kind < 18:
                ext = (".html", ".js", ".css", ".po", ".json", ".txt")[i % 6]
                files["%s/data%04d%s" % (d, i, ext)] = text(rng, rng.randint(3000, 12000))
            else:
                n = rng.randint(20000, 50000)
                files["%s/lib%04d.so" % (d, i)] = rng.getrandbits(n * 8).to_bytes(n, "little")
        for k in range(25):
            files["%s/part%02d/__init__.py" % (name, k)] = b""
        files["%s/__init__.py" % name] = b'__version__ = "1.0"\n'
        info = "%s-1.0.dist-info" % name
        files[info + "/METADATA"] = ("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name).encode()
        files[info + "/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: ckan-release-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        record = []
        for path in sorted(files):
            digest = base64.urlsafe_b64encode(hashlib.sha256(files[path]).digest()).rstrip(b"=").decode()
            record.append("%s,sha256=%s,%d" % (path, digest, len(files[path])))
        record.append(info + "/RECORD,,")
        files[info + "/RECORD"] = ("\n".join(record) + "\n").encode()
        whl = os.path.join(out_dir, "%s-1.0-py3-none-any.whl" % name)
        tmp = whl + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(files):
                zi = zipfile.ZipInfo(path, date_time=(2000, 1, 1, 0, 0, 0))
                zi.external_attr = 0o644 << 16
                zi.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(zi, files[path])
        os.rename(tmp, whl)
    print("ok")


if __name__ == "__main__":
    main()
