// Allocation-site heat in a real process: the tiering engine's hinting-fault sampler on emulated
// tiers, real faults, the linked malloc family. Two call sites allocate interleaved 1 KiB objects
// (so their objects share every run of pages); a thread keeps touching the objects of one of them.
// The engine must tell the sites apart from which object each first touch hit, and steer new
// allocations: the touched site's to tier 0's own arena, the untouched site's to the slow tier.
//
// Run by ctest twice: with TIERALLOC_TIERS=emulate:fast=256M,slow=1G TIERALLOC_SAMPLER=10%
// TIERALLOC_SITE_SAMPLE=16K (Sites.*), and with TIERALLOC_POLICY=static (SitesOff.*: no heat
// source, so nothing is sampled and nothing is looked up).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/stats_json.h"
#include "tieralloc/tieralloc.h"

extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen);

namespace {

using namespace std::chrono_literals;
using tieralloc::testing::stats_figure;
using tieralloc::testing::stats_json;

constexpr size_t kObject = 1024;
constexpr size_t kObjects = 8192;  // per site: 8 MiB each, interleaved

// Whether this process's malloc is tieralloc's: not in sanitizer builds, where the sanitizer's
// own malloc replaces it (tieralloc's API is still tieralloc's there).
bool malloc_is_tieralloc() {
  static const bool ours = [] {
    void* p = malloc(16);
    bool r = tieralloc_usable_size(p) != 0;
    free(p);
    return r;
  }();
  return ours;
}

// The two sites. noinline: each is one call instruction, so one return address, whoever calls it.
// The hot one is malloc where malloc is tieralloc's, so the malloc family's own path is what learns
// and steers; tieralloc_mallocx elsewhere.
__attribute__((noinline)) void* hot_site_alloc() {
  void* p = malloc_is_tieralloc() ? malloc(kObject) : tieralloc_mallocx(kObject, 0);
  asm volatile("" : : "r"(p) : "memory");
  return p;
}
void release(void* p) { malloc_is_tieralloc() ? free(p) : tieralloc_free(p); }
// A tieralloc_mallocx call site: default flags are placed by the site's class, explicit ones not.
__attribute__((noinline)) void* cold_site_alloc(int flags) {
  void* p = tieralloc_mallocx(kObject, flags);
  asm volatile("" : : "r"(p) : "memory");
  return p;
}

unsigned arena_of(void* p) {
  unsigned a = ~0u;
  size_t sz = sizeof a;
  EXPECT_EQ(mallctl("arenas.lookup", &a, &sz, &p, sizeof p), 0);
  return a;
}

// The objects of both sites, and a thread touching the hot site's objects (random objects, random
// bytes) until stopped. Shared by the tests of one process: learning takes seconds.
class Workload {
 public:
  static Workload& get() {
    static Workload* w = new Workload;
    return *w;
  }
  std::vector<void*> hot, cold;
  unsigned default_arena = ~0u;

  // Waits until the sites are told apart: a new object from the cold site lands on the slow tier
  // and one from the hot site comes from another arena than the default one. False on timeout.
  ::testing::AssertionResult learned(std::chrono::seconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int cold_tier = -1, hot_tier = -1;
    unsigned hot_arena = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      void* c = cold_site_alloc(0);
      void* h = hot_site_alloc();
      cold_tier = tieralloc_tier_of(c), hot_tier = tieralloc_tier_of(h), hot_arena = arena_of(h);
      tieralloc_free(c);
      tieralloc_free(h);
      if (cold_tier == 1 && hot_tier == 0 && hot_arena != default_arena) return ::testing::AssertionSuccess();
      std::this_thread::sleep_for(100ms);
    }
    return ::testing::AssertionFailure() << "not learned: a cold-site object on tier " << cold_tier
                                         << ", a hot-site object on tier " << hot_tier << " from arena " << hot_arena
                                         << " (default " << default_arena << ")";
  }

