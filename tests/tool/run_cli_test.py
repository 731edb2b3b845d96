#!/usr/bin/env python3
"""`tieralloc run` as a user runs it: the program's output is unchanged, --stats reports per-tier
usage (with spill to the slow tier past --fast-limit) and the tiering engine's state in words, bad
configuration warns and still runs the program, and usage errors exit 2 / a missing program 127."""
import json
import os
import random
import re
import subprocess
import sys
import tempfile

from cli_check import check, clean_env, finish

tool = sys.argv[1]
env = clean_env(LC_ALL="C")

with tempfile.TemporaryDirectory() as d:
    data = os.path.join(d, "lines.txt")
    rng = random.Random(7)
    with open(data, "w") as f:
        for i in range(400000):
            f.write("%016x %d\n" % (rng.getrandbits(64), i))
    plain = subprocess.run(["sort", data], capture_output=True, env=env, timeout=120)
    r = subprocess.run([tool, "run", "--tiers", "emulate:fast=8M,slow=1G", "--stats", "--", "sort", "-S", "64M", data],
                       capture_output=True, env=env, timeout=120)
    err = r.stderr.decode()
    check(r.returncode == 0, "run: exit status of the program (0)")
    check(r.stdout == plain.stdout, "run: sort output identical to sort without tieralloc")
    check("per-tier usage at exit (EMULATED tiers)" in err, "run --stats: per-tier table on stderr, says EMULATED")
    # Columns: tier, kind, used, peak, limit... (sizes are two words each: "80.0 MiB").
    slow_line = [l.split() for l in err.splitlines() if l.startswith("tieralloc:   1 ")]
    slow_peak = " ".join(slow_line[0][5:7]) if slow_line else "no tier-1 line"
    check(slow_peak not in ("0 B", "no tier-1 line"),
          "run: past the 8M fast budget, memory spilled to tier 1 (its peak: %s)" % slow_peak)

    stats_path = os.path.join(d, "stats.json")
    r = subprocess.run([tool, "run", "--stats=" + stats_path, "--", "sort", data], capture_output=True, env=env, timeout=120)
    check(r.returncode == 0 and os.path.getsize(stats_path) > 0 and '"used_bytes"' in open(stats_path).read(),
          "run --stats=PATH writes the JSON there")

    # A program that allocates next to nothing costs the fast tier next to nothing: jemalloc's
    # metadata (mapped in 2 MiB blocks, mostly untouched) is reported apart, not charged.
    idle_path = os.path.join(d, "idle.json")
    r = subprocess.run([tool, "run", "--tiers", "emulate:fast=8M,slow=1G", "--stats=" + idle_path, "--", "true"],
                       capture_output=True, env=env, timeout=60)
    idle = json.load(open(idle_path)) if r.returncode == 0 and os.path.exists(idle_path) else {}
    idle_fast = idle.get("tiers", [{}])[0].get("used_bytes")
    check(idle_fast is not None and idle_fast < (1 << 20) and idle.get("jemalloc", {}).get("metadata_bytes", 0) > 0,
          "run -- true: under 1 MiB of the fast tier at exit (%s bytes), metadata reported apart (%s bytes)"
          % (idle_fast, idle.get("jemalloc", {}).get("metadata_bytes")))

