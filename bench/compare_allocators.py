#!/usr/bin/env python3
"""Runs bench/alloc_bench under tieralloc and its peers in one session and reports tieralloc's
times as ratios against theirs.

Allocators: tieralloc (LD_PRELOAD=libtieralloc.so), jemalloc, tcmalloc and mimalloc (LD_PRELOAD of
Debian's libraries), glibc (no preload) and memkind (alloc_bench_memkind, which calls
memkind_malloc(MEMKIND_DEFAULT)). Absolute times on a shared 2-core VM mean little; ratios against
peers measured minutes apart in the same session are the figure of merit.

Noise control: every benchmark runs under every allocator back to back, one process each, in an
order that rotates from benchmark to benchmark and round to round, so the allocators of one row are
measured within seconds of each other and drift of the machine (load from other work comes and
goes over seconds to minutes) spreads over all of them instead of biasing whichever ran last. The
reported value is the median over rounds; benchmark's own --benchmark_repetitions would run the
repetitions back to back and is not used. Single-thread benchmarks are pinned to one CPU (no
migrations); the two-thread ones get every CPU. On a machine
shared with other work, --metric cpu compares CPU time per operation instead of wall-clock time:
time spent descheduled then does not count (cross-thread rows stay on wall-clock time, since the
consumer thread's CPU time is not the benchmark's to measure).

Exit status: 0 when the report was produced, whatever it says (it is a report, not a test); 1 on
errors (an allocator library or binary missing, a crash, a preload that did not take effect).
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOWER_THRESHOLD = 1.05  # tieralloc more than 5% slower than jemalloc: row marked

# name, Debian library (None: no preload), package that ships it, what malloc must resolve to.
PEERS = [
    ("jemalloc", "libjemalloc.so.2", "libjemalloc2", "libjemalloc"),
    ("glibc", None, None, "libc.so"),
    ("tcmalloc", "libtcmalloc_minimal.so.4", "libtcmalloc-minimal4", "libtcmalloc_minimal"),
    ("mimalloc", "libmimalloc.so.2", "libmimalloc2.0", "libmimalloc"),
]
ALL = ["tieralloc"] + [p[0] for p in PEERS] + ["memkind"]
RATIO_PEERS = ["jemalloc", "glibc", "memkind"]



class BenchError(Exception):
    pass


def find_system_library(soname):
    """Path of a shared library as the dynamic loader would find it, or None."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    # ldconfig lists every ABI it knows (i386 and x32 too on multilib hosts): keep this one's.
    abi = "x86-64" if platform.machine() == "x86_64" else ""
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m and m.group(1) == soname and abi in m.group(2) and os.path.exists(m.group(3)):
            return m.group(3)
    return None


def allocator_specs(build, selected):
    """What each selected allocator runs: executable, preload, expected malloc provider."""
    bench_dir = os.path.join(build, "bench")
    specs = {}
    for name in selected:
        if name == "tieralloc":
            lib = os.path.join(build, "alloc", "libtieralloc.so")
            if not os.path.exists(lib):
                raise BenchError(f"tieralloc: {lib} not found (build first: cmake --build {build})")
            specs[name] = dict(exe=os.path.join(bench_dir, "alloc_bench"), preload=os.path.abspath(lib),
                               expect="libtieralloc")
        elif name == "memkind":
            specs[name] = dict(exe=os.path.join(bench_dir, "alloc_bench_memkind"), preload=None, expect="memkind")
        else:
            _, soname, package, expect = next(p for p in PEERS if p[0] == name)
            lib = None
            if soname:
                lib = find_system_library(soname)
                if lib is None:
                    raise BenchError(f"{name}: {soname} not found; install the Debian package {package} "
                                     f"(scripts/install-deps.sh --bench)")
            specs[name] = dict(exe=os.path.join(bench_dir, "alloc_bench"), preload=lib, expect=expect)
    for name, s in specs.items():
        if not os.access(s["exe"], os.X_OK):
            raise BenchError(f"{name}: {s['exe']} not found (build with TIERALLOC_BUILD_BENCH=ON: "
                             f"cmake --build {build})")
    return specs


def list_benchmarks(exe):
    p = subprocess.run([exe, "--benchmark_list_tests"], capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"{exe} --benchmark_list_tests exited with status {p.returncode}\n{p.stderr}")
    return p.stdout.split()


