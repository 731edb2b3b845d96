// tieralloc's poison handling against real hardware poison, inside the guest: madvise(MADV_HWPOISON)
// retires the frame under a page of tieralloc's heap (the kernel's memory_failure path, as for a
// real uncorrectable error), and every claim is checked with the kernel's own answers -- the
// signal's si_code and si_addr, /proc/meminfo HardwareCorrupted, move_pages and /proc/self/pagemap
// for where the page's new frame is. kernel_test.cc checks the raw kernel facts this builds on.
//
// Each test runs on the fastest and on the slowest tier (the CPU-less node; on the nvdimm machine
// the kmem-onlined NVDIMM), through that tier's explicit arena.
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/guest/kernel_facts.h"
#include "tests/support/stats_json.h"
#include "tieralloc/tieralloc.h"

namespace {

using tieralloc::guest::kPage;
using tieralloc::guest::meminfo_kb;
using tieralloc::guest::page_nodes;
using tieralloc::guest::pfn_of;
using tieralloc::testing::stats_figure;
using tieralloc::testing::stats_json;

#ifndef MADV_HWPOISON
constexpr int MADV_HWPOISON = 100;
#endif

char* page_of(const void* p) { return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & ~(kPage - 1)); }

// The application's own SIGBUS and SIGSEGV handlers, installed through tieralloc's sigaction: they
// see only what tieralloc passes on, and jump back to the code that armed them.
thread_local sigjmp_buf t_jump;
thread_local volatile sig_atomic_t t_armed;
std::atomic<int> g_app_signals{0};
volatile sig_atomic_t g_signo, g_code, g_lsb, g_quarantined_in_handler;
void* volatile g_addr;

void on_app_signal(int sig, siginfo_t* si, void*) {
  g_app_signals.fetch_add(1);
  g_signo = sig;
  g_code = si->si_code;
  g_addr = si->si_addr;
  g_lsb = sig == SIGBUS ? si->si_addr_lsb : 0;
  // tieralloc ran first: the page is quarantined before the application hears of it.
  g_quarantined_in_handler = tieralloc_poison_check(si->si_addr, 1) == 1;
  if (t_armed) siglongjmp(t_jump, 1);
  _exit(99);  // not expected here: the test's output says where it stopped
}

// True when reading the 8 bytes at p raised a signal that reached the application.
bool read_faults(const void* p) {
  g_signo = 0;
  t_armed = 1;
  bool faulted = true;
  if (sigsetjmp(t_jump, 1) == 0) {
    (void)*static_cast<const volatile uint64_t*>(p);
    faulted = false;
  }
  t_armed = 0;
  return faulted;
}

std::atomic<int> g_events{0}, g_event_source{0};
std::atomic<void*> g_event_addr{nullptr};
std::atomic<size_t> g_event_len{0};
std::mutex g_event_blocks_mu;
std::vector<void*> g_event_blocks;  // the last event's allocations
void on_poison_event(const tieralloc_poison_event* ev, void*) {
  {
    std::lock_guard<std::mutex> g(g_event_blocks_mu);
    g_event_blocks.clear();
    for (size_t i = 0; i < ev->nallocations; ++i) g_event_blocks.push_back(ev->allocations[i].addr);
  }
  g_event_addr.store(ev->addr);
  g_event_len.store(ev->len);
  g_event_source.store(ev->source);
  g_events.fetch_add(1);
}

