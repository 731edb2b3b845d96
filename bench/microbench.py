#!/usr/bin/env python3
"""Runs the micro-benchmarks linked with tieralloc -- poison_bench (poison-path costs) and
migrate_bench (migration throughput), the latter on the discovered topology and on emulated tiers --
and writes their results as one JSON.

Every figure of merit is a ratio the program measured against a baseline timed between its own runs
(time_vs_clean, time_vs_memcpy, speed_vs_memcpy, time_vs_plain_signal): absolute times on a shared
VM mean little. With --rounds N each program runs N times, the runs of different programs
alternating, and every figure is the median over the runs.

The emulated topology is set in the environment of the run (TIERALLOC_TIERS), since the library
reads it once, when it starts; each run's context records which topology it had, and this script
checks that the setting took effect.

Exit status: 0 when the report was produced, whatever it says; 1 on errors (a program missing or
crashing, a benchmark that reported an error, a benchmark or counter missing from the output).
"""
import argparse
import datetime
import json
import math
import os
import signal
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Large enough for migrate_bench's biggest buffer on the fast tier; TIERALLOC_POLICY=static keeps
# the tiering engine from moving pages while a move is being timed.
EMULATED_TIERS = "emulate:fast=256M,slow=1G"

# Each run: program, extra environment, and what its output must contain: every benchmark family
# with the counters the report is about (a family or counter that disappears fails the run, and with
# it the smoke test), and context values that say the environment took effect.
RUNS = {
    # No quarantine journal: the pages the benchmark quarantines are healthy, and the journal's
    # writer thread would share the pinned CPU with the timed paths.
    "poison": dict(
        exe="poison_bench", env={"TIERALLOC_QUARANTINE_FILE": "off"},
        families={
            "BM_MallocFreeQuarantined/far/": ["ns_per_op", "clean_ns_per_op", "time_vs_clean"],
            "BM_MallocFreeQuarantined/around/": ["ns_per_op", "clean_ns_per_op", "time_vs_clean"],
            "BM_MallocFreeThousandQuarantined/": ["ns_per_op", "clean_ns_per_op", "time_vs_clean", "quarantined_pages"],
            "BM_PoisonCheck/nothing_quarantined/": ["ns_per_op", "memcpy_ns", "time_vs_memcpy"],
            "BM_PoisonCheck/quarantined_around/": ["ns_per_op", "memcpy_ns", "time_vs_memcpy"],
            "BM_RecoveryRead/clean/": ["ns_per_op", "memcpy_ns", "time_vs_memcpy", "bytes_per_second"],
            "BM_RecoveryRead/page_quarantined/": ["ns_per_op", "memcpy_ns", "time_vs_memcpy", "bytes_per_second"],
            "BM_ReportRepairCycle": ["ns_per_op", "memcpy_ns", "time_vs_memcpy"],
            "BM_MachineCheck/action_required": ["plain_signal_ns", "time_vs_plain_signal"],
            "BM_MachineCheck/action_optional": ["plain_signal_ns", "time_vs_plain_signal"],
        },
        context={}),
    "migrate": dict(
        exe="migrate_bench", env={},
        families={
            "BM_Memcpy/": ["bytes_per_second"],
            "BM_MovePages/": ["bytes_per_second", "memcpy_bytes_per_second", "speed_vs_memcpy", "same_node",
                              "pages_not_moved"],
            "BM_EngineMove/": ["bytes_per_second", "memcpy_bytes_per_second", "speed_vs_memcpy", "emulated", "tiers"],
        },
        context={"tieralloc_emulated": "false"}),
    "migrate_emulated": dict(
        exe="migrate_bench",
        env={"TIERALLOC_TIERS": EMULATED_TIERS, "TIERALLOC_POLICY": "static"},
        # move_pages does not depend on tieralloc's topology: already measured by "migrate".
        filter="BM_EngineMove",
        families={
            "BM_EngineMove/": ["bytes_per_second", "memcpy_bytes_per_second", "speed_vs_memcpy", "emulated", "tiers"],
        },
        context={"tieralloc_emulated": "true", "tieralloc_tier_count": "2"}),
}