def single_threaded(bench):
    return "threads:" not in bench and not bench.startswith("BM_CrossThreadFree")


def run_benchmark(name, spec, bench, min_time, pin_cpu):
    """One benchmark under one allocator, in a process of its own."""
    cmd = [spec["exe"], "--benchmark_format=json", f"--benchmark_filter=^{re.escape(bench)}$",
           f"--benchmark_min_time={min_time}"]
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # an inherited preload would pick the allocator for every run
    if spec["preload"]:
        env["LD_PRELOAD"] = spec["preload"]
    cpus = {pin_cpu} if single_threaded(bench) else None
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                           preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name}: {bench} did not finish in 10 minutes")
    where = f"{name} ({'LD_PRELOAD=' + spec['preload'] + ' ' if spec['preload'] else ''}{' '.join(cmd)})"
    tail = "\n".join(p.stderr.strip().splitlines()[-15:])
    if p.returncode < 0:
        raise BenchError(f"{where} crashed: {signal.Signals(-p.returncode).name}\n{tail}")
    if p.returncode != 0:
        raise BenchError(f"{where} exited with status {p.returncode}\n{tail}")
    if "cannot be preloaded" in p.stderr:
        raise BenchError(f"{where}: the preload did not load\n{tail}")
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"{where}: output is not JSON ({e})\n{tail}")
    provider = doc.get("context", {}).get("malloc_provider", "")
    if spec["expect"] not in provider:
        raise BenchError(f"{where}: malloc resolves to {provider!r}, not {spec['expect']}: the preload did not "
                         f"take effect")
    rows = {}
    for b in doc.get("benchmarks", []):
        if b.get("error_occurred"):
            raise BenchError(f"{where}: {b['name']}: {b.get('error_message', 'error')}")
        if b.get("run_type", "iteration") != "iteration":
            continue
        scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
        # items/s is aggregate throughput (real time, all threads); its inverse is ns per op.
        ips = b.get("items_per_second")
        rows[b["name"].replace("/real_time", "")] = dict(
            ns=1e9 / ips if ips else b["real_time"] * scale,
            items_per_second=ips,
            cpu_ns=b["cpu_time"] * scale,
        )
    if not rows:
        raise BenchError(f"{where}: no benchmark results")
    return rows, doc.get("context", {})


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def fmt_ns(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build tree (default: build)")
    ap.add_argument("--out", help="merged JSON (default: BUILD/bench/allocators.json)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved repetitions per allocator; the median is reported (default 3)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per benchmark per run (default 0.5)")
    ap.add_argument("--quick", action="store_true", help="one round of 0.05 s per benchmark (a smoke run)")
    ap.add_argument("--metric", choices=["real", "cpu"], default="real",
                    help="real: wall-clock ns per op, from items/s (default); cpu: CPU ns per op")
    ap.add_argument("--allocators", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.min_time = 1, 0.05
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    selected = [a.strip() for a in args.allocators.split(",") if a.strip()]
    unknown = [a for a in selected if a not in ALL]
    if unknown or not selected:
        ap.error(f"unknown allocator(s) {','.join(unknown)}; choose from {','.join(ALL)}")
    out = args.out or os.path.join(args.build, "bench", "allocators.json")

    try:
        specs = allocator_specs(args.build, selected)
        benches = list_benchmarks(next(iter(specs.values()))["exe"])
        cpus = sorted(os.sched_getaffinity(0))
        pin_cpu = cpus[-1]
        samples = {a: {} for a in selected}  # allocator -> benchmark -> [run, ...]
        context, loads = None, []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: {len(benches)} benchmarks x {len(selected)} allocators",
                  file=sys.stderr, flush=True)
            loads.append(loadavg())
            for i, bench in enumerate(benches):
                k = (r + i) % len(selected)
                for name in selected[k:] + selected[:k]:
                    rows, ctx = run_benchmark(name, specs[name], bench, args.min_time, pin_cpu)
                    context = context or ctx
                    for b, v in rows.items():
                        samples[name].setdefault(b, []).append(v)
        loads.append(loadavg())
    except BenchError as e:
        print(f"compare_allocators: error: {e}", file=sys.stderr)
        return 1

    # Benchmark order as the program lists them.
    names = list(dict.fromkeys(b for a in selected for b in samples[a]))
    results = []
    for bench in names:
        metric = "cpu" if args.metric == "cpu" and not bench.startswith("BM_CrossThreadFree") else "real"
        row = dict(name=bench, metric=metric, ns_per_op={}, real_ns_per_op={}, cpu_ns_per_op={},
                   items_per_second={}, samples_ns={}, spread={}, ratios={})
        for a in selected:
            runs = samples[a].get(bench, [])
            if not runs:
                continue
            ns = [x["cpu_ns" if metric == "cpu" else "ns"] for x in runs]
            med = statistics.median(ns)
            row["ns_per_op"][a] = med
            row["real_ns_per_op"][a] = statistics.median(x["ns"] for x in runs)
            row["cpu_ns_per_op"][a] = statistics.median(x["cpu_ns"] for x in runs)
            ips = [x["items_per_second"] for x in runs if x["items_per_second"]]
            row["items_per_second"][a] = statistics.median(ips) if ips else None
            row["samples_ns"][a] = ns
            row["spread"][a] = (max(ns) - min(ns)) / med if med else 0.0
        t = row["ns_per_op"].get("tieralloc")
        for peer in RATIO_PEERS:
            if t and row["ns_per_op"].get(peer):
                row["ratios"][f"tieralloc/{peer}"] = t / row["ns_per_op"][peer]
        je = row["ratios"].get("tieralloc/jemalloc")
        row["tieralloc_slower_than_jemalloc"] = je is not None and je > SLOWER_THRESHOLD
        results.append(row)

    doc = dict(
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        description="ns_per_op: median over rounds of the row's metric: real = 1e9 / items_per_second "
                    "(wall clock, all threads), cpu = CPU time per op; ratios: tieralloc's ns_per_op over the "
                    "peer's (above 1: tieralloc slower)",
        settings=dict(rounds=args.rounds, min_time_s=args.min_time, metric=args.metric, pinned_cpu_single_thread=pin_cpu,
                      cpus=cpus, slower_threshold=SLOWER_THRESHOLD),
        host=dict(kernel=platform.release(), loadavg_1min_per_round=loads),
        benchmark_context=context,
        allocators={a: dict(executable=os.path.abspath(s["exe"]), preload=s["preload"]) for a, s in specs.items()},
        benchmarks=results,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    ratio_cols = [k for k in (f"tieralloc/{p}" for p in RATIO_PEERS) if any(k in r["ratios"] for r in results)]
    head = f"{'benchmark (' + args.metric + ' ns/op, median)':<32}" + "".join(f"{a:>10}" for a in selected)
    head += "".join(f"{'t/' + k.split('/')[1][:6]:>9}" for k in ratio_cols) + f"{'noise':>7}"
    print(head)
    print("-" * len(head))
    flagged = 0
    for r in results:
        line = f"{r['name']:<32}" + "".join(f"{fmt_ns(r['ns_per_op'].get(a)):>10}" for a in selected)
        line += "".join(f"{r['ratios'][k]:>9.2f}" if k in r["ratios"] else f"{'-':>9}" for k in ratio_cols)
        # Spread of tieralloc's and jemalloc's runs: a gap smaller than this is not a finding.
        noise = max((r["spread"].get(a, 0.0) for a in ("tieralloc", "jemalloc")), default=0.0)
        line += f"{noise * 100:>6.0f}%" if args.rounds > 1 else f"{'-':>7}"
        if r["metric"] != args.metric:
            line += f"  ({r['metric']} time)"
        if r["tieralloc_slower_than_jemalloc"]:
            line += "  << >5% slower than jemalloc"
            flagged += 1
        print(line)
    ratios_je = [r["ratios"]["tieralloc/jemalloc"] for r in results if "tieralloc/jemalloc" in r["ratios"]]
    if ratios_je:
        gm = statistics.geometric_mean(ratios_je)
        print(f"\ntieralloc/jemalloc geometric mean {gm:.3f}; {flagged} of {len(ratios_je)} rows more than 5% slower")
    print("ratios: tieralloc's time over the peer's (above 1: tieralloc slower); noise: (max-min)/median of "
          "tieralloc's and jemalloc's runs")
    busy = [x for x in loads if x is not None and x > len(cpus) * 0.75]
    if busy:
        print(f"note: the machine was busy during the runs (1-min load up to {max(busy):.1f} on {len(cpus)} CPUs); "
              f"expect noise", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