bool wait_for_events(int n) {
  for (int i = 0; i < 500 && g_events.load() < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return g_events.load() >= n;
}

constexpr size_t kObj = 1280;  // a size class whose slots straddle pages (a 5-page slab of 16)

char pattern(size_t obj, size_t i) { return static_cast<char>(obj * 37 + i * 11 + 1); }

class GuestPoison : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    ASSERT_GE(tieralloc::guest::expected_slow_node(), 1) << "TIERALLOC_GUEST_SLOW_NODE is not set: run inside the guest";
    const int tiers = tieralloc_tier_count();
    ASSERT_GE(tiers, 2);
    tier_ = GetParam() == 0 ? 0 : tiers - 1;
    struct tieralloc_tier_info info;
    ASSERT_EQ(tieralloc_tier_info(tier_, &info), 0);
    nodes_ = std::set<int>(info.nodes, info.nodes + info.nnodes);
    if (tier_ > 0) {
      ASSERT_EQ(nodes_, std::set<int>{tieralloc::guest::expected_slow_node()});
    }
    struct sigaction sa {};
    sa.sa_sigaction = on_app_signal;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ASSERT_EQ(sigaction(SIGBUS, &sa, &old_bus_), 0);
    ASSERT_EQ(sigaction(SIGSEGV, &sa, &old_segv_), 0);
    ASSERT_EQ(tieralloc_set_poison_handler(on_poison_event, nullptr), 0);
    quarantined_before_ = tieralloc_quarantined_bytes();
    corrupted_before_ = meminfo_kb("HardwareCorrupted");
    ASSERT_GE(corrupted_before_, 0) << "the guest kernel has no CONFIG_MEMORY_FAILURE";
    app_signals_before_ = g_app_signals.load();
  }
  void TearDown() override {
    prctl(PR_MCE_KILL, PR_MCE_KILL_CLEAR, 0, 0, 0);
    tieralloc_set_poison_handler(nullptr, nullptr);
    sigaction(SIGBUS, &old_bus_, nullptr);
    sigaction(SIGSEGV, &old_segv_, nullptr);
    for (char* o : objs_) tieralloc_free(o);
  }

  int flags() const { return TIERALLOC_TIER(tier_); }

  // A 16-page block of this tier, filled and freed (so the thread cache hands it back next), with
  // the page in its middle that the tests poison, and that page's frame before the poison.
  struct FreedBlock {
    static constexpr size_t kSize = 16 * kPage;
    char* block = nullptr;
    char* victim = nullptr;
    uint64_t victim_pfn = 0;
  };
  FreedBlock free_a_filled_block() const {
    FreedBlock f;
    f.block = static_cast<char*>(tieralloc_mallocx(FreedBlock::kSize, flags()));
    EXPECT_NE(f.block, nullptr);
    if (!f.block) return f;
    std::memset(f.block, 0x77, FreedBlock::kSize);
    f.victim = page_of(f.block + FreedBlock::kSize / 2);
    EXPECT_TRUE(on_tier(f.victim));
    f.victim_pfn = pfn_of(f.victim);
    tieralloc_free(f.block);
    return f;
  }
  bool on_tier(const void* page) const { return nodes_.count(page_nodes(page, 1).at(0)) == 1; }

  // Objects of kObj bytes on the tier, each filled with its own pattern, and a page wholly tiled by
  // them whose neighbours are too: the page to poison.
  char* live_objects_and_victim() {
    for (size_t i = 0; i < 64; ++i) {
      auto* o = static_cast<char*>(tieralloc_mallocx(kObj, flags()));
      if (!o) return nullptr;
      for (size_t b = 0; b < kObj; ++b) o[b] = pattern(objs_.size(), b);
      objs_.push_back(o);
    }
    auto covered = [&](const char* page) {
      const uintptr_t lo = reinterpret_cast<uintptr_t>(page), hi = lo + kPage;
      size_t bytes = 0;
      for (char* o : objs_) {
        const uintptr_t a = std::max(reinterpret_cast<uintptr_t>(o), lo), b = std::min(reinterpret_cast<uintptr_t>(o) + kObj, hi);
        bytes += b > a ? b - a : 0;
      }
      return bytes == kPage;
    };
    for (char* o : objs_) {
      char* page = page_of(o) + kPage;
      if (covered(page - kPage) && covered(page) && covered(page + kPage)) return page;
    }
    return nullptr;
  }

  // Checks the objects around the poisoned page the way a program would salvage them: every good
  // byte of the objects overlapping it and its neighbours, and exactly the lost range as bad.
  void expect_recovery_read(const char* victim) {
    for (size_t k = 0; k < objs_.size(); ++k) {
      char* o = objs_[k];
      if (!o || o + kObj <= victim - kPage || o >= victim + 2 * kPage) continue;
      char out[kObj];
      tieralloc_range bad[4];
      size_t nbad = 4;
      const char* lost_from = std::max<const char*>(o, victim);
      const char* lost_to = std::min<const char*>(o + kObj, victim + kPage);
      const size_t lost = lost_to > lost_from ? static_cast<size_t>(lost_to - lost_from) : 0;
      ASSERT_EQ(tieralloc_recovery_read(out, o, kObj, bad, &nbad), static_cast<ssize_t>(kObj - lost)) << "object " << k;
      if (lost) {
        ASSERT_EQ(nbad, 1u) << "object " << k;
        EXPECT_EQ(bad[0].offset, static_cast<size_t>(lost_from - o));
        EXPECT_EQ(bad[0].len, lost);
      } else {
        EXPECT_EQ(nbad, 0u) << "object " << k << " is on a neighbouring page";
      }
      for (size_t b = 0; b < kObj; ++b) {
        const bool in_lost = o + b >= lost_from && o + b < lost_to;
        ASSERT_EQ(out[b], in_lost ? 0 : pattern(k, b)) << "object " << k << " byte " << b;
      }
    }
  }

  // Rewrites every live object overlapping the page from the program's own copy (here: the
  // pattern); the last one completes the page, which is rebuilt and back in service.
  void repair_objects_on(char* victim) {
    std::vector<size_t> lost;
    for (size_t k = 0; k < objs_.size(); ++k)
      if (objs_[k] && objs_[k] < victim + kPage && objs_[k] + kObj > victim) lost.push_back(k);
    ASSERT_GE(lost.size(), 3u);
    for (size_t i = 0; i < lost.size(); ++i) {
      char fix[kObj];
      for (size_t b = 0; b < kObj; ++b) fix[b] = pattern(lost[i], b);
      const int rc = tieralloc_repair_write(objs_[lost[i]], fix, kObj);
      ASSERT_EQ(rc, i + 1 == lost.size() ? 0 : 1) << "repair " << i << " of " << lost.size();
    }
  }

  // The page is in service again on a new frame of the same tier, the bad frame stays retired, and
  // every object reads back with plain loads.
  void expect_back_in_service(char* victim, uint64_t bad_pfn) {
    EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined_before_);
    EXPECT_EQ(tieralloc_poison_check(victim, kPage), 0);
    for (size_t k = 0; k < objs_.size(); ++k) {
      if (!objs_[k]) continue;
      for (size_t b = 0; b < kObj; ++b) ASSERT_EQ(objs_[k][b], pattern(k, b)) << "object " << k << " byte " << b;
    }
    EXPECT_TRUE(on_tier(victim)) << "node " << page_nodes(victim, 1).at(0);
    EXPECT_NE(pfn_of(victim), 0u);
    EXPECT_NE(pfn_of(victim), bad_pfn) << "a fresh frame";
    EXPECT_EQ(meminfo_kb("HardwareCorrupted"), corrupted_before_ + 4) << "the bad frame stays retired";
    EXPECT_EQ(stats_figure(stats_json(), "held_blocks"), 0u);
  }

  int tier_ = 0;
  std::set<int> nodes_;
  std::vector<char*> objs_;
  size_t quarantined_before_ = 0;
  long corrupted_before_ = 0;
  int app_signals_before_ = 0;
  struct sigaction old_bus_ {}, old_segv_ {};
};

