#!/usr/bin/env python3
"""Merges the reports of `make bench` (allocator comparison, redis comparison, micro-benchmarks)
into one JSON, with the machine they ran on, so that two results can be compared later.

Usage: merge_results.py --out BENCH.json NAME=REPORT.json [NAME=REPORT.json ...]

Each report is kept whole under parts.NAME; `summary` repeats the ratios a reader looks for first.
Exit status: 0, or 1 when a report is missing or is not JSON.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpuinfo():
    """CPU model, logical CPUs, physical cores and sockets from /proc/cpuinfo (x86 and most others)."""
    text = read("/proc/cpuinfo") or ""
    model, cores, sockets, flags = None, set(), set(), ""
    phys = core = None
    for line in text.splitlines() + [""]:
        key, _, value = (s.strip() for s in line.partition(":"))
        if key in ("model name", "Model", "cpu model") and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif key == "flags" and not flags:
            flags = value
        elif not key:  # end of one CPU's block
            if phys is not None:
                sockets.add(phys)
                if core is not None:
                    cores.add((phys, core))
            phys = core = None
    return dict(
        model=model or platform.processor() or platform.machine(),
        logical_cpus=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)),
        physical_cores=len(cores) or None,
        sockets=len(sockets) or None,
        # Set by hypervisors: timings on a VM share the host with other guests.
        virtualized="hypervisor" in flags.split(),
    )


def meminfo_total():
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def os_name():
    for line in (read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def thp():
    text = read("/sys/kernel/mm/transparent_hugepage/enabled")
    if not text:
        return None
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), text.strip())


def machine():
    return dict(
        cpu=cpuinfo(),
        memory_bytes=meminfo_total(),
        numa_nodes_with_memory=(read("/sys/devices/system/node/has_memory") or "").strip() or None,
        kernel=platform.release(),
        kernel_version=platform.version(),
        arch=platform.machine(),
        os=os_name(),
        transparent_hugepage=thp(),
        numa_balancing=(read("/proc/sys/kernel/numa_balancing") or "").strip() or None,
        loadavg_at_merge=list(os.getloadavg()),
    )


def source_revision():
    """The commit the benchmarks were built from, when this is a git checkout."""
    def git(*args):
        p = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None
    try:
        commit = git("rev-parse", "HEAD")
        if commit is None:
            return None
        return dict(commit=commit, dirty=bool(git("status", "--porcelain", "--untracked-files=no")))
    except OSError:
        return None


def summary(parts):
    out = {}
    alloc = parts.get("allocators")
    if alloc:
        ratios = [r["ratios"]["tieralloc/jemalloc"] for r in alloc.get("benchmarks", [])
                  if "tieralloc/jemalloc" in r.get("ratios", {})]
        if ratios:
            out["allocators_tieralloc_over_jemalloc_geomean"] = statistics.geometric_mean(ratios)
    redis = parts.get("redis")
    if redis:
        out["redis_tieralloc_over_plain"] = {t["test"]: t["ratio_tieralloc_over_plain"] for t in redis.get("tests", [])}
    micro = parts.get("micro")
    if micro:
        out["micro"] = micro.get("headline", {})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="merged JSON")
    ap.add_argument("reports", nargs="+", metavar="NAME=PATH", help="a report to include, under parts.NAME")
    args = ap.parse_args()
    parts = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"expected NAME=PATH, got {item!r}")
        try:
            with open(path) as f:
                parts[name] = json.load(f)
        except OSError as e:
            print(f"merge_results: {name}: cannot read {path} ({e.strerror})", file=sys.stderr)
            return 1
        except json.JSONDecodeError as e:
            print(f"merge_results: {name}: {path} is not JSON ({e})", file=sys.stderr)
            return 1
    doc = dict(
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine(),
        source=source_revision(),
        summary=summary(parts),
        parts=parts,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    cpu = doc["machine"]["cpu"]
    print(f"{cpu['model']}, {cpu['usable_cpus']} CPUs, kernel {doc['machine']['kernel']}: "
          f"{', '.join(parts)} merged into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
