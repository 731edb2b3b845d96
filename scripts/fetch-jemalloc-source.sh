#!/bin/bash
# Fetches Debian's source of the installed libjemalloc-dev (same version, Debian's patches applied)
# into a cache and prints the source tree's path. tieralloc builds its jemalloc from it
# (alloc/CMakeLists.txt explains why), with the configure options of Debian's own build.
# Needs no root: apt-get runs on a private list of deb-src lines, in the cache.
#   TIERALLOC_CACHE   where to keep it (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tieralloc)
set -euo pipefail
version=$(dpkg-query -W -f='${source:Version}' libjemalloc-dev 2>/dev/null) || {
  echo "fetch-jemalloc-source: libjemalloc-dev is not installed (scripts/install-deps.sh)" >&2
  exit 1
}
upstream=${version%-*}
cache=${TIERALLOC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tieralloc}
tree=$cache/jemalloc-$version/jemalloc-$upstream
if [ -f "$tree/configure" ] && [ -f "$tree/.tieralloc-complete" ]; then
  echo "$tree"
  exit 0
fi
work=$cache/jemalloc-$version
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
# The suites of the system's own Debian sources, as deb-src.
suites=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
cat > "$work/apt/sources.list" <<SRC
deb-src http://deb.debian.org/debian $suites main
deb-src http://deb.debian.org/debian $suites-updates main
deb-src http://deb.debian.org/debian-security $suites-security main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=$(id -un)")
apt-get "${apt_opts[@]}" -qq update >&2
(cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only "jemalloc=$version" >&2)
# apt-get checked the files against the signed Sources index; dpkg-source's own signature check
# would need Debian's developer keyring, hence --no-check.
(cd "$work" && dpkg-source --no-check -x jemalloc_"$version".dsc "jemalloc-$upstream" >&2)
touch "$tree/.tieralloc-complete"
echo "$tree"
