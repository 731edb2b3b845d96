#!/usr/bin/env python3
"""python3 under LD_PRELOAD=libtieralloc.so: a dict/list/str-heavy script must print exactly what
it prints without the preload, on the real tiers and on emulated tiers small enough to spill.

usage: test_python.py LIBTIERALLOC"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_common import check, check_stats, log, main, plain_env, preload_env, run

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "python_workload.py")
# The interpreter running this test: a real binary (python3 on PATH may be a shell shim, and the
# shim's own processes would write the stats file too).
PYTHON = os.path.realpath(sys.executable)


def body(lib, work):
    base = run([PYTHON, WORKLOAD], plain_env(PYTHONHASHSEED=0), 90, "baseline (no preload)")
    expected = base.stdout.decode()
    check(expected.count("\n") >= 8, f"baseline printed too little:\n{expected}")
    log("  baseline output:\n    " + expected.strip().replace("\n", "\n    "))

    runs = [
        ("preload, real tiers", None, {}),
        # Every object through malloc (no pymalloc arenas), so the 16 MiB fast tier surely spills.
        ("preload, emulated fast=16M spill, PYTHONMALLOC=malloc", "emulate:fast=16M,slow=4G",
         {"PYTHONMALLOC": "malloc"}),
    ]
    for i, (what, tiers, extra) in enumerate(runs):
        stats = os.path.join(work, f"stats{i}.json")
        p = run([PYTHON, WORKLOAD], preload_env(lib, stats, tiers, PYTHONHASHSEED=0, **extra), 90, what)
        got = p.stdout.decode()
        check(got == expected, f"{what}: output differs from the run without preload\n"
              f"expected:\n{expected}\ngot:\n{got}\nstderr:\n{p.stderr.decode(errors='replace')}")
        doc = check_stats(stats, what, min_peak_bytes=16 << 20, emulated=tiers is not None)
        if tiers:
            t = doc["tiers"]
            check(len(t) == 2 and t[0]["limit_bytes"] == 16 << 20,
                  f"{what}: expected 2 emulated tiers, fast limited to 16 MiB: {t}")
            check(t[1]["extents"] > 0 and t[0]["fallbacks"] > 0,
                  f"{what}: nothing spilled from the 16 MiB fast tier to the slow one: {t}")


if __name__ == "__main__":
    main(body)
