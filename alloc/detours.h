// Every reason the malloc family may not go straight to jemalloc, in one word: zero almost always,
// so the wrappers' common case (alloc/preload.cc) tests one global for all of them at once, and
// pays for the poison subsystem and allocation sites together what it paid for one.
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
inline uint32_t detours() { return g_detours.load(std::memory_order_relaxed); }

}  // namespace tieralloc::alloc