// Late kill (the default): nothing happens at injection; the thread that reads the page takes
// BUS_MCEERR_AR at the exact address, tieralloc quarantines the page before the application's
// handler runs, and the program salvages and repairs its objects.
TEST_P(GuestPoison, ConsumedPoisonInLiveObjectsIsQuarantinedRecoveredAndRepaired) {
  char* victim = live_objects_and_victim();
  ASSERT_NE(victim, nullptr);
  ASSERT_TRUE(on_tier(victim) && on_tier(victim - kPage) && on_tier(victim + kPage));
  const uint64_t bad_pfn = pfn_of(victim);
  ASSERT_NE(bad_pfn, 0u) << "pagemap gives no frame numbers (not root?)";
  const int events_before = g_events.load();

  ASSERT_EQ(madvise(victim, kPage, MADV_HWPOISON), 0) << strerror(errno);
  EXPECT_EQ(g_app_signals.load(), app_signals_before_) << "late kill: no signal at injection";
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined_before_) << "nobody has told tieralloc yet";
  EXPECT_EQ(meminfo_kb("HardwareCorrupted"), corrupted_before_ + 4);

  // An object that starts inside the page, read at an address that is not the page start.
  char* reader_target = nullptr;
  for (char* o : objs_)
    if (o > victim && o < victim + kPage) reader_target = o + 8;
  ASSERT_NE(reader_target, nullptr);
  bool faulted = false;
  std::thread reader([&] { faulted = read_faults(reader_target); });
  reader.join();
  ASSERT_TRUE(faulted);
  EXPECT_EQ(g_signo, SIGBUS);
  EXPECT_EQ(g_code, BUS_MCEERR_AR);
  EXPECT_EQ(g_addr, reader_target) << "si_addr is the exact address read";
  EXPECT_EQ(g_lsb, 12);
  EXPECT_TRUE(g_quarantined_in_handler) << "quarantined before the application's handler ran";
  EXPECT_EQ(tieralloc_poison_check(victim, kPage), 1);
  EXPECT_EQ(tieralloc_poison_check(victim - kPage, kPage), 0);
  EXPECT_EQ(tieralloc_poison_check(victim + kPage, kPage), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined_before_ + kPage);
  ASSERT_TRUE(wait_for_events(events_before + 1));
  EXPECT_EQ(g_event_source.load(), TIERALLOC_POISON_CONSUMED);
  EXPECT_EQ(g_event_addr.load(), victim);
  EXPECT_EQ(g_event_len.load(), kPage);
  {
    // The objects to fetch again: each one the page touches.
    std::lock_guard<std::mutex> g(g_event_blocks_mu);
    for (char* o : objs_) {
      if (o + kObj > victim && o < victim + kPage) {
        EXPECT_NE(std::find(g_event_blocks.begin(), g_event_blocks.end(), o), g_event_blocks.end()) << "object " << static_cast<void*>(o);
      }
    }
  }
  printf("tier %d: poisoned %p (node %d, pfn 0x%llx); read at %p -> SIGBUS si_code=%d si_addr=%p lsb=%d; "
         "quarantined %zu bytes; HardwareCorrupted %ld -> %ld kB\n",
         tier_, static_cast<void*>(victim), *nodes_.begin(), static_cast<unsigned long long>(bad_pfn),
         static_cast<void*>(reader_target), static_cast<int>(g_code), g_addr, static_cast<int>(g_lsb),
         tieralloc_quarantined_bytes(), corrupted_before_, meminfo_kb("HardwareCorrupted"));

  // The program gives up the object wholly inside the page; jemalloc would hand its slot out
  // first, but no allocation may overlap the quarantined page.
  size_t dropped = objs_.size();
  for (size_t k = 0; k < objs_.size() && dropped == objs_.size(); ++k)
    if (objs_[k] >= victim && objs_[k] + kObj <= victim + kPage) dropped = k;
  ASSERT_LT(dropped, objs_.size());
  tieralloc_free(objs_[dropped]);
  objs_[dropped] = nullptr;
  std::vector<char*> later;
  for (int i = 0; i < 400; ++i) {
    const size_t size = i % 4 == 3 ? 3 * kPage : kObj;
    auto* q = static_cast<char*>(tieralloc_mallocx(size, flags()));
    ASSERT_NE(q, nullptr);
    ASSERT_TRUE(q + size <= victim || q >= victim + kPage) << "allocation " << i << " overlaps the quarantined page";
    std::memset(q, 1, size);
    later.push_back(q);
  }
  EXPECT_GE(stats_figure(stats_json(), "held_blocks"), 1u) << "the dropped object's slot was held aside";

  expect_recovery_read(victim);
  repair_objects_on(victim);
  expect_back_in_service(victim, bad_pfn);
  for (char* q : later) tieralloc_free(q);
  // Back in service: the dropped object's slot serves allocations again.
  bool landed = false;
  for (int i = 0; i < 64 && !landed; ++i) {
    auto* q = static_cast<char*>(tieralloc_mallocx(kObj, flags()));
    landed = q >= victim && q < victim + kPage;
    later.push_back(q);
  }
  EXPECT_TRUE(landed);
  EXPECT_EQ(g_app_signals.load(), app_signals_before_ + 1);
}

