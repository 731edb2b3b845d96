#!/bin/sh
# busybox sort (the dynamically linked build) under LD_PRELOAD=libtieralloc.so with a 2 MiB fast
# budget, on 100000 lines: while sort holds the input in its heap (stdin still open), its
# /proc/PID/numa_maps must show pages on node 0 and on the slow node; its output must equal the
# static busybox's sort of the same file.
#   preload_sort.sh SLOW_NODE
slow=$1
awk 'BEGIN { srand(7); for (i = 0; i < 100000; i++) printf "%08d line %d\n", int(rand() * 1e8), i }' > input
busybox sort input > expected
mkfifo feed
TIERALLOC_FAST_LIMIT=2M TIERALLOC_STATS=stats.json LD_PRELOAD=/lib/x86_64-linux-gnu/libtieralloc.so \
  busybox-dynamic sort < feed > output &
pid=$!
exec 3> feed
cat input >&3
sleep 1  # let sort read what the pipe still buffers
grep -E ' N[0-9]+=' /proc/$pid/numa_maps > maps
exec 3>&-
wait $pid || { echo "FAIL: sort exited with $?"; exit 1; }
count() { awk -v key="N$1=" '{ for (i = 1; i <= NF; i++) if (index($i, key) == 1) s += substr($i, length(key) + 1) } END { print s + 0 }' maps; }
fast_pages=$(count 0)
slow_pages=$(count "$slow")
echo "sort's pages while holding its input: node0=$fast_pages node$slow=$slow_pages"
grep "N$slow=" maps | head -3
echo "TIERALLOC_STATS: $(cat stats.json)"
rc=0
cmp -s expected output && echo "output identical to the static busybox sort ($(wc -l < output) lines)" || { echo "FAIL: output differs"; rc=1; }
[ "$fast_pages" -gt 0 ] && [ "$slow_pages" -gt 256 ] || { echo "FAIL: not spread over node0 and node$slow"; rc=1; }
exit $rc