 private:
  Workload() {
    for (size_t i = 0; i < kObjects; ++i) {
      hot.push_back(hot_site_alloc());
      cold.push_back(cold_site_alloc(0));
      memset(hot.back(), 1, kObject);
      memset(cold.back(), 2, kObject);
    }
    default_arena = arena_of(hot[0]);
    toucher_ = std::thread([this] {
      uint64_t x = 0x9E3779B97F4A7C15ull;
      while (!stop_.load(std::memory_order_relaxed)) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        volatile char* b = static_cast<volatile char*>(hot[x % kObjects]) + (x >> 40) % kObject;
        *b = static_cast<char>(*b + 1);
      }
    });
    toucher_.detach();  // runs for the life of the process, as a server's hot path would
  }
  std::atomic<bool> stop_{false};
  std::thread toucher_;
};

TEST(Sites, SamplingRunsWithTheHeatSource) {
  Workload::get();
  std::string s = stats_json();
  EXPECT_NE(s.find("\"source\": \"sampler\""), std::string::npos) << s;
  EXPECT_EQ(stats_figure(s, "sample_bytes"), 16u * 1024) << s;
  // 16 MiB allocated at one sample per 16 KiB on average: about a thousand samples.
  EXPECT_GT(stats_figure(s, "sampled_allocations"), 500u) << s;
  EXPECT_GE(stats_figure(s, "tracked"), 2u) << s;
}

// While sites sample or steer, plain malloc and free reach tieralloc first, and the thread cache
// serves them past jemalloc's fast paths (alloc/tcache_direct.h). jemalloc's byte counters, which
// its events (cache GC, statistics) hang on, must still count every call.
TEST(Sites, JemallocCountsEveryPlainCallSitesSee) {
  if (!malloc_is_tieralloc()) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  Workload::get();
  ASSERT_GT(stats_figure(stats_json(), "sample_bytes"), 0u) << "sites are not sampling";
  uint64_t *allocated = nullptr, *deallocated = nullptr;
  size_t sz = sizeof allocated;
  ASSERT_EQ(mallctl("thread.allocatedp", &allocated, &sz, nullptr, 0), 0);
  ASSERT_EQ(mallctl("thread.deallocatedp", &deallocated, &sz, nullptr, 0), 0);
  const uint64_t allocated_before = *allocated, deallocated_before = *deallocated;
  constexpr uint64_t kPairs = 100000, kSize = 64;
  for (uint64_t i = 0; i < kPairs; ++i) {
    void* p = malloc(kSize);
    asm volatile("" : : "r"(p) : "memory");
    free(p);
  }
  EXPECT_GE(*allocated - allocated_before, kPairs * kSize);
  EXPECT_GE(*deallocated - deallocated_before, kPairs * kSize);
}

// With sites on, free takes tieralloc's fallback for every block; a tier's large block freed with
// plain free must still go back to its own arena, not to the cache the next plain malloc takes from.
TEST(Sites, PlainFreeOfATierBlockNeverServesPlainMalloc) {
  if (!malloc_is_tieralloc()) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  Workload::get();
  ASSERT_GT(stats_figure(stats_json(), "sample_bytes"), 0u) << "sites are not sampling";
  constexpr size_t kSize = 64 << 10;
  void* cold = tieralloc_mallocx(kSize, TIERALLOC_TIER(1));
  ASSERT_NE(cold, nullptr);
  memset(cold, 1, kSize);
  free(cold);
  void* p = malloc(kSize);
  ASSERT_NE(p, nullptr);
  memset(p, 2, kSize);
  EXPECT_NE(p, cold);
  EXPECT_EQ(tieralloc_tier_of(p), 0);
  free(p);
}

