#include "alloc/sites.h"

#include <errno.h>
#include <time.h>

#include <algorithm>
#include <cmath>

#include "alloc/heap.h"
#include "alloc/jemalloc_abi.h"

namespace tieralloc::alloc {

constinit thread_local uint64_t t_site_bytes_left = 0;
constinit SampleSlot g_samples[kSiteSamples] = {};

namespace {

// One word per site: the return address in the low 60 bits (user-space code addresses are below
// 2^47 on x86-64 and 2^52 elsewhere), its class in the top bits, so a reader on the allocation path
// gets both from one load, whatever the engine writes meanwhile. 0 = empty. Application threads
// only ever change 0 into a site (insertion); the engine only changes the class of a site.
constexpr uint64_t kAddrMask = (uint64_t{1} << 60) - 1;
constexpr int kClassShift = 60;
constexpr size_t kMaxProbes = 32;
static_assert((kSiteSlots & (kSiteSlots - 1)) == 0);

constinit std::atomic<uint64_t> g_sites[kSiteSlots] = {};

// g_samples (sites.h): a writer clears addr, writes the rest, then publishes addr; a reader takes
// an entry only when addr reads the same before and after, so it never pairs one object's address
// with another's site.

constinit std::atomic<uint64_t> g_mean_bytes{0};
constinit std::atomic<uint64_t> g_tracked{0}, g_sampled{0}, g_steered{0}, g_dropped{0};

// Per thread: the interval generator's state (0: not seeded), and steered allocations not yet added
// to g_steered. initial-exec: no __tls_get_addr (which may call malloc) on the allocation path.
__attribute__((tls_model("initial-exec"))) constinit thread_local uint64_t t_rng = 0;
__attribute__((tls_model("initial-exec"))) constinit thread_local uint32_t t_steered = 0;

size_t home(uintptr_t site) { return static_cast<size_t>((site * 0x9E3779B97F4A7C15ull) >> (64 - 12)) & (kSiteSlots - 1); }
static_assert(kSiteSlots == 4096, "home() takes 12 bits");

// Slot of site, inserting it when absent; -1 when the table has no room near its home.
int find_or_insert(uintptr_t site) {
  for (size_t i = home(site), n = 0; n < kMaxProbes; i = (i + 1) & (kSiteSlots - 1), ++n) {
    uint64_t w = g_sites[i].load(std::memory_order_acquire);
    if (w == 0) {
      if (g_sites[i].compare_exchange_strong(w, site, std::memory_order_acq_rel)) {
        g_tracked.fetch_add(1, std::memory_order_relaxed);
        return static_cast<int>(i);
      }
      // Lost the slot to another thread: it may have inserted this very site.
    }
    if ((w & kAddrMask) == site) return static_cast<int>(i);
  }
  return -1;
}

SiteClass lookup(uintptr_t site) {
  for (size_t i = home(site), n = 0; n < kMaxProbes; i = (i + 1) & (kSiteSlots - 1), ++n) {
    uint64_t w = g_sites[i].load(std::memory_order_relaxed);
    if ((w & kAddrMask) == site) return static_cast<SiteClass>(w >> kClassShift);
    if (w == 0) return SiteClass::kUnknown;
  }
  return SiteClass::kUnknown;
}

// xorshift64*: enough randomness for sampling intervals, no state beyond one word per thread.
uint64_t next_random() {
  uint64_t x = t_rng;
  x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
  t_rng = x;
  return x * 0x2545F4914F6CDD1Dull;
}

// An exponentially distributed interval of the configured mean (a Poisson process over allocated
// bytes), at least one byte, at most 32 means.
uint64_t draw_interval() {
  double mean = static_cast<double>(g_mean_bytes.load(std::memory_order_relaxed));
  double u = (static_cast<double>(next_random() >> 11) + 1) * 0x1.0p-53;  // (0, 1]
  double bytes = -std::log(u) * mean;
  return static_cast<uint64_t>(std::clamp(bytes, 1.0, 32 * mean));
}

}  // namespace

// A thread's first allocation only starts its countdown, the generator seeded from the thread's
// own address and the clock so threads do not sample in lockstep.
bool site_countdown_expired() {
  bool sample = t_rng != 0;
  if (!sample) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t_rng = (reinterpret_cast<uintptr_t>(&t_rng) * 0x9E3779B97F4A7C15ull) ^ static_cast<uint64_t>(ts.tv_nsec) ^ 1;
  }
  t_site_bytes_left = draw_interval();
  return sample;
}

