#!/bin/bash
# Installs the Debian packages tieralloc needs that are missing. Runs `apt-get update` once, only
# when something must be installed. Not root: prints the apt-get line instead and fails.
#   --bench   also what `make bench` compares against: the peer allocators and redis. Kept apart so
#             that building and testing do not install (and start) a redis server.
#   --guest   also what the guest-kernel tests (tests/guest/) run on: QEMU, a static busybox, cpio,
#             and package lists that know the current bookworm kernel (the guest's kernel and tools
#             are fetched with `apt-get download`, which needs no root). These are optional: when
#             they cannot be installed (not root) this says so and succeeds; the guest tests then
#             skip, saying why.
set -euo pipefail
packages=(
  cmake ninja-build g++ make pkg-config python3 bzip2
  # scripts/fetch-jemalloc-source.sh: dpkg-source, and dpkg-buildflags for Debian's compiler flags
  dpkg-dev
  libjemalloc-dev libmemkind-dev libhwloc-dev libnuma-dev libgtest-dev libbenchmark-dev
  # tieralloc bench: its results documents, its charts, and the schema check of its tests
  nlohmann-json3-dev gnuplot-nox python3-jsonschema
  # programs the LD_PRELOAD tests run (tests/preload/)
  coreutils git redis-server redis-tools memcached
)
guest_packages=(qemu-system-x86 busybox-static cpio)
guest=0
if [ "${1:-}" = --bench ]; then
  packages+=(libtcmalloc-minimal4 libmimalloc-dev redis-server redis-tools)
elif [ "${1:-}" = --guest ]; then
  guest=1
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--bench|--guest]" >&2
  exit 2
fi
missing_of() {
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
mapfile -t missing < <(missing_of "${packages[@]}")
guest_missing=()
if [ $guest = 1 ]; then
  mapfile -t guest_missing < <(missing_of "${guest_packages[@]}")
  # apt-get download resolves linux-image-amd64 from the package lists; a fresh container has none.
  apt-cache show linux-image-amd64 >/dev/null 2>&1 || lists_missing=1
fi
[ ${#missing[@]} -eq 0 ] && [ ${#guest_missing[@]} -eq 0 ] && [ -z "${lists_missing:-}" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "tieralloc needs these Debian packages: ${missing[*]}" >&2
    echo "run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "the guest-kernel tests will be skipped: they need ${guest_missing[*]:-up-to-date package lists}" >&2
  echo "run: sudo apt-get update && sudo apt-get install -y ${guest_missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
missing+=("${guest_missing[@]}")
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
