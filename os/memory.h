// Memory syscalls for the allocator: mapping, NUMA binding, page migration and queries. Every
// function here is async-signal-safe and allocation-free (raw syscalls, caller-provided buffers):
// they run inside jemalloc's extent hooks, where calling malloc could deadlock.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tieralloc::os {

constexpr size_t kPageSize = 4096;

// Anonymous read-write private mapping of `size` bytes aligned to `alignment` (a power of two,
// at least kPageSize). `hint`, when not null, is the exact address wanted: the result is null if
// the kernel cannot place it there. Null on failure, errno set.
void* map_anonymous(size_t size, size_t alignment, void* hint = nullptr);
bool unmap(void* addr, size_t size);
// Drops the contents of the range (next touch gives zero pages under the same NUMA policy).
bool discard(void* addr, size_t size);

enum class BindMode {
  kPreferred,   // fall back to other nodes when these are full (never OOM-kills while memory exists)
  kBind,        // only these nodes (TIERALLOC_STRICT)
  kInterleave,  // round-robin over these nodes
};
// mbind(2) of a range to nodes[0..n). `move` also migrates pages already present. 0 or -errno.
int bind(void* addr, size_t size, const int* nodes, int n, BindMode mode, bool move = false);

// move_pages(2) for this process. nodes == nullptr queries: status[i] = node or -errno.
// Returns 0 or -errno for the call as a whole.
long move_pages(size_t count, void** pages, const int* nodes, int* status);

// The node currently holding the page at addr, or -errno (-ENOENT: not faulted in yet).
int node_of(const void* addr);

// The CPU the calling thread runs on now, or -1.
int current_cpu();

// Free bytes of a NUMA node on the running machine, from /sys (never from a TIERALLOC_FSROOT
// tree: placement is about real memory). -1 when unknown.
long long node_free_bytes(int node);

}  // namespace tieralloc::os