int site_tier(uintptr_t site) {
  switch (lookup(site)) {
    case SiteClass::kHot: return 0;
    case SiteClass::kCold: return heap_tier_count() - 1;
    default: return -1;
  }
}

void site_record(uintptr_t site, const void* p, size_t size) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (!a || (site & ~kAddrMask) || !site) return;
  g_sampled.fetch_add(1, std::memory_order_relaxed);
  int slot = find_or_insert(site);
  if (slot < 0) {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  SampleSlot& s = g_samples[sample_slot(a)];
  s.addr.store(0, std::memory_order_relaxed);
  uint64_t bytes = size < UINT32_MAX ? size : UINT32_MAX;
  s.meta.store(bytes | (static_cast<uint64_t>(slot) << 32), std::memory_order_release);
  s.addr.store(a, std::memory_order_release);
}

void* site_alloc(size_t size, int tier, bool zero, size_t alignment) {
  Request r;
  r.tier = tier;
  r.zero = zero;
  r.alignment = alignment;
  int saved = errno;
  void* p = heap_alloc(size, r);
  errno = saved;  // the caller falls back to the default placement: its errno is what counts
  if (p && (++t_steered & 63) == 0) g_steered.fetch_add(64, std::memory_order_relaxed);
  return p;
}

void site_free_steered(void* p) {
  if (p && !heap_free(p)) raw_free(p);  // not in the page map: not tieralloc's to route
}

void sites_start(uint64_t mean_bytes) {
  if (!mean_bytes) return;
  g_mean_bytes.store(mean_bytes, std::memory_order_relaxed);
  detours_add(kSiteSample);
}

void sites_stop() { detours_remove(kSiteBits); }

// In an atfork child handler the switch's lock may still be held for the fork (alloc/detours.cc):
// the first fallback call after the fork brings jemalloc's fast paths back.
void sites_stop_in_forked_child() { g_detours.fetch_and(~kSiteBits, std::memory_order_relaxed); }

uint64_t sites_sample_bytes() {
  return (site_mode() & kSiteSample) ? g_mean_bytes.load(std::memory_order_relaxed) : 0;
}

size_t site_samples(SiteSample* out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < kSiteSamples && n < max; ++i) {
    SampleSlot& s = g_samples[i];
    uintptr_t a = s.addr.load(std::memory_order_acquire);
    if (!a) continue;
    uint64_t meta = s.meta.load(std::memory_order_acquire);
    if (s.addr.load(std::memory_order_acquire) != a) continue;  // rewritten meanwhile
    out[n++] = SiteSample{a, static_cast<uint32_t>(meta), static_cast<uint32_t>(meta >> 32)};
  }
  return n;
}

uintptr_t site_at(uint32_t slot) { return slot < kSiteSlots ? g_sites[slot].load(std::memory_order_relaxed) & kAddrMask : 0; }

SiteClass site_class(uint32_t slot) {
  return slot < kSiteSlots ? static_cast<SiteClass>(g_sites[slot].load(std::memory_order_relaxed) >> kClassShift)
                           : SiteClass::kUnknown;
}

void site_set_class(uint32_t slot, SiteClass c) {
  if (slot >= kSiteSlots) return;
  uint64_t w = g_sites[slot].load(std::memory_order_relaxed);
  if (!w) return;
  g_sites[slot].store((w & kAddrMask) | (static_cast<uint64_t>(c) << kClassShift), std::memory_order_relaxed);
}

void sites_set_steering(bool on) {
  if (!on) {
    detours_remove(kSiteSteer);
    return;
  }
  // Steering only while sampling is on, decided in the same word: sites_stop may run meanwhile
  // (engine_stop, from another thread), and steering left on without sampling would send every
  // malloc and free down the sites' slow path for good.
  uint32_t d = g_detours.load(std::memory_order_relaxed);
  while ((d & kSiteSample) && !g_detours.compare_exchange_weak(d, d | kSiteSteer, std::memory_order_relaxed)) {
  }
  jemalloc_in_step();  // every policy round calls this: the lock and wake-up only on a change
}

SiteCounters site_counters() {
  uint64_t remembered = 0;
  for (const SampleSlot& s : g_samples) remembered += s.addr.load(std::memory_order_relaxed) != 0;
  return SiteCounters{g_tracked.load(std::memory_order_relaxed), g_sampled.load(std::memory_order_relaxed),
                      g_steered.load(std::memory_order_relaxed), g_dropped.load(std::memory_order_relaxed), remembered};
}

}  // namespace tieralloc::alloc