// The objects of the two sites share every run; only the first-touch address tells them apart.
TEST(Sites, TouchedSiteStartsFastUntouchedSiteStartsSlow) {
  Workload& w = Workload::get();
  for (int i = 0; i < 8; ++i) {  // both sites start on the fast tier: it has room for everything
    ASSERT_EQ(tieralloc_tier_of(w.hot[i * 1000]), 0);
    ASSERT_EQ(tieralloc_tier_of(w.cold[i * 1000]), 0);
  }
  ASSERT_TRUE(w.learned(60s)) << stats_json();
  std::string s = stats_json();
  EXPECT_GE(stats_figure(s, "hot"), 1u) << s;
  EXPECT_GE(stats_figure(s, "cold"), 1u) << s;

  // After learning, every new allocation from each site is placed by its class.
  std::vector<void*> h, c;
  for (int i = 0; i < 256; ++i) h.push_back(hot_site_alloc()), c.push_back(cold_site_alloc(0));
  size_t hot_fast = 0, cold_slow = 0, hot_own_arena = 0;
  for (void* p : h) hot_fast += tieralloc_tier_of(p) == 0, hot_own_arena += arena_of(p) != w.default_arena;
  for (void* p : c) cold_slow += tieralloc_tier_of(p) == 1;
  EXPECT_EQ(hot_fast, h.size());
  EXPECT_EQ(hot_own_arena, h.size()) << "hot-site objects share the default arena's pages";
  EXPECT_EQ(cold_slow, c.size());
  EXPECT_GT(stats_figure(stats_json(), "steered_allocations"), 0u);
  for (void* p : h) release(p);  // plain free where it is ours: steered blocks are jemalloc's
  for (void* p : c) release(p);
}

// Two more sites; noipa keeps the compiler from folding the first into hot_site_alloc (same body).
__attribute__((noipa)) void* short_lived_site_alloc() {
  void* p = malloc(kObject);
  asm volatile("" : : "r"(p) : "memory");
  return p;
}
__attribute__((noipa)) char* short_lived_new_site() {
  char* p = new char[kObject];
  asm volatile("" : : "r"(p) : "memory");
  return p;
}

// A freed sample is forgotten: its memory is no longer its site's, and crediting it would make a
// site look as cold as its dead objects. free, delete[], realloc and tieralloc_free all forget.
TEST(Sites, FreedSamplesAreForgotten) {
  if (!malloc_is_tieralloc()) GTEST_SKIP() << "the sanitizer's malloc, not tieralloc's, serves malloc/new here";
  Workload::get();
  std::vector<void*> v;
  std::vector<char*> a;
  v.reserve(2048), a.reserve(2048);
  const uint64_t before = stats_figure(stats_json(), "remembered_samples");
  for (int i = 0; i < 2048; ++i) v.push_back(short_lived_site_alloc()), a.push_back(short_lived_new_site());
  // 4 MiB at one sample per 16 KiB: about 256 samples, the newest 16 of each site kept.
  const uint64_t held = stats_figure(stats_json(), "remembered_samples");
  EXPECT_GE(held, before + 24) << stats_json();
  for (size_t i = 0; i < v.size(); ++i) {
    if (i % 3 == 0) free(v[i]);
    else if (i % 3 == 1) tieralloc_free(v[i]);
    else free(realloc(v[i], 4 * kObject));
    delete[] a[i];
  }
  // Give or take a sample of the statistics' own strings.
  EXPECT_LE(stats_figure(stats_json(), "remembered_samples"), before + 2) << stats_json();
}