// Early kill: the kernel signals BUS_MCEERR_AO while madvise runs. tieralloc takes it alone (the
// application's handler never sees it) and quarantines the page before anything reads it: a read
// afterwards faults on the quarantined page (SIGSEGV) instead of consuming poison.
TEST_P(GuestPoison, EarlyKillActionOptionalQuarantinesBeforeAnyConsumption) {
  char* victim = live_objects_and_victim();
  ASSERT_NE(victim, nullptr);
  ASSERT_TRUE(on_tier(victim));
  const uint64_t bad_pfn = pfn_of(victim);
  ASSERT_NE(bad_pfn, 0u);
  const auto strays_before = stats_figure(stats_json(), "stray_accesses");
  ASSERT_EQ(prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0), 0);
  const int events_before = g_events.load();

  ASSERT_EQ(madvise(victim, kPage, MADV_HWPOISON), 0) << strerror(errno);
  EXPECT_EQ(tieralloc_poison_check(victim, kPage), 1) << "quarantined when madvise returns";
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined_before_ + kPage);
  EXPECT_EQ(g_app_signals.load(), app_signals_before_) << "an action-optional report on tieralloc's memory is tieralloc's";
  EXPECT_EQ(meminfo_kb("HardwareCorrupted"), corrupted_before_ + 4);
  ASSERT_TRUE(wait_for_events(events_before + 1));
  EXPECT_EQ(g_event_source.load(), TIERALLOC_POISON_FOUND) << "BUS_MCEERR_AO";
  EXPECT_EQ(g_event_addr.load(), victim);
  EXPECT_EQ(g_event_len.load(), kPage);

  ASSERT_TRUE(read_faults(victim + 200));
  EXPECT_EQ(g_signo, SIGSEGV) << "a load after quarantine meets no access, not poison";
  EXPECT_EQ(g_code, SEGV_ACCERR);
  EXPECT_EQ(g_addr, victim + 200);
  EXPECT_EQ(stats_figure(stats_json(), "stray_accesses"), strays_before + 1);
  printf("tier %d: early kill; poisoned %p -> tieralloc event source=%d (AO) at %p len %zu; a later read -> "
         "SIGSEGV si_code=%d\n", tier_, static_cast<void*>(victim), g_event_source.load(), g_event_addr.load(),
         g_event_len.load(), static_cast<int>(g_code));

  expect_recovery_read(victim);
  repair_objects_on(victim);
  expect_back_in_service(victim, bad_pfn);
}

