#!/usr/bin/env python3
"""The stress program (tests/preload/stress.cc, not linked to tieralloc) under
LD_PRELOAD=libtieralloc.so: threads allocating, verifying and freeing mixed sizes (8 B .. 4 MiB)
with cross-thread frees and realloc chains, calloc zeroing, the aligned family, overflow and
out-of-memory failures, fork() while threads allocate, dlopen/dlclose, C++ new/delete (aligned
too). The implementation-defined behaviours it prints (realloc(p, 0), ...) must be glibc's.

usage: test_stress.py LIBTIERALLOC STRESS_EXE STRESS_DSO"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_common import TestFailure, check, check_stats, fail, log, main, plain_env, preload_env, run


def lines(out, prefix):
    return [l for l in out.decode().splitlines() if l.startswith(prefix)]


def semantics(lib, work, exe):
    """Implementation-defined behaviour: glibc's is the reference."""
    glibc = run([exe, "semantics"], plain_env(), 60, "semantics without preload")
    check(lines(glibc.stdout, "allocator:") == ["allocator: other"],
          f"without preload the stress program already sees tieralloc:\n{glibc.stdout.decode()}")
    stats = os.path.join(work, "stats-semantics.json")
    mine = run([exe, "semantics"], preload_env(lib, stats), 60, "semantics with preload", check_rc=False)
    log("  glibc:     " + "\n             ".join(lines(glibc.stdout, "semantics:") + lines(glibc.stdout, "info:")))
    log("  tieralloc: " + "\n             ".join(lines(mine.stdout, "semantics:") + lines(mine.stdout, "info:")))
    check(lines(mine.stdout, "allocator:") == ["allocator: tieralloc"],
          f"with preload the stress program does not see tieralloc:\n{mine.stdout.decode()}")
    check(lines(mine.stdout, "semantics:") == lines(glibc.stdout, "semantics:"),
          "malloc semantics differ from glibc's:\nglibc:\n" + "\n".join(lines(glibc.stdout, "semantics:"))
          + "\ntieralloc:\n" + "\n".join(lines(mine.stdout, "semantics:")))
    check(mine.returncode == 0, f"semantics with preload: exit status {mine.returncode}\n"
          f"{mine.stderr.decode(errors='replace')}")
    check_stats(stats, "semantics with preload")


def stress(lib, work, exe, dso, what, tiers, iters):
    stats = os.path.join(work, f"stats-{iters}.json")
    p = run([exe, "all", dso, iters], preload_env(lib, stats, tiers), 120, what)
    log("  " + p.stdout.decode().strip().replace("\n", "\n  "))
    check(lines(p.stdout, "allocator:") == ["allocator: tieralloc"], f"{what}: tieralloc not loaded")
    check(lines(p.stdout, "ok:"), f"{what}: no summary line:\n{p.stdout.decode()}")
    doc = check_stats(stats, what, min_peak_bytes=8 << 20, emulated=tiers is not None)
    if tiers:
        check(doc["tiers"][1]["extents"] > 0, f"{what}: nothing spilled to the slow tier: {doc['tiers']}")


def body(lib, work):
    if len(sys.argv) != 4:
        fail("usage: test_stress.py LIBTIERALLOC STRESS_EXE STRESS_DSO")
    exe, dso = os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
    # Under glibc first, a short run: it proves the checks themselves are right.
    p = run([exe, "all", dso, "3000"], plain_env(), 60, "stress without preload (control)")
    log("  " + p.stdout.decode().strip().replace("\n", "\n  "))
    # Then every part under tieralloc, each reported even when an earlier one failed.
    parts = [
        ("semantics", lambda: semantics(lib, work, exe)),
        ("stress", lambda: stress(lib, work, exe, dso, "stress with preload", None, "20000")),
        ("stress, emulated tiers", lambda: stress(lib, work, exe, dso, "stress with preload, emulated fast=32M",
                                                  "emulate:fast=32M,slow=4G", "6000")),
    ]
    failures = []
    for name, part in parts:
        try:
            part()
        except TestFailure as e:
            log(f"  FAILED: {name}")
            failures.append(f"[{name}] {e}")
    if failures:
        fail(f"{len(failures)} of {len(parts)} parts failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main(body)
