#!/usr/bin/env python3
"""Host side of the guest's topology case: `tieralloc topology --json` as printed in the guest,
judged against the guest kernel's own sysfs answers printed beside it (topology_facts.sh) and
against the machine definition. Python is not in the guest, hence the split.
  topology_check.py SECTION_FILE MACHINE FACTS_JSON"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tool"))
from cli_check import check, finish  # noqa: E402

text, machine, facts = open(sys.argv[1]).read(), sys.argv[2], json.loads(sys.argv[3])
sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## )", text, re.S | re.M))
topo = json.loads(sections["tieralloc"])
cpulist = {int(l.split()[0]): (l.split() + [""])[1] for l in sections["cpulist"].splitlines()}
kernel_tier = {}
for line in sections["memory_tiering"].splitlines():
    tier_id, nodelist = line.split()
    for part in nodelist.split(","):
        lo, _, hi = part.partition("-")
        for n in range(int(lo), int(hi or lo) + 1):
            kernel_tier[n] = int(tier_id)
hmat_by_class = {}  # access class -> node -> {read_latency: ns, read_bandwidth: MB/s, ...}
for line in sections["hmat"].splitlines():
    node, access, name, value = line.split()
    hmat_by_class.setdefault(int(access), {}).setdefault(int(node), {})[name] = int(value)
hmat = hmat_by_class.get(0, {})  # access0 (any initiator): always there when HMAT is
dax = [line.split() for line in sections["dax"].splitlines()]
nodes = {n["id"]: n for n in topo["nodes"]}
slow = facts["slow_node"]
last_rank = len(topo["tiers"]) - 1

print("kernel: cpulist %s, memory_tiering %s, hmat %s, dax %s" % (cpulist, kernel_tier, hmat, dax))
print("tieralloc: " + ", ".join("node%d tier %s kind %s" % (i, n["tier"], n["kind"]) for i, n in sorted(nodes.items())))

check(not topo["emulated"], "real tiers, not emulated")
check(topo["kernel"]["numa_balancing"] == facts["numa_balancing"],
      "numa_balancing %s as the machine set it (%s)" % (topo["kernel"]["numa_balancing"], facts["numa_balancing"]))
check(set(nodes) == set(cpulist), "every kernel node reported: %s" % sorted(nodes))

# The CPU-less node: seen as such, usable, ranked in the slowest tier; node 0 in the fastest.
check(cpulist.get(slow) == "" and nodes[slow]["cpus"] == "", "node%d is CPU-less in the kernel and in tieralloc" % slow)
check(nodes[slow]["usable"] and nodes[slow]["tier"] == last_rank and last_rank > 0,
      "node%d usable, in the slowest tier (%s of %d)" % (slow, nodes[slow]["tier"], last_rank))
check(nodes[0]["tier"] == 0, "node0 (the CPUs' DRAM) in tier 0")

# HMAT: the kernel's figures are the machine's (100 ns and 20G for node 0, 300 ns and 4G for
# node 1), and tieralloc's evidence carries the kernel's figures.
check(hmat.get(0, {}).get("read_latency") == 100 and hmat.get(1, {}).get("read_latency") == 300,
      "kernel HMAT read latency node0 100 ns, node1 300 ns")
check(hmat.get(0, {}).get("read_bandwidth", 0) == 5 * hmat.get(1, {}).get("read_bandwidth", -1),
      "kernel HMAT read bandwidth node0 = 5 x node1")
for node in sorted(hmat):
    got = [e for e in nodes[node]["evidence"] if e.startswith("hmat:access")]
    m = re.match(r"hmat:access(\d+):", got[0]) if len(got) == 1 else None
    values = hmat_by_class.get(int(m.group(1)), {}).get(node, {}) if m else {}
    want = "hmat:access%s:read_latency=%dns,read_bandwidth=%dMB/s" % (
        m.group(1) if m else "?", values.get("read_latency", 0), values.get("read_bandwidth", 0))
    check(got == [want], "node%d HMAT evidence %s is the kernel's %s" % (node, got, want))
check("hmat:slower-than-dram" in nodes[1]["evidence"], "node1 judged slower than DRAM from HMAT")

# Where the kernel puts nodes in different memory tiers (lower id = faster), tieralloc ranks them
# the same way round. (Kernel 6.1 ignores HMAT here: the numa machine's two nodes share a tier.)
if len(set(kernel_tier.values())) < 2:
    print("kernel memory_tiering does not separate the nodes: %s" % kernel_tier)
for a in sorted(kernel_tier):
    for b in sorted(kernel_tier):
        if kernel_tier[a] < kernel_tier[b]:
            check(nodes[a]["tier"] < nodes[b]["tier"],
                  "kernel memory_tier%d (node%d) above memory_tier%d (node%d): tieralloc tiers %s < %s" %
                  (kernel_tier[a], a, kernel_tier[b], b, nodes[a]["tier"], nodes[b]["tier"]))

if "nvdimm_kmem" in facts["setup"]:
    kmem = [d for d in dax if len(d) == 3 and d[1] == str(slow) and d[2] == "kmem"]
    check(len(kmem) == 1, "kernel: one dax device on node%d bound to kmem: %s" % (slow, dax))
    check(kernel_tier.get(slow, 0) > kernel_tier.get(0, 0),
          "kernel puts the kmem node in a lower memory tier (memory_tier%s) than DRAM (memory_tier%s)" %
          (kernel_tier.get(slow), kernel_tier.get(0)))
    check(nodes[slow]["kind"] == "pmem", "node%d kind pmem (is %s)" % (slow, nodes[slow]["kind"]))
    name = kmem[0][0] if kmem else "?"
    check(any(e.startswith("dax:%s:kmem:" % name) for e in nodes[slow]["evidence"]) and
          "memory_tiering:%d" % kernel_tier.get(slow, -1) in nodes[slow]["evidence"],
          "node%d evidence names %s bound to kmem and its kernel tier: %s" % (slow, name, nodes[slow]["evidence"]))

finish("topology on %s" % machine)
