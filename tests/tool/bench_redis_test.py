#!/usr/bin/env python3
"""`tieralloc bench redis --quick`: Debian's redis-server, started and stopped by the tool on
127.0.0.1, once with its own jemalloc and once per fast-tier limit under tieralloc; each run served
redis-benchmark's SETs and GETs, and under tieralloc the server's statistics show where its data
went: with the fast tier limited to 8 MiB, most of the dataset is on the slow tier."""
import json
import subprocess
import sys
import tempfile

tool = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    r = subprocess.run([tool, "bench", "redis", "--quick", "--limits", "none,8M", "--json", f"{tmp}/r.json"],
                       capture_output=True, text=True, timeout=300)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, f"exit {r.returncode}"
    items = json.load(open(f"{tmp}/r.json"))["results"]["redis"]
runs = {(i["fast_limit"], i["test"]): i for i in items}
assert set(runs) == {(l, t) for l in ("-", "none", "8M") for t in ("SET", "GET")}, sorted(runs)
for i in items:
    assert i["requests_per_s"] > 0, i
unlimited, limited = runs[("none", "SET")], runs[("8M", "SET")]
assert unlimited["slow_bytes"] < unlimited["fast_bytes"], unlimited
assert limited["fast_bytes"] <= 9 << 20 and limited["slow_bytes"] > limited["fast_bytes"], limited
assert "fast_bytes" not in runs[("-", "SET")], "redis's own jemalloc has no tieralloc statistics"
print("bench redis: ok")
