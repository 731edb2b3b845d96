#!/usr/bin/env python3
"""sort(1) under LD_PRELOAD=libtieralloc.so on a ~200 MB file of random lines, with a 100 MB
buffer (-S 100M, so sort mallocs it and spills sorted runs to temporary files) and two threads:
the output must be byte-identical (SHA-256) to sort's without the preload.

usage: test_sort.py LIBTIERALLOC"""
import base64
import hashlib
import os
import random
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_common import check, check_stats, log, main, plain_env, preload_env, require_program, run

SIZE = 200 << 20


def generate(path):
    """Random base64 text; '+' and '/' become newlines, so lines have varied lengths (empty ones,
    duplicates of short ones) and 76-character ones where base64's own line breaks fall."""
    rng = random.Random(1234)
    nl = bytes.maketrans(b"+/", b"\n\n")
    lines = 0
    with open(path, "wb") as f:
        written = 0
        while written < SIZE:
            block = base64.encodebytes(rng.randbytes(3 << 20)).translate(nl)
            f.write(block)
            written += len(block)
            lines += block.count(b"\n")
    return lines


def digest(path):
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            n += chunk.count(b"\n")
    return h.hexdigest(), n


def body(lib, work):
    sort = require_program("sort")
    src = os.path.join(work, "input.txt")
    lines = generate(src)
    log(f"  generated {os.path.getsize(src) >> 20} MiB, {lines} lines")
    tmp = os.path.join(work, "tmp")
    os.mkdir(tmp)
    out = os.path.join(work, "sorted.txt")
    cmd = [sort, "-S", "100M", "--parallel=2", "-T", tmp, "-o", out, src]

    run(cmd, plain_env(LC_ALL="C"), 120, "sort without preload")
    expected = digest(out)
    check(expected[1] == lines, f"sort without preload wrote {expected[1]} lines, input has {lines}")
    os.unlink(out)

    stats = os.path.join(work, "stats.json")
    run(cmd, preload_env(lib, stats, LC_ALL="C"), 120, "sort with preload")
    got = digest(out)
    check(got == expected, f"sort with preload: output (sha256, lines) {got} differs from {expected}")
    log(f"  outputs identical: sha256 {got[0]}, {got[1]} lines")
    # sort's 100 MB buffer must have come from tieralloc.
    check_stats(stats, "sort with preload", min_peak_bytes=64 << 20)


if __name__ == "__main__":
    main(body)
