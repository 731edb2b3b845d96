#!/usr/bin/env python3
"""Short GUPS run (make test): every placement runs and reports, and the placements that involve no
heat measurement land exactly where they say (all-fast on the fast tier, all-slow off it). Which
placement wins is a benchmark question (tieralloc_gups at full length), not a test's."""
import json
import subprocess
import sys
import tempfile

gups = sys.argv[1]
with tempfile.NamedTemporaryFile(suffix=".json") as out:
    r = subprocess.run([gups, "--seconds", "1", "--ws", "16M", "--json", out.name], capture_output=True, text=True,
                       timeout=120)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, f"exit status {r.returncode}"
    doc = json.load(open(out.name))
results = {m["mode"]: m for m in doc["results"]}
assert sorted(results) == sorted(["all-fast", "all-slow", "first-touch", "static-ratio", "tieralloc"]), results.keys()
for m in results.values():
    assert m["updates_per_s"] > 0 and m["timeline"], m["mode"]
    assert 0.0 <= m["fast_hit_ratio"] <= 1.0
assert results["all-fast"]["fast_hit_ratio"] > 0.99, results["all-fast"]["fast_hit_ratio"]
assert results["all-slow"]["fast_hit_ratio"] < 0.01, results["all-slow"]["fast_hit_ratio"]
assert results["first-touch"]["migrated_bytes"] == 0 and results["static-ratio"]["migrated_bytes"] == 0
# Bad options: exit status 2 with a message.
r = subprocess.run([gups, "--modes", "nonsense"], capture_output=True, text=True)
assert r.returncode == 2 and "unknown mode" in r.stderr, (r.returncode, r.stderr)
print("gups smoke: ok")