class BenchError(Exception):
    pass


def run_once(name, spec, build, min_time, pin_cpu):
    exe = os.path.join(build, "bench", spec["exe"])
    if not os.access(exe, os.X_OK):
        raise BenchError(f"{name}: {exe} not found (build with TIERALLOC_BUILD_BENCH=ON: cmake --build {build})")
    cmd = [exe, "--benchmark_format=json", f"--benchmark_min_time={min_time}"]
    if spec.get("filter"):
        cmd.append(f"--benchmark_filter={spec['filter']}")
    env = dict(os.environ)
    # The runs' topology and settings are this script's to choose, not the caller's environment's.
    for k in list(env):
        if k.startswith("TIERALLOC_") or k == "LD_PRELOAD":
            del env[k]
    env.update(spec["env"])
    where = " ".join(f"{k}={v}" for k, v in spec["env"].items()) + (" " if spec["env"] else "") + " ".join(cmd)
    try:
        # One CPU: no migrations between CPUs in the middle of a timed stretch.
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                           preexec_fn=lambda: os.sched_setaffinity(0, {pin_cpu}))
    except subprocess.TimeoutExpired:
        raise BenchError(f"{where}: did not finish in 15 minutes")
    tail = "\n".join(p.stderr.strip().splitlines()[-15:])
    if p.returncode < 0:
        raise BenchError(f"{where}: crashed: {signal.Signals(-p.returncode).name}\n{tail}")
    if p.returncode != 0:
        raise BenchError(f"{where}: exited with status {p.returncode}\n{tail}")
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"{where}: output is not JSON ({e})\n{tail}")
    check(name, spec, doc, where)
    return doc


def check(name, spec, doc, where):
    """Raises BenchError unless the output has what the report is about."""
    context = doc.get("context", {})
    for k, want in spec["context"].items():
        if context.get(k) != want:
            raise BenchError(f"{where}: context {k} is {context.get(k)!r}, not {want!r}: the environment did not "
                             f"take effect")
    benches = [b for b in doc.get("benchmarks", []) if b.get("run_type", "iteration") == "iteration"]
    for b in benches:
        if b.get("error_occurred"):
            raise BenchError(f"{where}: {b['name']}: {b.get('error_message', 'error')}")
    for family, counters in spec["families"].items():
        rows = [b for b in benches if b["name"].startswith(family)]
        if not rows:
            raise BenchError(f"{where}: no {family} results")
        for b in rows:
            missing = [c for c in counters if not isinstance(b.get(c), (int, float)) or not math.isfinite(b[c])]
            if missing:
                raise BenchError(f"{where}: {b['name']} lacks the counter(s) {', '.join(missing)}")
            if b.get("iterations", 0) < 1 or not b.get("real_time", 0) > 0:
                raise BenchError(f"{where}: {b['name']} ran no timed iterations")
            ratios = [c for c in counters if c.startswith(("time_vs", "speed_vs")) and not b[c] > 0]
            if ratios:
                raise BenchError(f"{where}: {b['name']}: {', '.join(ratios)} not positive")


# Fields of a Google Benchmark row that are not figures to take the median of.
NOT_FIGURES = {"name", "run_name", "run_type", "family_index", "per_family_instance_index", "repetitions",
               "repetition_index", "threads", "time_unit", "label", "iterations", "error_occurred", "error_message"}


def merge_runs(docs):
    """The rows of several runs of one program: per benchmark, the median of every figure."""
    by_name = {}
    for doc in docs:
        for b in doc["benchmarks"]:
            if b.get("run_type", "iteration") == "iteration":
                by_name.setdefault(b["name"], []).append(b)
    rows = []
    for name, runs in by_name.items():
        first = runs[0]
        figures = {}
        for k, v in first.items():
            if k in NOT_FIGURES or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            values = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            figures[k] = statistics.median(values)
        row = dict(name=name.replace("/manual_time", ""), label=first.get("label", ""), time_unit=first.get("time_unit"),
                   runs=len(runs), figures=figures)
        if len(runs) > 1:
            row["samples"] = {k: [r.get(k) for r in runs] for k in figures}
        rows.append(row)
    return rows