// Explicit placement beats the site's class: flags at allocation, and tieralloc_hint afterwards.
TEST(Sites, HintsOverrideTheSiteClass) {
  Workload& w = Workload::get();
  ASSERT_TRUE(w.learned(60s)) << stats_json();
  void* steered = cold_site_alloc(0);
  void* hot = cold_site_alloc(TIERALLOC_HOT);
  void* tier0 = cold_site_alloc(TIERALLOC_TIER(0));
  EXPECT_EQ(tieralloc_tier_of(steered), 1);
  EXPECT_EQ(tieralloc_tier_of(hot), 0) << "TIERALLOC_HOT lost to the site's class";
  EXPECT_EQ(tieralloc_tier_of(tier0), 0) << "TIERALLOC_TIER(0) lost to the site's class";
  // A hint moves a steered object's pages and pins them: the engine leaves them there.
  ASSERT_EQ(tieralloc_hint(steered, kObject, TIERALLOC_HOT), 0);
  EXPECT_EQ(tieralloc_tier_of(steered), 0);
  void* from_hot_site = hot_site_alloc();
  ASSERT_EQ(tieralloc_tier_of(from_hot_site), 0);
  ASSERT_EQ(tieralloc_hint(from_hot_site, kObject, TIERALLOC_COLD), 0);
  EXPECT_EQ(tieralloc_tier_of(from_hot_site), 1);
  std::this_thread::sleep_for(1s);  // several policy rounds
  EXPECT_EQ(tieralloc_tier_of(steered), 0);
  EXPECT_EQ(tieralloc_tier_of(from_hot_site), 1);
  // Unpinned and put back where their arenas place them before they are freed: pages move, not
  // objects, so a freed block keeps its page's tier for its next owner.
  tieralloc_hint(steered, kObject, 0);
  tieralloc_hint(from_hot_site, kObject, 0);
  tieralloc_move(steered, kObject, 1);
  tieralloc_move(from_hot_site, kObject, 0);
  for (void* p : {steered, hot, tier0, from_hot_site}) tieralloc_free(p);
}

// fork() while threads allocate through the sampling and steering paths: never a deadlock; the
// child has no heat source, so its allocations take the default placement again.
TEST(Sites, ForkWhileAllocating) {
  Workload& w = Workload::get();
  ASSERT_TRUE(w.learned(60s)) << stats_json();
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        void* a = hot_site_alloc();
        void* b = cold_site_alloc(0);
        void* c = malloc(100 + (reinterpret_cast<uintptr_t>(a) >> 4) % 4000);
        release(a), tieralloc_free(b), free(c);
      }
    });
  int failures = 0;
  for (int i = 0; i < 20 && !failures; ++i) {
    pid_t pid = fork();
    if (pid < 0) {
      ADD_FAILURE() << "fork: " << strerror(errno);
      break;
    }
    if (pid == 0) {
      void* c = cold_site_alloc(0);
      void* h = hot_site_alloc();
      for (int k = 0; k < 10000; ++k) free(malloc(static_cast<size_t>(k % 5000) + 1));
      std::string s = stats_json();
      bool ok = c && h && tieralloc_tier_of(c) == 0 && s.find("\"steering\": false") != std::string::npos &&
                s.find("\"sample_bytes\": 0") != std::string::npos;
      _exit(ok ? 0 : 3);
    }
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status)) ADD_FAILURE() << "child died of signal " << WTERMSIG(status), ++failures;
    else if (WEXITSTATUS(status) != 0) ADD_FAILURE() << "the child still sampled or steered", ++failures;
  }
  stop = true;
  for (auto& t : threads) t.join();
}

// TIERALLOC_POLICY=static: no heat source, so no sampling, no lookup, nothing steered.
TEST(SitesOff, NothingSampledWithoutAHeatSource) {
  std::vector<void*> v;
  for (int i = 0; i < 16384; ++i) v.push_back(hot_site_alloc());
  for (int i = 0; i < 1024; ++i) tieralloc_free(cold_site_alloc(0));
  std::string s = stats_json();
  EXPECT_NE(s.find("\"source\": \"none\""), std::string::npos) << s;
  EXPECT_EQ(stats_figure(s, "sample_bytes"), 0u) << s;
  EXPECT_EQ(stats_figure(s, "sampled_allocations"), 0u) << s;
  EXPECT_EQ(stats_figure(s, "steered_allocations"), 0u) << s;
  for (void* p : v) release(p);
}

}  // namespace