// Early kill on a page that holds no live object (a freed block's): tieralloc quarantines it, and
// the next allocation jemalloc makes from that block takes the page back on a fresh frame. The
// program sees nothing.
TEST_P(GuestPoison, PoisonOnAFreePageIsAbsorbed) {
  const size_t size = FreedBlock::kSize;
  const auto [block, victim, bad_pfn] = free_a_filled_block();
  ASSERT_FALSE(HasFailure());
  const auto absorbed_before = stats_figure(stats_json(), "free_absorbed_pages");
  ASSERT_EQ(prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0), 0);

  ASSERT_EQ(madvise(victim, kPage, MADV_HWPOISON), 0) << strerror(errno);
  EXPECT_EQ(tieralloc_poison_check(victim, kPage), 1);
  EXPECT_EQ(meminfo_kb("HardwareCorrupted"), corrupted_before_ + 4);

  auto* again = static_cast<char*>(tieralloc_mallocx(size, flags()));
  ASSERT_EQ(again, block) << "the thread cache hands the freed block back";
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined_before_);
  EXPECT_EQ(stats_figure(stats_json(), "free_absorbed_pages"), absorbed_before + 1);
  for (size_t i = 0; i < kPage; ++i) ASSERT_EQ(victim[i], 0) << "byte " << i;
  std::memset(again, 0x78, size);
  for (size_t i = 0; i < size; i += 512) ASSERT_EQ(again[i], 0x78);
  EXPECT_TRUE(on_tier(victim)) << "node " << page_nodes(victim, 1).at(0);
  EXPECT_NE(pfn_of(victim), bad_pfn);
  EXPECT_EQ(g_app_signals.load(), app_signals_before_);
  tieralloc_free(again);
}

