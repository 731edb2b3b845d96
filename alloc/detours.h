// Every reason the malloc family may not take jemalloc's fast paths, in one word. While it is
// zero (almost always) malloc, free and operator new/delete are jemalloc's own fast paths, with
// nothing of tieralloc's in front; while it is not, jemalloc's fast paths are put aside in every
// thread (jemalloc's own "slow mode", the one its hooks use), so that every call reaches the
// fallbacks tieralloc defines (alloc/preload.cc), which serve the poison subsystem and allocation
// sites. The other entry points test the word themselves.
#pragma once

#include <atomic>
#include <cstdint>

namespace tieralloc::alloc {

// Allocation sites (alloc/sites.h): allocations are sampled / default allocations are steered by
// their site's class.
constexpr uint32_t kSiteSample = 1, kSiteSteer = 2, kSiteBits = kSiteSample | kSiteSteer;
// Something is quarantined (poison/poison.h): allocations avoid quarantined pages.
constexpr uint32_t kQuarantine = 4;

// Hidden: the wrappers read it PC-relative, one load, no GOT.
extern constinit std::atomic<uint32_t> g_detours __attribute__((visibility("hidden")));
// Whether jemalloc's fast paths are put aside now (changed only by jemalloc_slow_sync).
extern constinit std::atomic<bool> g_jemalloc_slow __attribute__((visibility("hidden")));
inline uint32_t detours() { return g_detours.load(std::memory_order_relaxed); }

// Sets / clears bits of the word and puts jemalloc's fast paths aside / back to match. Not from a
// signal handler: jemalloc's switch takes one of its locks.
void detours_add(uint32_t bits);
void detours_remove(uint32_t bits);

// True when jemalloc's fast paths are off exactly while the word is nonzero.
inline bool jemalloc_slow_matches() {
  return (detours() != 0) == g_jemalloc_slow.load(std::memory_order_acquire);
}
// Brings jemalloc's fast paths in line with the word. Not from a signal handler. A signal handler
// that set a bit (the poison subsystem's, for a machine check) leaves this to a thread in normal
// context -- the poison worker, woken by the handler, and failing that every fallback call (through
// jemalloc_in_step) -- and may wait for it with jemalloc_slow_await.
void jemalloc_slow_sync();
// The cheap check first: what the fallbacks and the poison worker call. Not from a signal handler.
inline void jemalloc_in_step() {
  if (!jemalloc_slow_matches()) jemalloc_slow_sync();
}
// Async-signal-safe: waits up to `ms` milliseconds for some thread to run jemalloc_slow_sync.
void jemalloc_slow_await(int ms);

}  // namespace tieralloc::alloc
