// jemalloc's malloc and free fast paths, taken from tieralloc's fallbacks while the detour word
// (alloc/detours.h) keeps jemalloc's own from running.
//
// Why: allocation sites must see every call, so while they sample or steer, jemalloc's fast paths
// are put aside in every thread and each call reaches tieralloc's fallbacks. Past the fallback,
// jemalloc's general path (mallocx, dallocx) cost 436 instructions per 64-byte malloc/free pair,
// against 79 on the fast paths. The fast paths were put aside only so that tieralloc sees the call;
// once it has, and the allocation is a default one, the thread cache can serve it as the fast path
// would have.
//
// Taken only when the thread is slow for no reason but jemalloc's global switch (which the detour
// word sets): not while the thread starts, exits or re-enters jemalloc, has its cache turned off,
// or jemalloc's options need its slow path (junk, zero, utrace, xmalloc). The byte counters and
// their event thresholds are jemalloc's, as its fast paths keep them, so its events (cache GC,
// statistics, heap-profile samples) come when they would have. jemalloc's experimental hooks
// (experimental.hooks.install) also put the fast paths aside, and are not run for the calls served
// here while the detour word is set.
#pragma once

#include <cstddef>

#include "alloc/jemalloc_abi.h"

namespace tieralloc::alloc {

// A block of at most 4 KiB from this thread's cache, or nullptr where jemalloc's fast path would
// have fallen back (an event due, an empty bin, a thread not in the state above).
void* tcache_direct_alloc(size_t size);
// A default allocation while jemalloc's fast paths are put aside: from the thread cache as they
// would have served it, else through jemalloc's general path.
inline void* default_malloc(size_t size) {
  void* p = tcache_direct_alloc(size);
  return p ? p : raw_malloc(size);
}
// Puts a small block into this thread's cache; false where jemalloc's fast path would have fallen
// back (the caller frees it through jemalloc's general path).
bool tcache_direct_free(void* ptr);

}  // namespace tieralloc::alloc