def headline(parts):
    """The ratios a reader looks for first, by benchmark."""
    keys = ("time_vs_clean", "time_vs_memcpy", "time_vs_plain_signal", "speed_vs_memcpy")
    out = {}
    for part, doc in parts.items():
        for row in doc["benchmarks"]:
            for k in keys:
                if k in row["figures"]:
                    out[f"{part}:{row['name']}"] = {k: row["figures"][k]}
    return out


def fmt(v):
    if v is None:
        return "-"
    if v >= 1e12:
        return f"{v / 1e12:.2f}T"
    if v >= 1e9:
        return f"{v / 1e9:.2f}G"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build tree (default: build)")
    ap.add_argument("--out", help="JSON report (default: BUILD/bench/micro.json)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each program; the median is reported (default 3)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per benchmark per run (default 0.5)")
    ap.add_argument("--quick", action="store_true", help="one round of 0.05 s per benchmark (a smoke run)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(RUNS)}")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.min_time = 1, min(args.min_time, 0.05)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    selected = [s.strip() for s in (args.only or ",".join(RUNS)).split(",") if s.strip()]
    unknown = [s for s in selected if s not in RUNS]
    if unknown or not selected:
        ap.error(f"unknown run(s) {','.join(unknown)}; choose from {','.join(RUNS)}")
    out = args.out or os.path.join(args.build, "bench", "micro.json")

    pin_cpu = sorted(os.sched_getaffinity(0))[-1]
    docs = {name: [] for name in selected}
    try:
        for r in range(args.rounds):
            # Rotated, so no program always runs right after the same one.
            order = selected[r % len(selected):] + selected[:r % len(selected)]
            for name in order:
                print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                docs[name].append(run_once(name, RUNS[name], args.build, args.min_time, pin_cpu))
    except BenchError as e:
        print(f"microbench: error: {e}", file=sys.stderr)
        return 1

    parts = {}
    for name in selected:
        spec = RUNS[name]
        parts[name] = dict(executable=os.path.abspath(os.path.join(args.build, "bench", spec["exe"])),
                           environment=spec["env"], context=docs[name][0].get("context", {}),
                           benchmarks=merge_runs(docs[name]))
    doc = dict(
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        description="figures: median over runs of each Google Benchmark field and counter. time_vs_clean: the "
                    "slow path's time over the clean path's; time_vs_memcpy: the path's time per call over a memcpy "
                    "of the same bytes; time_vs_plain_signal: the forged machine-check's time over a plain signal's "
                    "(above 1: slower); speed_vs_memcpy: the path's bytes/s over memcpy's (below 1: slower). "
                    "Each baseline was timed between the path's own runs, in the same process. For rows with "
                    "manual_time, real_time is one timed stretch (see ns_per_op for one call).",
        settings=dict(rounds=args.rounds, min_time_s=args.min_time, pinned_cpu=pin_cpu),
        headline=headline(parts),
        runs=parts,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    print(f"{'benchmark':<52} {'ratio':<30}{'per call|bytes/s':>16}  note")
    for name, part in parts.items():
        for row in part["benchmarks"]:
            f = row["figures"]
            ratio = next(((k, f[k]) for k in ("time_vs_clean", "time_vs_memcpy", "time_vs_plain_signal",
                                                "speed_vs_memcpy") if k in f), None)
            per = f.get("bytes_per_second") if name.startswith("migrate") else f.get("ns_per_op")
            unit = "B/s" if name.startswith("migrate") else "ns"
            if per is None and "real_time" in f:
                per, unit = f["real_time"], row["time_unit"]
            print(f"{name + ':' + row['name']:<52} "
                  f"{(ratio[0] + ' ' + format(ratio[1], '.3g')) if ratio else '-':<30}"
                  f"{fmt(per) + ' ' + unit:>16}  {row['label']}")
    not_moved = [f"{n}:{r['name']}" for n, p in parts.items() for r in p["benchmarks"]
                 if r["figures"].get("pages_not_moved", 0) > 0]
    if not_moved:
        print(f"note: some pages did not move in {', '.join(not_moved)}: their bytes/s overstate the move",
              file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
