#!/bin/bash
# Installs the built project into a scratch prefix and builds a small consumer against it twice:
# with pkg-config and with find_package(tieralloc). Each consumer must run and see the tiers.
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
libdir=$(ls -d "$work"/prefix/lib*/ | head -1)

# pkg-config
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -o "$work/consumer_pc" "$src/consumer/main.c" $(pkg-config --cflags --libs tieralloc) -Wl,-rpath,"$libdir"
"$work/consumer_pc" | tee "$work/out_pc"
grep -q '^tiers: [1-9]' "$work/out_pc"

# CMake package
cmake -S "$src/consumer" -B "$work/cbuild" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/cbuild" >/dev/null
"$work/cbuild/consumer" | tee "$work/out_cmake"
grep -q '^tiers: [1-9]' "$work/out_cmake"
test -x "$work/prefix/bin/tieralloc"
"$work/prefix/bin/tieralloc" topology >/dev/null
echo "install_consumer: pkg-config and find_package consumers built and ran"
