// The tier-aware heap on jemalloc. jemalloc (Debian's libjemalloc_pic.a) is linked into
// libtieralloc.so and exports the malloc family itself, so plain malloc/free run jemalloc's own
// fast path untouched; tieralloc lives where jemalloc gets address space, deciding where every
// new extent is mapped, binding it to a tier's node, and recording it in the page map.
//
// Arenas: the automatic arenas serve plain malloc/new with the fill-fast-first policy (the fastest
// tier with budget left, then the next) through jemalloc's default extent layer, which tieralloc
// overrides at link time; one arena per (tier, strict), with its own extent hooks, serves explicit
// requests,
// each thread with its own tcache per such arena, because jemalloc's thread cache is shared
// across arenas and would otherwise hand a tier-1 object to a tier-0 request.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace tieralloc::alloc {

constexpr int kMaxTiers = 8;
constexpr int kMaxNodesPerTier = 16;
constexpr uint64_t kNoLimit = UINT64_MAX;

struct TierCounters {
  uint64_t used_bytes;        // memory committed on the tier: in use or cached by jemalloc, not
                              // the address space it retains uncommitted
  uint64_t peak_bytes;        // highest used_bytes seen
  uint64_t limit_bytes;       // this process's budget on the tier (kNoLimit: none)
  uint64_t extents;           // extents committed here over the process's life
  uint64_t fallbacks;         // extents that wanted this tier but were placed on another
  uint64_t over_budget_bytes; // default allocations placed past every budget (never failed)
};

struct MoveCounters {
  uint64_t calls, bytes_moved, pages_failed;
};

// Allocation request, decoded from TIERALLOC_* flags.
struct Request {
  int tier = -1;        // -1: default placement
  bool strict = false;
  bool zero = false;
  size_t alignment = 0;  // 0: natural
};

// Initialises once: reads the topology and options and ends bootstrap placement (extents mapped
// before it are counted on tier 0 under the default NUMA policy). Called from the library
// constructor and lazily by every API entry point.
void heap_init();
bool heap_ready();

void* heap_alloc(size_t size, const Request& req);
void* heap_realloc(void* ptr, size_t size, const Request& req);
// Returns false (and frees nothing) when ptr is not memory tieralloc manages.
bool heap_free(void* ptr);
size_t heap_usable_size(const void* ptr);

int heap_tier_count();
TierCounters heap_tier_counters(int tier);
MoveCounters heap_move_counters();
// Tier of the page at addr now (real node when the topology is real), -errno on failure.
int heap_tier_of(const void* addr);
// Moves the pages covering [addr, addr+len) to tier; 0 or -errno.
int heap_move(void* addr, size_t len, int tier);

// Every address range tieralloc has mapped for jemalloc (extents, retained or in use), so the
// tiering engine can find the pages it tracks. Copies up to max; returns how many exist.
struct MappedRange {
  uintptr_t addr;
  size_t len;
};
size_t heap_mapped_ranges(MappedRange* out, size_t max);
bool heap_emulated();
// Asks the kernel to back every range mapped for jemalloc, now and later, with transparent huge
// pages (MADV_HUGEPAGE): the tiering engine's sampler takes access away from 2 MiB runs, which on
// a huge page is one page-table entry instead of 512. False when the kernel refused (no THP).
bool heap_use_huge_pages();

// Migrates single pages to tier with move_pages(2), leaving each range's binding alone (per-page
// mbind would split VMAs towards vm.max_map_count). status[i]: 0 moved (or, emulated, re-tiered
// in the page map), -ENOENT not resident (nothing to move), other -errno (left where it was; the
// caller may retry). Returns the number moved.
size_t heap_migrate_pages(const uintptr_t* pages, size_t n, int tier, int* status);
// Applies to [dst, dst+len) the NUMA placement of the managed page at `like` (its tier's node,
// strict or preferred as its arena's policy says), so memory that replaces that page lands where
// the page was placed. 0 (also when `like` has the default policy) or -errno.
int heap_bind_like(void* dst, size_t len, const void* like);

// jemalloc's figures: allocated and resident bytes (after refreshing its epoch).
void heap_jemalloc_stats(uint64_t* allocated, uint64_t* resident);
// Statistics document (JSON) as served by tieralloc_stats_json and TIERALLOC_STATS. Layers above
// the heap (tiering, poison) add a member each: "name": fn(), where fn returns a JSON value.
std::string heap_stats_json();
void heap_add_stats_section(const char* name, std::string (*fn)());

}  // namespace tieralloc::alloc