// Late kill on a freed block, consumed by the allocator's own zeroing when the block is handed out
// again with TIERALLOC_ZERO (tieralloc zeroes itself while anything is quarantined, here a page
// reported by software): the machine check is repaired on the spot and the zeroing resumes.
TEST_P(GuestPoison, PoisonConsumedByTheAllocatorsOwnZeroingIsRepairedOnTheSpot) {
  auto* keep = static_cast<char*>(tieralloc_mallocx(2 * kPage, flags() | TIERALLOC_ALIGN(kPage)));
  ASSERT_NE(keep, nullptr);
  std::memset(keep, 3, 2 * kPage);
  ASSERT_EQ(tieralloc_poison_report(keep + kPage, 64), 0);
  const size_t quarantined = tieralloc_quarantined_bytes();

  const size_t size = FreedBlock::kSize;
  const auto [block, victim, bad_pfn] = free_a_filled_block();
  ASSERT_FALSE(HasFailure());
  const auto replaced_before = stats_figure(stats_json(), "zeroing_replaced_pages");

  ASSERT_EQ(madvise(victim, kPage, MADV_HWPOISON), 0) << strerror(errno);
  EXPECT_EQ(meminfo_kb("HardwareCorrupted"), corrupted_before_ + 4);
  EXPECT_EQ(tieralloc_poison_check(victim, kPage), 0) << "late kill: tieralloc has not heard of it";

  auto* zeroed = static_cast<char*>(tieralloc_mallocx(size, flags() | TIERALLOC_ZERO));
  ASSERT_EQ(zeroed, block) << "the thread cache hands the freed block back";
  for (size_t i = 0; i < size; ++i) ASSERT_EQ(zeroed[i], 0) << "byte " << i;
  EXPECT_EQ(stats_figure(stats_json(), "zeroing_replaced_pages"), replaced_before + 1);
  EXPECT_EQ(g_app_signals.load(), app_signals_before_) << "the program never heard of it";
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined) << "nothing new was quarantined";
  EXPECT_TRUE(on_tier(victim)) << "node " << page_nodes(victim, 1).at(0);
  EXPECT_NE(pfn_of(victim), bad_pfn);
  printf("tier %d: freed block's page %p poisoned (pfn 0x%llx), consumed by TIERALLOC_ZERO's zeroing: "
         "replaced, now pfn 0x%llx on node %d\n", tier_, static_cast<void*>(victim),
         static_cast<unsigned long long>(bad_pfn), static_cast<unsigned long long>(pfn_of(victim)),
         page_nodes(victim, 1).at(0));

  char fix[64];
  std::memset(fix, 3, sizeof fix);
  ASSERT_EQ(tieralloc_repair_write(keep + kPage, fix, sizeof fix), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined_before_);
  tieralloc_free(zeroed);
  tieralloc_free(keep);
}

INSTANTIATE_TEST_SUITE_P(Tiers, GuestPoison, ::testing::Values(0, 1),
                         [](const auto& info) { return info.param == 0 ? std::string("fastest") : std::string("slowest"); });

}  // namespace
