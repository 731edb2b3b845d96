// Memory syscalls for the allocator: mapping, NUMA binding, page migration and queries. Every
// function here is async-signal-safe and allocation-free (raw syscalls, caller-provided buffers):
// they run inside jemalloc's extent hooks, where calling malloc could deadlock.
#pragma once

#include <cerrno>
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
// MADV_HUGEPAGE over [addr, addr+size): false when the kernel lacks transparent huge pages.
bool advise_huge_pages(void* addr, size_t size);

enum class Access { kNone, kRead, kReadWrite };
// mprotect(2). The range must be page-aligned.
bool protect(void* addr, size_t size, Access access);
// Replaces [to, to+size) with the pages of [from, from+size) in one step (mremap), so no thread
// ever sees the destination half-written; `from` is unmapped afterwards. Page-aligned.
bool move_mapping(void* from, void* to, size_t size);

// Reads this process's memory through /proc/self/mem: ignores page protection (it reads
// PROT_NONE pages) and fails with EIO instead of a machine check where the memory is poisoned.
// Bytes read, or -errno. The descriptor is reopened after fork (it names one address space).
long read_own_memory(void* dst, const void* src, size_t size);

// Entries of /proc/self/pagemap for the n pages from vaddr (bit 63 present, bits 0-54 the frame
// number, which reads as 0 without CAP_SYS_ADMIN). Entries read, or -errno.
long read_pagemap(uintptr_t vaddr, uint64_t* entries, size_t n);
// The same for another process (/proc/PID/pagemap: needs ptrace access to it, and CAP_SYS_ADMIN
// for frame numbers). For `tieralloc poison report --pid`.
long read_pagemap_of(int pid, uintptr_t vaddr, uint64_t* entries, size_t n);

// The physical frame number a pagemap entry names, or 0 when it names none this process may see:
// a present page (bits 0-54, zero without CAP_SYS_ADMIN), or a page the kernel took away because
// its frame is hardware-poisoned. The kernel leaves such a page's PTE as a special swap entry
// whose offset is the frame (seen on Debian 12's 6.1: type 26; tests/guest). Special entry types
// sit above every real swap area's: MAX_SWAPFILES is 32 less at most 9 special types on any
// configuration, and real swap areas are numbered from 0 up, so a type of 16 or more is special.
// Migration entries (also special) carry the frame too; device-private entries never name
// memory tieralloc maps.
inline uint64_t pagemap_frame(uint64_t entry) {
  constexpr uint64_t kPresent = 1ull << 63, kSwapped = 1ull << 62, kLow55 = (1ull << 55) - 1;
  if (entry & kPresent) return entry & kLow55;
  if ((entry & kSwapped) && (entry & 0x1f) >= 16) return (entry & kLow55) >> 5;
  return 0;
}

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

// The node currently holding the page at addr, or -errno (see absent_status; -EFAULT also when
// nothing is mapped there).
int node_of(const void* addr);

// True for a move_pages status that means "no page there to report or move now", given an address
// known to be mapped. Kernels disagree: current ones say -ENOENT for a page never faulted in;
// 6.1 (Debian 12) says -EFAULT for it, and -ENOENT for a present page it cannot reach at that
// moment (PROT_NONE, or being migrated), seen in tests/guest/kernel_test.cc.
inline bool absent_status(int status) { return status == -ENOENT || status == -EFAULT; }

// The CPU the calling thread runs on now, or -1.
int current_cpu();

// Free bytes of a NUMA node on the running machine, from /sys (never from a TIERALLOC_FSROOT
// tree: placement is about real memory). -1 when unknown.
long long node_free_bytes(int node);

}  // namespace tieralloc::os
