#!/usr/bin/env python3
"""`tieralloc topology --json` on every fixture, as a user runs it: the documented JSON shape,
exit status 0, warnings on stderr for bad input, and exit status 2 for a bad option."""
import json
import os
import subprocess
import sys
import tempfile

from cli_check import check, clean_env, finish

tool, fixtures = sys.argv[1], sys.argv[2]


def run(args, env_extra=None):
    env = clean_env(**(env_extra or {}))
    return subprocess.run([tool] + args, capture_output=True, text=True, env=env, timeout=60)


NODE_KEYS = ["id", "cpus", "kind", "usable", "tier", "capacity_bytes", "evidence"]
TIER_KEYS = ["rank", "kind", "nodes", "capacity_bytes"]
KINDS = {"dram", "hbm", "pmem", "cxl", "gpu", "unknown"}

expected = {  # archive -> list of node lists per tier, fastest first
    "fakememinitiators-1np2c+1npp+gi": [[5, 6, 8, 9], [7, 10]],
    "fakeheteromemtiers": [[2, 4], [0, 1], [6, 8, 9]],
    "nvidiagpunumanodes": [[0, 8]],
    "16amd64-8n2c": [[0, 1, 2, 3, 4, 5, 6, 7]],
    "memorysidecaches": [[0, 1, 2, 3]],
    "32em64t-2n8c+dax+nvme+mic+dimms": [[0, 1]],
}

for name, tiers in expected.items():
    with tempfile.TemporaryDirectory() as d:
        # tar(1), not tarfile: Python's extractor takes seconds per archive on these trees.
        subprocess.run(["tar", "--no-same-owner", "-xjf", os.path.join(fixtures, name + ".tar.bz2"), "-C", d], check=True)
        root = os.path.join(d, os.listdir(d)[0])
        r = run(["topology", "--json"], {"TIERALLOC_FSROOT": root})
        check(r.returncode == 0, f"{name}: exit 0 (stderr: {r.stderr.strip()[:200]})")
        doc = json.loads(r.stdout)
        check(list(doc.keys()) == ["emulated", "nodes", "tiers", "kernel"], f"{name}: top-level keys")
        check(all(list(n.keys()) == NODE_KEYS for n in doc["nodes"]), f"{name}: node keys")
        check(all(list(t.keys()) == TIER_KEYS for t in doc["tiers"]), f"{name}: tier keys")
        check(all(n["kind"] in KINDS for n in doc["nodes"]), f"{name}: kinds are known")
        check([t["nodes"] for t in doc["tiers"]] == tiers, f"{name}: tiers {tiers}")
        check(all((n["tier"] is None) == (not n["usable"]) for n in doc["nodes"]), f"{name}: unusable nodes have tier null")
        table = run(["topology", "--fsroot", root])
        check(table.returncode == 0 and "TIER" in table.stdout and "numa_balancing" in table.stdout, f"{name}: table")

r = run(["topology", "--json"], {"TIERALLOC_TIERS": "emulate:fast=1G,slow=4G"})
doc = json.loads(r.stdout)
check(doc["emulated"] is True and [t["capacity_bytes"] for t in doc["tiers"]] == [1 << 30, 4 << 30], "emulated tiers in JSON")
r = run(["topology"], {"TIERALLOC_TIERS": "emulate:fast=1G,slow=4G"})
check(r.stdout.startswith("EMULATED"), "emulated table says so on its first line")
r = run(["topology", "--json"], {"TIERALLOC_TIERS": "emulate:fast=zz"})
check(r.returncode == 0 and "TIERALLOC_TIERS" in r.stderr and json.loads(r.stdout)["emulated"] is False,
      "malformed TIERALLOC_TIERS: warning, discovery instead")
r = run(["topology", "--json"], {"TIERALLOC_FSROOT": "/no/such/dir"})
check(r.returncode == 0 and "TIERALLOC_FSROOT" in r.stderr and len(json.loads(r.stdout)["tiers"]) >= 1,
      "missing TIERALLOC_FSROOT: warning, real root instead")
r = run(["topology", "--bogus"])
check(r.returncode == 2 and "unknown option" in r.stderr, "bad option: exit 2 with a message")
r = run(["frobnicate"])
check(r.returncode == 2, "unknown command: exit 2")

finish("topology_cli")
