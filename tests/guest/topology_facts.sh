#!/bin/sh
# Inside the guest: tieralloc's topology (JSON), then the kernel's own answers it is judged against
# (tests/guest/topology_check.py on the host), each section after a '## name' line.
set -e
echo "## tieralloc"
tieralloc topology --json
echo "## cpulist"
for n in /sys/devices/system/node/node[0-9]*; do echo "${n##*/node} $(cat $n/cpulist)"; done
echo "## memory_tiering"
for t in /sys/devices/virtual/memory_tiering/memory_tier*; do echo "${t##*/memory_tier} $(cat $t/nodelist)"; done
echo "## hmat"
for f in /sys/devices/system/node/node*/access*/initiators/*_latency /sys/devices/system/node/node*/access*/initiators/*_bandwidth; do
  [ -f "$f" ] || continue
  rel=${f#/sys/devices/system/node/node}
  access=${rel#*/access}
  echo "${rel%%/*} ${access%%/*} ${f##*/} $(cat $f)"
done
echo "## dax"
for d in /sys/bus/dax/devices/*; do
  [ -e "$d" ] && echo "${d##*/} $(cat $d/target_node) $(basename $(readlink $d/driver))"
done
echo "## end"
tieralloc topology
