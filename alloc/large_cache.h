// Plain malloc's large blocks (16 KiB to 1 MiB), kept per thread from a free to the next plain
// malloc of the same size class.
//
// Why: a large malloc/free pair through jemalloc costs 2.5 times glibc's (530 against 330
// instructions at 64 KiB, callgrind), and most of it is not the allocation. Every large call moves
// the thread's byte counters past jemalloc's 64 KiB event threshold (the peak-usage statistic), and
// each event recomputes every event's threshold; the rest is mallocx's general path. A block kept
// here is one jemalloc still counts as allocated, so taking it back costs neither.
//
// Only blocks of jemalloc's automatic arenas, the ones plain malloc allocates from, are kept: a
// block of a tier's arena (tieralloc_mallocx) freed with plain free goes where tieralloc_free would
// put it (heap_free). Nothing is kept or handed out while the detour word is nonzero
// (alloc/detours.h): a quarantined page must not come back through here, and allocation sites see
// every call. Off when jemalloc samples for heap profiling (opt.prof), which counts bytes too.
#pragma once

#include <cstddef>

namespace tieralloc::alloc {

// Enables the cache (from heap initialisation, once jemalloc is up).
void large_cache_init();
// A block for plain malloc(size) from this thread's cache, or nullptr. Only called while the detour
// word is zero.
void* large_cache_take(size_t size);
// Plain free's end (free, sdallocx and sized delete, with their flags) while the detour word is
// zero: keeps a large block of an automatic arena, or frees the block -- a large block of a tier's
// arena to that arena's own thread cache (heap_free), not the thread's default one, which is shared
// by all arenas and would hand it to the next plain malloc of its size class.
void large_cache_free(void* ptr, int flags);
// Bytes this thread keeps. initial-exec: a plain %fs-relative load, which is all a fallback call
// pays for large_cache_flush while the detour word is set.
extern constinit thread_local size_t t_large_cache_bytes __attribute__((tls_model("initial-exec"), visibility("hidden")));
void large_cache_flush_all();
// Gives this thread's blocks back to jemalloc: when the detour word is set, before a strict request
// retries past a budget, and at thread exit.
inline void large_cache_flush() {
  if (__builtin_expect(t_large_cache_bytes != 0, 0)) large_cache_flush_all();
}

}  // namespace tieralloc::alloc