# The engine's state in words at exit, beside the per-tier table: off and why, then running with
# the sampler (sleep hands no heap memory to the kernel, so the sampler's EFAULT limit is moot).
def kernel_setting(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None


nb = kernel_setting("/proc/sys/kernel/numa_balancing")
demotion = kernel_setting("/sys/kernel/mm/numa/demotion_enabled")
r = subprocess.run([tool, "run", "--tiers", "emulate:fast=64M,slow=1G", "--stats", "--", "true"],
                   capture_output=True, text=True, env=env)
err = r.stderr
# Without the sampler the engine takes DAMON where the kernel offers it for virtual addresses
# (Linux 6.11+, root); elsewhere (this machine's kernel has DAMON for physical addresses only) the
# line says why not.
damon_running = "heat source: DAMON (the kernel's access monitor" in err
check(r.returncode == 0 and (damon_running or re.search(
          r"tieralloc: engine: off \(no heat source \(DAMON: .+; the sampler is opt-in: TIERALLOC_SAMPLER=on\)\); "
          r"heat source: none", err)),
      "run --stats: without the sampler, DAMON as the heat source, or why not, in words")
check("tieralloc: kernel tiering: numa_balancing=%s (" % (nb if nb is not None else "-1") in err,
      "run --stats: the kernel's numa_balancing value, as /proc says (%s)" % nb)
check(("demotion_enabled=%s" % {"true": "on", "false": "off", None: "unknown"}.get(demotion, "?")) in err,
      "run --stats: the kernel's demotion_enabled, as sysfs says (%s)" % demotion)
check(("tieralloc: allocation sites: off (they learn from the sampler's first touches" if damon_running else
       "tieralloc: allocation sites: off (no heat source)") in err, "run --stats: allocation sites off without the sampler")

r = subprocess.run([tool, "run", "--tiers", "emulate:fast=64M,slow=1G", "--stats", "--", "true"],
                   capture_output=True, text=True, env=dict(env, TIERALLOC_DAMON="off"))
check(r.returncode == 0 and "tieralloc: engine: off (no heat source (TIERALLOC_DAMON=off; the sampler is opt-in: "
      "TIERALLOC_SAMPLER=on)); heat source: none" in r.stderr, "TIERALLOC_DAMON=off: no heat source, and why")
r = subprocess.run([tool, "run", "--tiers", "emulate:fast=64M,slow=1G", "--", "true"],
                   capture_output=True, text=True, env=dict(env, TIERALLOC_DAMON="maybe"))
check(r.returncode == 0 and r.stderr.count("TIERALLOC_DAMON='maybe' is not on or off") == 1,
      "bad TIERALLOC_DAMON: one warning, program runs")

r = subprocess.run([tool, "run", "--tiers", "emulate:fast=64M,slow=1G", "--stats", "--", "sleep", "1"],
                   capture_output=True, text=True, env=dict(env, TIERALLOC_SAMPLER="on"))
err = r.stderr
check(r.returncode == 0 and "tieralloc: engine: running; heat source: hinting-fault sampler over 2 MiB runs (1.00% of one core budgeted" in err
      and "heap on transparent huge pages: " in err and "migration: page map only (emulated tiers)" in err, "run --stats: engine running with the sampler, in words")
moved = [l for l in err.splitlines() if l.startswith("tieralloc: migrated: ")]
check(bool(moved) and " promoted, " in moved[0] and " demoted, " in moved[0] and "pages failed to move" in moved[0]
      and "engine CPU" in moved[0], "run --stats: bytes promoted and demoted, failed moves, engine CPU: %s" % moved)
check("tieralloc: allocation sites: " in err and " tracked, " in err and "(one per 512.0 KiB)" in err,
      "run --stats: allocation-site counts")

r = subprocess.run([tool, "run", "--tiers", "emulate:fast=64M,slow=1G", "--stats", "--", "echo", "hi"],
                   capture_output=True, text=True, env=dict(env, TIERALLOC_SAMPLER="on", TIERALLOC_SITE_SAMPLE="lots"))
check(r.returncode == 0 and r.stdout == "hi\n" and r.stderr.count("TIERALLOC_SITE_SAMPLE='lots'") == 1
      and "(one per 512.0 KiB)" in r.stderr, "bad TIERALLOC_SITE_SAMPLE: one warning, the default interval, program runs")
r = subprocess.run([tool, "run", "--tiers", "emulate:fast=64M,slow=1G", "--stats", "--", "true"],
                   capture_output=True, text=True, env=dict(env, TIERALLOC_SAMPLER="on", TIERALLOC_SITE_SAMPLE="0"))
check(r.returncode == 0 and "allocation sites: off (TIERALLOC_SITE_SAMPLE=0)" in r.stderr, "TIERALLOC_SITE_SAMPLE=0 turns sites off")

r = subprocess.run([tool, "run", "--fast-limit", "lots", "--", "echo", "hello"], capture_output=True, text=True, env=env)
check(r.returncode == 0 and r.stdout == "hello\n" and r.stderr.count("TIERALLOC_FAST_LIMIT") == 1,
      "bad --fast-limit: one warning, program runs unharmed")
r = subprocess.run([tool, "run", "--tiers", "emulate:fast=", "--", "echo", "hi"], capture_output=True, text=True, env=env)
check(r.returncode == 0 and r.stdout == "hi\n" and "TIERALLOC_TIERS" in r.stderr, "bad --tiers: warning, program runs")
r = subprocess.run([tool, "run", "--", "/no/such/program"], capture_output=True, text=True, env=env)
check(r.returncode == 127 and "cannot run" in r.stderr, "missing program: exit 127 with a message")
r = subprocess.run([tool, "run"], capture_output=True, text=True, env=env)
check(r.returncode == 2, "no program: exit 2")
r = subprocess.run([tool, "run", "--bogus", "--", "true"], capture_output=True, text=True, env=env)
check(r.returncode == 2 and "unknown option" in r.stderr, "unknown option: exit 2")
r = subprocess.run(["sh", "-c", "exit 3"], env=env)
r = subprocess.run([tool, "run", "--", "sh", "-c", "exit 3"], env=env)
check(r.returncode == 3, "the program's own exit status comes back")

finish("run_cli")
