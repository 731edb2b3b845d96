#!/bin/bash
# Installs the Debian packages tieralloc needs that are missing. Runs `apt-get update` once, only
# when something must be installed. Not root: prints the apt-get line instead and fails.
#   --bench   also what `make bench` compares against: the peer allocators and redis. Kept apart so
#             that building and testing do not install (and start) a redis server.
set -euo pipefail
packages=(
  cmake ninja-build g++ make pkg-config python3 bzip2
  libjemalloc-dev libmemkind-dev libhwloc-dev libnuma-dev libgtest-dev libbenchmark-dev
  # programs the LD_PRELOAD tests run (tests/preload/)
  coreutils git redis-server redis-tools memcached
)
if [ "${1:-}" = --bench ]; then
  packages+=(libtcmalloc-minimal4 libmimalloc-dev redis-server redis-tools)
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--bench]" >&2
  exit 2
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tieralloc needs these Debian packages: ${missing[*]}" >&2
  echo "run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
