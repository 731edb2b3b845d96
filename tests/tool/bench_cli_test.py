#!/usr/bin/env python3
"""`tieralloc bench` as a newcomer runs it: compare in its short mode, every output checked.

The results document is validated against bench/schema/results.schema.json; the placements that
involve no heat measurement must land exactly where they say (all-fast on the fast tier, all-slow
off it, nothing migrated without the engine); the charts must be real, non-empty PNGs; `bench diff`
must pair two saved results and print their ratios; bad options and unwritable outputs must give a
clear error and exit status 2. Which placement wins is a benchmark question, not a test's."""
import copy
import json
import os
import subprocess
import sys
import tempfile

import jsonschema

tool, schema_path = sys.argv[1], sys.argv[2]
schema = json.load(open(schema_path))
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(args, **kw):
    return subprocess.run([tool, "bench"] + args, capture_output=True, text=True, timeout=600, **kw)


def by(items, *fields):
    return {tuple(i[f] for f in fields): i for i in items}


with tempfile.TemporaryDirectory() as tmp:
    out, csv, plots = f"{tmp}/r.json", f"{tmp}/r.csv", f"{tmp}/charts"
    r = run(["compare", "--quick", "--json", out, "--csv", csv, "--plot", plots])
    print(r.stdout, r.stderr)
    assert r.returncode == 0, f"compare exited {r.returncode}"
    first = r.stdout.splitlines()[0]
    doc = json.load(open(out))
    jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())
    emulated = doc["topology"]["emulated"]
    check(("EMULATED" in first) == emulated, f"first line must say whether tiers are emulated: {first!r}")
    check(set(doc["results"]) == {"latency", "bandwidth", "kv", "gups"}, f"compare's workloads: {list(doc['results'])}")

    # Latency and bandwidth: every tier and every node measured.
    targets = {i["target"] for i in doc["results"]["latency"]}
    check({"tier:0", "tier:1", "node:0"} <= targets, f"latency targets {targets}")
    check({(i["target"], i["op"]) for i in doc["results"]["bandwidth"]} >= {(t, o) for t in targets for o in ("read", "write", "triad")},
          "bandwidth: every target and operation")
    if emulated:
        slow = by(doc["results"]["latency"], "target")[("tier:1",)]
        check(slow["emulated_delay_ns"] == doc["params"]["slow_delay_ns"] and
              abs(slow["latency_ns"] - slow["measured_ns"] - slow["emulated_delay_ns"]) < 1e-6,
              "emulated slow-tier latency = measured + the documented delay")

    # kv and gups: the placements without the engine are exactly where they say.
    for w in ("kv", "gups"):
        items = {i["placement"]: i for i in doc["results"][w]}
        check(sorted(items) == sorted(["all-fast", "all-slow", "first-touch", "static-ratio", "tieralloc"]), f"{w} placements")
        check(items["all-fast"]["fast_hit_ratio"] > 0.99, f"{w} all-fast hit {items['all-fast']['fast_hit_ratio']}")
        check(items["all-slow"]["fast_hit_ratio"] < 0.01, f"{w} all-slow hit {items['all-slow']['fast_hit_ratio']}")
        for p in ("all-fast", "all-slow", "first-touch", "static-ratio"):
            check(items[p]["migrated_bytes"] == 0, f"{w} {p} migrated without the engine")
    # Zipfian keys are scattered over the store, so a static share of it gets about that share of
    # the accesses (a quarter, less what did not fit beside the library's own first extents).
    static = by(doc["results"]["kv"], "placement")[("static-ratio",)]["fast_hit_ratio"]
    check(0.05 < static < 0.5, f"kv static ratio's fast-tier share {static}")

    # CSV: a header and one row per measured item.
    rows = open(csv).read().splitlines()
    nitems = sum(len(v) for v in doc["results"].values())
    check(rows[0].startswith("workload,item,") and len(rows) == nitems + 1, f"csv rows {len(rows)} for {nitems} items")

    # Charts: PNG files with content, and the script that drew them.
    for chart in ("kv.png", "gups.png", "gups_timeline.png", "latency.png", "bandwidth.png"):
        path = f"{plots}/{chart}"
        data = open(path, "rb").read() if os.path.exists(path) else b""
        check(data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000, f"{chart}: a non-empty PNG ({len(data)} bytes)")
    script = open(f"{plots}/charts.gp").read()
    check(("EMULATED" in script) == emulated, "chart titles say emulated or real")
    check("ylabel" in script and "(ns" in script and "GB/s" in script and "(%)" in script, "axes carry units")

    # diff: two saved results paired item by item; B has every throughput doubled.
    b = copy.deepcopy(doc)
    for i in b["results"]["kv"]:
        i["ops_per_s"] *= 2
    del b["results"]["bandwidth"]
    json.dump(b, open(f"{tmp}/b.json", "w"))
    d = run(["diff", out, f"{tmp}/b.json"])
    print(d.stdout, d.stderr)
    check(d.returncode == 0, f"diff exit {d.returncode}")
    lines = [l for l in d.stdout.splitlines() if l.startswith("kv B tieralloc") and " ops_per_s " in l]
    check(len(lines) == 1 and lines[0].split()[-1] == "2.000", f"diff ratio line for kv ops: {lines}")
    check(f"only in A, 0 only in B" in d.stdout and f"{len(doc['results']['bandwidth'])} only in A" in d.stdout,
          "diff counts the unpaired items")
    check(run(["diff", out]).returncode == 2, "diff with one file: exit 2")
    check(run(["diff", out, f"{tmp}/missing.json"]).returncode == 2, "diff of a missing file: exit 2")
    open(f"{tmp}/bad.json", "w").write("{not json")
    bad = run(["diff", out, f"{tmp}/bad.json"])
    check(bad.returncode == 2 and "not a tieralloc bench results document" in bad.stderr, f"diff of garbage: {bad.stderr}")

    # kv with an archive table and copy-on-update: the document says so and follows the schema; the
    # archive records (1% of operations) are read and replaced too, and every value read is whole
    # (the worker fails on a torn one).
    two = f"{tmp}/two.json"
    r = run(["kv", "--quick", "--placements", "first-touch,tieralloc", "--mixes", "A", "--cold-share", "0.5", "--replace",
             "--json", two])
    check(r.returncode == 0, f"kv --cold-share --replace exited {r.returncode}: {r.stderr[-500:]}")
    if r.returncode == 0:
        tdoc = json.load(open(two))
        jsonschema.validate(tdoc, schema, format_checker=jsonschema.FormatChecker())
        items = tdoc["results"]["kv"]
        check(all(i["cold_share"] == 0.5 and i["replace"] is True and i["cold_ops"] == 0.01 for i in items),
              f"kv items record the table split and copy-on-update: {[(i['cold_share'], i['replace']) for i in items]}")
        check(tdoc["params"]["cold_share"] == 0.5 and tdoc["params"]["replace"] is True, "params record them too")

    # Bad input: a clear message and exit status 2, before any measuring.
    for args, message in ((["nonsense"], "unknown workload"), (["kv", "--placements", "fastest"], "unknown placement"),
                          (["gups", "--ws", "lots"], "not a size"), (["kv", "--seconds"], "missing value"),
                          (["latency", "--frobnicate"], "unknown option"),
                          (["kv", "--cold-share", "0.99"], "at most 0.95"),
                          (["latency", "--json", "/nonexistent-dir/r.json"], "cannot write"),
                          (["latency", "--plot", "/proc/version/charts"], "cannot create"), ([], "no workload")):
        e = run(args)
        check(e.returncode == 2 and message in e.stderr and "usage:" in e.stderr, f"{args}: exit {e.returncode}, {e.stderr!r}")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("bench cli: ok")
