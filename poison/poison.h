// The poison subsystem's interface to the allocator (alloc/): the quarantine flag the allocation
// fast path tests, the slow paths that keep quarantined memory from being handed out, and
// start-up. The public API is in include/tieralloc/tieralloc.h (tieralloc_poison_*).
//
// Model: a page reported poisoned keeps a bitmap of its bad cachelines (64 per 4 KiB page) and
// loses all access (PROT_NONE), so a stray load faults into tieralloc instead of consuming the
// poison. Recovery reads copy its good lines through /proc/self/mem; repair writes collect the
// new contents of its bad lines, and once every bad line is covered the page is rebuilt (fresh
// page, same placement, good lines and repair data) and returns to service.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "alloc/detours.h"

namespace tieralloc::poison {

constexpr size_t kLineSize = 64;
constexpr size_t kLinesPerPage = 64;

// Pages quarantined now.
extern std::atomic<size_t> g_quarantined_pages __attribute__((visibility("hidden")));
// Whether that count is above zero, as the allocation fast path sees it (alloc/detours.h): set
// before a page loses access, cleared after the last one is back.
inline bool anything_quarantined() { return alloc::detours() & alloc::kQuarantine; }

// Installs the SIGBUS (machine check) and SIGSEGV (stray access) filters unless `enabled` is
// false (TIERALLOC_POISON=off). Once; later calls do nothing.
void init(bool enabled);

// After init: the quarantine journal at `journal_path` ("" = none) and the nvdimm badblocks lists
// (through TIERALLOC_FSROOT) are read, resident pages tieralloc manages on frames they name are
// moved off them (tieralloc_poison_scan), and the worker thread that writes the journal starts.
// Called from the library's constructor, before other threads exist.
void start(const std::string& journal_path);

// True when [addr, addr+len) touches a quarantined page. Lock-free, async-signal-safe.
bool overlaps_quarantine(const void* addr, size_t len);

// Quarantines the cachelines covering [addr, addr+len) of pages tieralloc manages. Async-signal-
// safe. 0, or -errno: EINVAL (a page tieralloc does not manage), ENOSPC (quarantine table full).
int quarantine(uintptr_t addr, size_t len, int source);

// Allocation slow paths, taken only while something is quarantined (alloc/preload.cc): each
// allocates through jemalloc, holds aside any block overlapping a quarantined page, and retries.
// Zeroing and copying happen after the check, because jemalloc's own would write to the page.
void* malloc_avoiding(size_t size);
void* calloc_avoiding(size_t n, size_t size);
void* realloc_avoiding(void* ptr, size_t size);
int posix_memalign_avoiding(void** out, size_t alignment, size_t size);
void* aligned_alloc_avoiding(size_t alignment, size_t size);  // also memalign, valloc
void* mallocx_avoiding(size_t size, int flags);
void* rallocx_avoiding(void* ptr, size_t size, int flags);
size_t xallocx_avoiding(void* ptr, size_t size, size_t extra, int flags);
// operator new: null when out of memory (the caller runs the new-handler protocol).
void* new_avoiding(size_t size, size_t alignment);

// Frees the held-aside blocks that no longer overlap a quarantined page (after a repair).
void release_held_blocks();
size_t held_blocks();
// True when `block` is one of them.
bool held_aside(uintptr_t block);

// For a block just taken from jemalloc and handed to nobody that touches a quarantined page: the
// bad lines wholly inside it hold no live data, so they count as repaired (with zeros), and a
// page left with no other bad line is rebuilt and returns to service. True when the block no
// longer touches a quarantined page (it may be handed out); false: hold it aside.
bool absorb_free_block(const void* block, size_t len);

// While alive, [addr, addr+len) is memory this thread is zeroing for a block nobody else holds
// (the allocation slow paths' own zeroing). Poison consumed on a page wholly inside it -- a
// machine check, or a fault on a page quarantined meanwhile -- holds nothing that can be lost:
// the page gets a fresh zeroed frame and the store resumes. One range per thread; no nesting.
class ZeroingScope {
 public:
  ZeroingScope(void* addr, size_t len);
  ~ZeroingScope();
  ZeroingScope(const ZeroingScope&) = delete;
  ZeroingScope& operator=(const ZeroingScope&) = delete;
};

// The "poison" member of tieralloc_stats_json.
std::string stats_json();

}  // namespace tieralloc::poison
