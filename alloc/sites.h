// Allocation sites: which call site (the return address of the malloc-family entry point) allocated
// a sample of the heap's objects, and what the tiering engine learned of each site's heat. A
// default allocation from a site known hot starts on the fast tier, from a site known cold on the
// slowest, so hot and cold objects stop sharing pages; explicit requests (a tier, TIERALLOC_HOT or
// _COLD) never consult it.
//
// Sampling is the heap profilers' (tcmalloc's Sampler, jemalloc's prof_sample): each thread counts
// down the bytes it allocates from an exponentially distributed interval of mean
// TIERALLOC_SITE_SAMPLE bytes, so an object's chance of being sampled grows with its size and the
// phase of allocation patterns cannot alias with the interval. The fast path pays a decrement and a
// predictable branch; the slow path records (site, address, size) in fixed tables without
// allocating.
//
// Without a heat source nothing here runs: the malloc family tests one word (alloc/detours.h, 0
// unless the tiering engine runs with its sampler or something is quarantined) and goes straight
// to jemalloc. With one, sampling runs
// from the start and the class lookup (a small open-addressing hash of return address -> class, one
// word per site, site and class read together) only once some site has a class.
//
// Everything is lock-free and fixed-size (no allocation, no lock to hold across fork). Sites are
// never removed: a code address stays the same site for the life of the process.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "alloc/detours.h"

namespace tieralloc::alloc {

enum class SiteClass : uint8_t { kUnknown = 0, kHot = 1, kCold = 2 };

// kSiteSample | kSiteSteer, or 0.
inline uint32_t site_mode() { return detours() & kSiteBits; }

constexpr size_t kSiteSlots = 4096;   // sites tracked at most
// Sampled objects remembered: one table indexed by a hash of the object's address, a new sample
// replacing whatever its slot held, and a freed object's sample dropped by free (site_forget).
// So the table holds, slot by slot, the latest sample to land there if it is still alive: close to
// a uniform sample of the live heap (an object's chance to be held grows with its lifetime, up to
// the time between two samples landing in one slot), which is what placement is about. A ring of
// the newest samples would instead hold the allocations of whatever site churns fastest, and keeping
// the newest few per site holds the survivors of a churning site -- its coldest objects.
constexpr size_t kSiteSamples = 16384;  // 256 KiB of zero-initialised table
// Per thread: bytes left before the next sample (0: not started). initial-exec and constinit: a
// plain %fs-relative access, no __tls_get_addr (which may call malloc) and no init wrapper.
extern constinit thread_local uint64_t t_site_bytes_left
    __attribute__((tls_model("initial-exec"), visibility("hidden")));
// The countdown ran out: draws the next interval; true when this allocation is a sample.
bool site_countdown_expired();
// The tier a site's class asks for: 0 (hot), the slowest (cold) or -1 (unknown).
int site_tier(uintptr_t site);

// True when an allocation of `size` bytes needs nothing more from sites: sampling only, and the
// countdown (decremented here) has not run out. The wrappers' common case with sites on, so it
// is inline and leaves them a tail call into jemalloc. `detour_word` is the wrapper's detours().
inline bool site_pass(size_t size, uint32_t detour_word) {
  if ((detour_word & kSiteBits) != kSiteSample) return false;
  const uint64_t left = t_site_bytes_left;
  if (__builtin_expect(size >= left, 0)) return false;
  t_site_bytes_left = left - size;
  return true;
}

// For a default allocation of `size` bytes from `site`: the tier it should start on (-1: the
// default fill-fast-first placement) and, in *sampled, whether it is to be recorded with
// site_record once allocated. Call only when site_mode() != 0. Inline: the countdown is a
// decrement and a branch the predictor learns.
inline int site_decide(size_t size, uintptr_t site, bool* sampled) {
  const uint32_t mode = site_mode();
  *sampled = false;
  if (mode & kSiteSample) {
    const uint64_t left = t_site_bytes_left;
    if (__builtin_expect(size < left, 1)) t_site_bytes_left = left - size;
    else *sampled = site_countdown_expired();
  }
  return (mode & kSiteSteer) ? site_tier(site) : -1;
}
// Records a sampled allocation: its site (inserted if new) and the object. Lock-free, no allocation.
void site_record(uintptr_t site, const void* p, size_t size);
// A default allocation placed on `tier` for its site: through the tier's arena, falling back to
// other tiers as such requests do (never failing because of a budget). nullptr when it failed;
// errno is left as it was, for the caller's fallback to the default placement.
void* site_alloc(size_t size, int tier, bool zero, size_t alignment = 0);

// Frees a block while sites steer: back to the thread cache of the arena it came from (the default
// one for default blocks), so steered blocks are reused only by allocations steered the same way.
void site_free_steered(void* p);

struct SampleSlot {
  std::atomic<uintptr_t> addr{0};  // 0: empty
  std::atomic<uint64_t> meta{0};   // size (low 32 bits) | site slot (high 32)
};
extern constinit SampleSlot g_samples[kSiteSamples] __attribute__((visibility("hidden")));
inline size_t sample_slot(uintptr_t p) { return static_cast<size_t>((p * 0x9E3779B97F4A7C15ull) >> 50); }
static_assert(kSiteSamples == 16384, "sample_slot takes 14 bits");
// Called for every block being freed (or moved by realloc) while sites are on: drops its sample if
// it is one; a load and a compare otherwise.
inline void site_forget(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  SampleSlot& s = g_samples[sample_slot(a)];
  uintptr_t held = s.addr.load(std::memory_order_relaxed);
  if (__builtin_expect(held == a && a != 0, 0)) s.addr.compare_exchange_strong(held, 0, std::memory_order_relaxed);
}

// For a block being freed while sites are on: forgets it if it is a sample (a freed object's memory
// must not be credited to its site: its dead objects would look untouched, and cold); true when
// it then goes to jemalloc's own free, false when it must go through site_free_steered.
inline bool site_free_plain(const void* p, uint32_t detour_word) {
  site_forget(p);
  return !(detour_word & kSiteSteer);
}

// Starts sampling every mean_bytes on average (the tiering engine, when it has a heat source);
// sites_stop ends sampling and steering (engine stopped); sites_stop_in_forked_child, from an atfork child handler.
void sites_start(uint64_t mean_bytes);
void sites_stop();
void sites_stop_in_forked_child();
uint64_t sites_sample_bytes();  // the mean interval while started, else 0

// The engine's side. A sampled object, as remembered: address, size, and its site's slot.
struct SiteSample {
  uintptr_t addr;
  uint32_t size;
  uint32_t slot;
};
// Copies the remembered samples (at most max); returns how many were copied.
size_t site_samples(SiteSample* out, size_t max);
// The site (return address) in a slot, 0 for an empty slot; its class, and a new class for it.
uintptr_t site_at(uint32_t slot);
SiteClass site_class(uint32_t slot);
void site_set_class(uint32_t slot, SiteClass c);
// Turns the class lookup on once any site has a class (and off when none has).
void sites_set_steering(bool on);

struct SiteCounters {
  uint64_t tracked;   // sites in the table
  uint64_t sampled;   // allocations sampled
  uint64_t steered;   // default allocations placed by their site's class (counted per thread in batches of 64)
  uint64_t dropped;   // samples of sites the full table could not take
  uint64_t remembered; // samples held now (live objects: freed ones are forgotten)
};
SiteCounters site_counters();

}  // namespace tieralloc::alloc
