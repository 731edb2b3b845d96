// The poison subsystem through its C API, with libtieralloc.so linked: real machine-check signals
// (the thread sends itself SIGBUS with BUS_MCEERR_AR/AO, si_addr and si_addr_lsb), real page
// protection, real allocations. Each test runs in its own process (gtest_discover_tests).
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "tests/support/fault.h"
#include "tests/support/kernel_default_actions.h"
#include "tests/support/stats_json.h"
#include "tieralloc/tieralloc.h"

namespace {

// These tests report healthy frames as bad; the quarantine journal would remember them for every
// later program of this user. ctest points it at a scratch file; run by hand, say where.
class ScratchJournal : public ::testing::Environment {
  void SetUp() override {
    if (getenv("TIERALLOC_QUARANTINE_FILE")) return;
    fprintf(stderr, "poison_test: set TIERALLOC_QUARANTINE_FILE to a scratch file (or off), or run it through ctest\n");
    _exit(2);
  }
};
[[maybe_unused]] ::testing::Environment* const g_scratch_journal = ::testing::AddGlobalTestEnvironment(new ScratchJournal);

using tieralloc::testing::in_child;
using tieralloc::testing::kernel_handler;
using tieralloc::testing::send_fault;
using tieralloc::testing::stats_figure;
using tieralloc::testing::stats_json;

constexpr size_t kPage = 4096, kLine = 64;

char* page_of(void* p) { return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & ~(kPage - 1)); }

// A page-aligned tieralloc block of n pages, filled with a pattern that names every byte.
char* pattern_pages(size_t n) {
  auto* p = static_cast<char*>(tieralloc_mallocx(n * kPage, TIERALLOC_ALIGN(kPage)));
  for (size_t i = 0; i < n * kPage; ++i) p[i] = static_cast<char>(i * 131 + 7);
  return p;
}
char expected(size_t i) { return static_cast<char>(i * 131 + 7); }

std::atomic<int> g_app_bus{0};
std::atomic<void*> g_app_bus_addr{nullptr};
void app_bus_handler(int, siginfo_t* info, void*) {
  g_app_bus.fetch_add(1);
  g_app_bus_addr.store(info->si_addr);
}

TEST(Poison, ReportQuarantinesThePageAndCheckSeesIt) {
  char* p = pattern_pages(4);
  const size_t before = tieralloc_quarantined_bytes();
  ASSERT_EQ(tieralloc_poison_report(p + kPage + 130, 10), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), before + kPage);
  EXPECT_EQ(tieralloc_poison_check(p + kPage, 1), 1);
  EXPECT_EQ(tieralloc_poison_check(p, kPage), 0);
  EXPECT_EQ(tieralloc_poison_check(p + 2 * kPage, 2 * kPage), 0);
  EXPECT_EQ(tieralloc_poison_check(p, 2 * kPage), 1);
  // Reporting again adds nothing; the page is counted once.
  ASSERT_EQ(tieralloc_poison_report(p + kPage + 2000, 1), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), before + kPage);

  int stack_byte = 0;
  EXPECT_EQ(tieralloc_poison_report(&stack_byte, 1), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(tieralloc_poison_report(nullptr, 1), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(tieralloc_poison_report(p, 0), -1);
  EXPECT_EQ(tieralloc_poison_check(nullptr, 1), -1);
}

char* g_stray_target = nullptr;
int stray_load() {
  volatile char c = *g_stray_target;
  (void)c;
  return 0;
}

TEST(Poison, StrayLoadOnAQuarantinedPageFaultsIntoTierallocNotPoison) {
  char* p = pattern_pages(2);
  ASSERT_EQ(tieralloc_poison_report(p + kPage, 64), 0);
  g_stray_target = p + kPage + 3000;  // a good line of the page: the whole page lost access
  int status = in_child(stray_load);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  g_stray_target = p + 10;  // the neighbouring page is untouched
  status = in_child(stray_load);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(Poison, ActionOptionalSigbusQuarantinesOneLine) {
  char* p = pattern_pages(2);
  char* line = p + kPage + 17 * kLine;
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, line + 5, 6), 0);
  EXPECT_EQ(tieralloc_poison_check(line, 1), 1);
  std::vector<char> out(2 * kPage, 'x');
  tieralloc_range bad[4];
  size_t nbad = 4;
  ASSERT_EQ(tieralloc_recovery_read(out.data(), p, 2 * kPage, bad, &nbad), static_cast<ssize_t>(2 * kPage - kLine));
  ASSERT_EQ(nbad, 1u);
  EXPECT_EQ(bad[0].offset, kPage + 17 * kLine);
  EXPECT_EQ(bad[0].len, kLine);
  for (size_t i = 0; i < 2 * kPage; ++i) {
    bool in_bad = i >= bad[0].offset && i < bad[0].offset + kLine;
    ASSERT_EQ(out[i], in_bad ? 0 : expected(i)) << "byte " << i;
  }
}

TEST(Poison, PageGranularReportMarksEveryLine) {
  char* p = pattern_pages(3);
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, p + kPage + 999, 12), 0);
  std::vector<char> out(3 * kPage);
  tieralloc_range bad[4];
  size_t nbad = 4;
  EXPECT_EQ(tieralloc_recovery_read(out.data(), p + 100, 3 * kPage - 200, bad, &nbad), static_cast<ssize_t>(2 * kPage - 200));
  ASSERT_EQ(nbad, 1u);
  EXPECT_EQ(bad[0].offset, kPage - 100);
  EXPECT_EQ(bad[0].len, kPage);
}

TEST(Poison, RecoveryReadReturnsEveryGoodByteAndExactlyTheBadRanges) {
  char* p = pattern_pages(3);
  // Lines 3, 4 (adjacent: one range), 40 of page 1, and line 63 of page 1 + line 0 of page 2
  // (adjacent across the page boundary: one range).
  ASSERT_EQ(tieralloc_poison_report(p + kPage + 3 * kLine, 2 * kLine), 0);
  ASSERT_EQ(tieralloc_poison_report(p + kPage + 40 * kLine + 63, 1), 0);
  ASSERT_EQ(tieralloc_poison_report(p + 2 * kPage - 1, 2), 0);
  const size_t off = 77, len = 3 * kPage - 77 - 33;
  std::vector<char> out(len, 'x');
  tieralloc_range bad[8];
  size_t nbad = 8;
  ssize_t good = tieralloc_recovery_read(out.data(), p + off, len, bad, &nbad);
  ASSERT_EQ(nbad, 3u);
  const tieralloc_range want[3] = {{kPage + 3 * kLine - off, 2 * kLine},
                                   {kPage + 40 * kLine - off, kLine},
                                   {2 * kPage - kLine - off, 2 * kLine}};
  size_t bad_bytes = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(bad[i].offset, want[i].offset) << i;
    EXPECT_EQ(bad[i].len, want[i].len) << i;
    bad_bytes += want[i].len;
  }
  EXPECT_EQ(good, static_cast<ssize_t>(len - bad_bytes));
  for (size_t i = 0; i < len; ++i) {
    bool in_bad = false;
    for (const auto& r : want) in_bad = in_bad || (i >= r.offset && i < r.offset + r.len);
    ASSERT_EQ(out[i], in_bad ? 0 : expected(off + i)) << "byte " << i;
  }
  // Too small a list: the count still comes back; the first ranges are listed.
  tieralloc_range one[1];
  size_t n1 = 1;
  EXPECT_EQ(tieralloc_recovery_read(out.data(), p + off, len, one, &n1), good);
  EXPECT_EQ(n1, 3u);
  EXPECT_EQ(one[0].offset, want[0].offset);
  // Clean memory reads like memcpy.
  size_t n0 = 8;
  EXPECT_EQ(tieralloc_recovery_read(out.data(), p, kPage, bad, &n0), static_cast<ssize_t>(kPage));
  EXPECT_EQ(n0, 0u);
  EXPECT_EQ(std::memcmp(out.data(), p, kPage), 0);
}

TEST(Poison, PartialRepairIsRefusedAndChangesNothing) {
  char* p = pattern_pages(2);
  ASSERT_EQ(tieralloc_poison_report(p + kPage + 10 * kLine, kLine), 0);
  const size_t quarantined = tieralloc_quarantined_bytes();
  std::vector<char> fix(2 * kLine, 'R');
  // Covers the bad line's second half only.
  EXPECT_EQ(tieralloc_repair_write(p + kPage + 10 * kLine + 32, fix.data(), kLine), -1);
  EXPECT_EQ(errno, EINVAL);
  // Spans a good page and half the bad line: nothing written on the good page either.
  EXPECT_EQ(tieralloc_repair_write(p + kPage - 64, fix.data(), 64 + 10 * kLine + 1), -1);
  EXPECT_EQ(errno, EINVAL);
  for (size_t i = kPage - 64; i < kPage; ++i) ASSERT_EQ(p[i], expected(i));
  EXPECT_EQ(tieralloc_quarantined_bytes(), quarantined);
  std::vector<char> out(kPage);
  tieralloc_range bad[2];
  size_t nbad = 2;
  EXPECT_EQ(tieralloc_recovery_read(out.data(), p + kPage, kPage, bad, &nbad), static_cast<ssize_t>(kPage - kLine));
  ASSERT_EQ(nbad, 1u);
  EXPECT_EQ(bad[0].offset, 10 * kLine);
  for (size_t i = 0; i < kPage; ++i) {
    if (i / kLine == 10) continue;
    ASSERT_EQ(out[i], expected(kPage + i));
  }
  int stack_byte = 0;
  EXPECT_EQ(tieralloc_repair_write(&stack_byte, fix.data(), 1), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST(Poison, RepairWriteUnquarantinesAndKeepsTheGoodLines) {
  char* p = pattern_pages(2);
  const size_t before = tieralloc_quarantined_bytes();
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, p + kPage + 5 * kLine, 6), 0);
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, p + kPage + 50 * kLine, 6), 0);
  ASSERT_EQ(tieralloc_quarantined_bytes(), before + kPage);
  std::vector<char> fix(kLine + 20, 'R');
  // First bad line, plus 10 bytes of each neighbour: accepted, page still has a bad line.
  EXPECT_EQ(tieralloc_repair_write(p + kPage + 5 * kLine - 10, fix.data(), fix.size()), 1);
  EXPECT_EQ(tieralloc_poison_check(p + kPage, kPage), 1);
  std::vector<char> fix2(kLine, 'S');
  EXPECT_EQ(tieralloc_repair_write(p + kPage + 50 * kLine, fix2.data(), kLine), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), before);
  EXPECT_EQ(tieralloc_poison_check(p + kPage, kPage), 0);
  // Plain loads work again, and every byte is what it should be.
  for (size_t i = 0; i < kPage; ++i) {
    size_t at = kPage + i;
    char want = expected(at);
    if (at >= kPage + 5 * kLine - 10 && at < kPage + 6 * kLine + 10) want = 'R';
    if (at >= kPage + 50 * kLine && at < kPage + 51 * kLine) want = 'S';
    ASSERT_EQ(p[at], want) << "byte " << at;
  }
  p[kPage + 7] = 1;  // and writes
}

TEST(Poison, ConsumedPoisonGoesToTheApplicationsSigbusHandler) {
  char* p = pattern_pages(2);
  struct sigaction sa = {};
  sa.sa_sigaction = app_bus_handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGBUS, &sa, nullptr), 0);
  EXPECT_NE(kernel_handler(SIGBUS), reinterpret_cast<uintptr_t>(&app_bus_handler));
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AR, p + kPage + 64, 6), 0);
  EXPECT_EQ(g_app_bus.load(), 1);  // the data is gone: the application decides
  EXPECT_EQ(g_app_bus_addr.load(), p + kPage + 64);
  EXPECT_EQ(tieralloc_poison_check(p + kPage + 64, 1), 1);  // and it is quarantined
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, p + 64, 6), 0);
  EXPECT_EQ(g_app_bus.load(), 1);  // found by a scrubber: tieralloc's alone
  static char not_ours[128];
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AR, not_ours, 6), 0);
  EXPECT_EQ(g_app_bus.load(), 2);
  EXPECT_EQ(g_app_bus_addr.load(), not_ours);
  ASSERT_EQ(send_fault(SIGBUS, BUS_ADRERR, not_ours, 0), 0);
  EXPECT_EQ(g_app_bus.load(), 3);
  struct sigaction old = {};
  ASSERT_EQ(sigaction(SIGBUS, nullptr, &old), 0);
  EXPECT_EQ(old.sa_sigaction, &app_bus_handler);
}

int consume_poison_without_handler() {
  char* p = pattern_pages(1);
  send_fault(SIGBUS, BUS_MCEERR_AR, p, 6);
  return 0;
}

int ignore_foreign_action_optional() {
  static char not_ours[64];
  send_fault(SIGBUS, BUS_MCEERR_AO, not_ours, 6);
  return 7;
}

TEST(Poison, DefaultActionsStay) {
  int status = in_child(consume_poison_without_handler);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
  // A survivable report about memory that is not tieralloc's never becomes a crash.
  status = in_child(ignore_foreign_action_optional);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 7);
}

uint64_t frame_of(const void* p) {
  uint64_t entry = 0;
  int fd = open("/proc/self/pagemap", O_RDONLY);
  pread(fd, &entry, sizeof entry, static_cast<off_t>(reinterpret_cast<uintptr_t>(p) / kPage * sizeof entry));
  close(fd);
  return entry & ((uint64_t{1} << 55) - 1);
}

TEST(Poison, PhysicalReportFindsTheVirtualPage) {
  char* p = pattern_pages(2);
  uint64_t pfn = frame_of(p + kPage);
  if (pfn == 0) {
    // Frame numbers are hidden without CAP_SYS_ADMIN: the call must say so, not guess.
    EXPECT_EQ(tieralloc_poison_report_phys(0x100000, 64), -1);
    EXPECT_EQ(errno, EPERM);
    return;
  }
  ASSERT_EQ(tieralloc_poison_report_phys(pfn * kPage + 7 * kLine + 1, 1), 0);
  EXPECT_EQ(tieralloc_poison_check(p + kPage + 7 * kLine, kLine), 1);
  std::vector<char> out(kPage);
  tieralloc_range bad[2];
  size_t nbad = 2;
  EXPECT_EQ(tieralloc_recovery_read(out.data(), p + kPage, kPage, bad, &nbad), static_cast<ssize_t>(kPage - kLine));
  ASSERT_EQ(nbad, 1u);
  EXPECT_EQ(bad[0].offset, 7 * kLine);
  EXPECT_EQ(tieralloc_poison_report_phys(0, 0), -1);
  EXPECT_EQ(errno, EINVAL);
}

std::atomic<int> g_events{0};
std::atomic<void*> g_event_addr{nullptr};
std::atomic<size_t> g_event_len{0};
std::atomic<int> g_event_source{0};
std::atomic<pid_t> g_event_tid{0};
void on_poison(const tieralloc_poison_event* ev, void* arg) {
  g_event_addr.store(ev->addr);
  g_event_len.store(ev->len);
  g_event_source.store(ev->source);
  g_event_tid.store(static_cast<pid_t>(syscall(SYS_gettid)));
  static_cast<std::atomic<int>*>(arg)->fetch_add(1);
}

TEST(Poison, EventsArriveOnAThreadOfTheirOwn) {
  char* p = pattern_pages(2);
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, p + 300, 6), 0);  // before the handler: queued
  ASSERT_EQ(tieralloc_set_poison_handler(on_poison, &g_events), 0);
  auto wait_for = [](int n) {
    for (int i = 0; i < 500 && g_events.load() < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return g_events.load() >= n;
  };
  ASSERT_TRUE(wait_for(1));
  EXPECT_EQ(g_event_addr.load(), p + 256);
  EXPECT_EQ(g_event_len.load(), kLine);
  EXPECT_EQ(g_event_source.load(), TIERALLOC_POISON_FOUND);
  EXPECT_NE(g_event_tid.load(), static_cast<pid_t>(syscall(SYS_gettid)));
  ASSERT_EQ(tieralloc_poison_report(p + kPage, 200), 0);
  ASSERT_TRUE(wait_for(2));
  EXPECT_EQ(g_event_addr.load(), p + kPage);
  EXPECT_EQ(g_event_len.load(), 4 * kLine);
  EXPECT_EQ(g_event_source.load(), TIERALLOC_POISON_REPORTED);
}

struct Block {
  char* p;
  size_t size;
};

size_t mixed_size(std::mt19937_64& rng) {
  static const size_t sizes[] = {8, 16, 24, 48, 64, 96, 128, 200, 256, 512, 1000, 2048, 3000, 4096, 7000, 16384, 40000, 100000, 300000};
  return sizes[rng() % (sizeof sizes / sizeof sizes[0])];
}

TEST(Poison, NoAllocationLandsOnAQuarantinedPageAndRepairedPagesServeAgain) {
  // Tier 0's explicit arena: its slabs and extents hold only this test's objects, so the pages
  // quarantined (whole, every line lost) hold nothing live once the test frees what was there.
  const int arena = TIERALLOC_TIER(0);
  std::mt19937_64 rng(42);
  std::vector<Block> live;
  for (int i = 0; i < 20000; ++i) {
    size_t n = mixed_size(rng);
    live.push_back({static_cast<char*>(tieralloc_mallocx(n, arena)), n});
  }
  // Pages inside busy slabs (small objects) and inside large extents, freed around so jemalloc
  // wants to reuse them.
  std::vector<char*> pages;
  for (size_t i = 0; i < live.size() && pages.size() < 16; i += 997) {
    char* page = page_of(live[i].p + live[i].size / 2);
    if (std::find(pages.begin(), pages.end(), page) == pages.end()) pages.push_back(page);
  }
  for (auto& b : live) {
    bool on_page = false;
    for (char* page : pages) on_page = on_page || (b.p < page + kPage && b.p + b.size > page);
    if (on_page || rng() % 2 == 0) {
      tieralloc_free(b.p);
      b.p = nullptr;
    }
  }
  for (char* page : pages) ASSERT_EQ(tieralloc_poison_report(page, kPage), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), pages.size() * kPage);

  std::vector<Block> fresh;
  for (int i = 0; i < 300000; ++i) {
    size_t n = mixed_size(rng);
    char* q = static_cast<char*>(tieralloc_mallocx(n, arena | (i % 7 == 0 ? TIERALLOC_ZERO : 0)));
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(tieralloc_poison_check(q, tieralloc_usable_size(q)), 0) << "allocation " << i << " size " << n;
    q[0] = q[n - 1] = 1;  // would fault on a quarantined page
    fresh.push_back({q, n});
    if (fresh.size() > 4000) {
      size_t k = rng() % fresh.size();
      tieralloc_free(fresh[k].p);
      fresh[k] = fresh.back();
      fresh.pop_back();
    }
  }
  // Repair: whole pages rewritten, back in service, and allocations land there again.
  std::vector<char> zeros(kPage, 0);
  for (char* page : pages) ASSERT_EQ(tieralloc_repair_write(page, zeros.data(), kPage), 0);
  EXPECT_EQ(tieralloc_quarantined_bytes(), 0u);
  bool reused = false;
  for (int i = 0; i < 300000 && !reused; ++i) {
    size_t n = mixed_size(rng);
    char* q = static_cast<char*>(tieralloc_mallocx(n, arena));
    for (char* page : pages) reused = reused || (q < page + kPage && q + n > page);
    fresh.push_back({q, n});
  }
  EXPECT_TRUE(reused) << "no repaired page served an allocation again";
  for (auto& b : fresh) tieralloc_free(b.p);
  for (auto& b : live)
    if (b.p) tieralloc_free(b.p);
}

// malloc, free and operator new are jemalloc's own fast paths, which know nothing of quarantine:
// a quarantine must put them aside in every thread (alloc/detours.h). Blocks freed from a page
// sit in the freeing thread's cache, the first thing its next malloc of that size returns -- here
// and in a second thread that cached blocks of the same page. The size class is one the report's
// own path does not allocate from: a fallback call of that class on this thread would take the
// quarantined blocks out of its cache (held aside) and hide a fast path left on.
TEST(Poison, PlainMallocAndNewNeverReturnCachedBlocksOfAQuarantinedPage) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer interposes malloc in this build";
#endif
  constexpr size_t kSize = 224;
  std::vector<void*> blocks;
  for (int i = 0; i < 1024; ++i) blocks.push_back(malloc(kSize));
  // A page full of this test's blocks, from the middle of the run.
  char* page = page_of(blocks[512]);
  std::vector<void*> on_page, elsewhere;
  for (void* b : blocks) (page_of(b) == page && page_of(static_cast<char*>(b) + kSize - 1) == page ? on_page : elsewhere).push_back(b);
  ASSERT_GE(on_page.size(), 16u);
  // Half the page's blocks are freed by another thread (its cache), half by this one.
  const size_t half = on_page.size() / 2;
  std::atomic<int> stage{0};
  std::atomic<int> other_hits{0};
  std::thread other([&] {
    free(malloc(kSize));  // a thread cache of its own (a thread that only frees has none)
    for (size_t i = 0; i < half; ++i) free(on_page[i]);
    stage.store(1);
    while (stage.load() != 2) std::this_thread::yield();
    std::vector<void*> got;
    for (size_t i = 0; i < 2 * half; ++i) {
      void* q = malloc(kSize);
      if (page_of(q) == page) other_hits.fetch_add(1);
      got.push_back(q);
    }
    for (void* q : got) free(q);
  });
  while (stage.load() != 1) std::this_thread::yield();
  for (size_t i = half; i < on_page.size(); ++i) free(on_page[i]);
  ASSERT_EQ(tieralloc_poison_report(page, kPage), 0);
  stage.store(2);

  std::vector<void*> got;
  int hits = 0;
  for (size_t i = 0; i < on_page.size(); ++i) {
    void* q = malloc(kSize);
    hits += page_of(q) == page;
    got.push_back(q);
    auto* n = new std::array<char, kSize>;
    hits += page_of(n) == page;
    got.push_back(n);
  }
  other.join();
  EXPECT_EQ(hits, 0) << "malloc or new handed out a block of a quarantined page";
  EXPECT_EQ(other_hits.load(), 0) << "another thread's malloc handed out a block of a quarantined page";

  std::vector<char> zeros(kPage, 0);
  ASSERT_EQ(tieralloc_repair_write(page, zeros.data(), kPage), 0);
  for (size_t i = 0; i < got.size(); i += 2) {
    free(got[i]);
    delete static_cast<std::array<char, kSize>*>(got[i + 1]);
  }
  for (void* b : elsewhere) free(b);
}

// Large blocks freed with plain free stay in the freeing thread's cache for its next malloc of the
// size (alloc/large_cache.h), here and in a second thread. Once a page of theirs is quarantined,
// that malloc must not hand the page out still bad: it gets other memory, or jemalloc's free block
// that absorbed the page (a fresh frame, Poison.FreeBlockAbsorbsItsBadPageAndIsHandedOutAgain).
TEST(Poison, PlainMallocNeverReturnsAKeptLargeBlockWithAQuarantinedPage) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer interposes malloc in this build";
#endif
  constexpr size_t kSize = 96 << 10;
  std::atomic<int> stage{0};
  std::atomic<char*> other_page{nullptr};
  std::atomic<int> other_bad{-2};
  std::thread other([&] {
    void* p = malloc(kSize);
    std::memset(p, 1, kSize);
    other_page.store(page_of(static_cast<char*>(p) + kSize / 2));
    free(p);
    stage.store(1);
    while (stage.load() != 2) std::this_thread::yield();
    void* q = malloc(kSize);
    other_bad.store(tieralloc_poison_check(q, kSize));
    std::memset(q, 2, kSize);
    free(q);
  });
  void* mine = malloc(kSize);
  std::memset(mine, 1, kSize);
  char* my_page = page_of(static_cast<char*>(mine) + kSize / 2);
  free(mine);
  while (stage.load() != 1) std::this_thread::yield();
  ASSERT_EQ(tieralloc_poison_report(my_page, kPage), 0);
  ASSERT_EQ(tieralloc_poison_report(other_page.load(), kPage), 0);
  ASSERT_GT(tieralloc_poison_check(my_page, kPage), 0);
  stage.store(2);
  void* q = malloc(kSize);
  EXPECT_EQ(tieralloc_poison_check(q, kSize), 0) << "malloc handed out a kept block holding a quarantined page";
  std::memset(q, 2, kSize);
  other.join();
  EXPECT_EQ(other_bad.load(), 0) << "another thread's malloc handed out its kept block holding a quarantined page";
  free(q);
  std::vector<char> zeros(kPage, 0);
  ASSERT_EQ(tieralloc_repair_write(my_page, zeros.data(), kPage), 0);
  ASSERT_EQ(tieralloc_repair_write(other_page.load(), zeros.data(), kPage), 0);
}

// A page found bad while it held no live object: the next allocation jemalloc makes from the
// freed block takes it back at once -- fresh frame, zeroed -- instead of holding the block aside.
TEST(Poison, FreeBlockAbsorbsItsBadPageAndIsHandedOutAgain) {
  const int arena = TIERALLOC_TIER(0);
  const size_t size = 16 * kPage;
  char* p = static_cast<char*>(tieralloc_mallocx(size, arena));
  ASSERT_NE(p, nullptr);
  std::memset(p, 0x5a, size);
  char* page = page_of(p + size / 2);
  tieralloc_free(p);
  const auto absorbed_before = stats_figure(stats_json(), "free_absorbed_pages");
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, page + 100, 12), 0);
  ASSERT_EQ(tieralloc_quarantined_bytes(), kPage);

  char* q = static_cast<char*>(tieralloc_mallocx(size, arena));
  ASSERT_EQ(q, p) << "the thread cache hands the freed block back";
  EXPECT_EQ(tieralloc_quarantined_bytes(), 0u);
  EXPECT_EQ(tieralloc_poison_check(q, size), 0);
  EXPECT_EQ(stats_figure(stats_json(), "free_absorbed_pages"), absorbed_before + 1);
  EXPECT_EQ(stats_figure(stats_json(), "held_blocks"), 0u);
  for (size_t i = 0; i < kPage; ++i) ASSERT_EQ(page[i], 0) << "a fresh frame, zeroed: byte " << i;
  std::memset(q, 1, size);  // and every byte is writable
  tieralloc_free(q);
}

// A page with live objects and free ones: repairing the live objects is not enough while the free
// slots hold bad lines, and the allocations that reuse those slots supply the rest.
TEST(Poison, RepairOfLiveObjectsAndReuseOfFreeSlotsTogetherRebuildThePage) {
  const int arena = TIERALLOC_TIER(0);
  constexpr size_t kObj = 1024;  // a size class whose slots tile pages exactly
  std::vector<char*> objs;
  for (int i = 0; i < 32; ++i) {
    char* o = static_cast<char*>(tieralloc_mallocx(kObj, arena));
    std::memset(o, 'a' + i % 26, kObj);
    objs.push_back(o);
  }
  // A page all of whose four slots are this test's objects.
  char* page = nullptr;
  std::vector<size_t> on_page;
  for (size_t i = 0; i < objs.size() && !page; ++i) {
    char* candidate = page_of(objs[i]);
    on_page.clear();
    for (size_t j = 0; j < objs.size(); ++j)
      if (page_of(objs[j]) == candidate) on_page.push_back(j);
    if (on_page.size() == kPage / kObj) page = candidate;
  }
  ASSERT_NE(page, nullptr);
  tieralloc_free(objs[on_page[0]]);
  tieralloc_free(objs[on_page[1]]);
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AO, page, 12), 0);
  for (size_t k : {on_page[2], on_page[3]}) {
    std::vector<char> fix(kObj, static_cast<char>('a' + k % 26));
    EXPECT_EQ(tieralloc_repair_write(objs[k], fix.data(), kObj), 1) << "free slots still hold bad lines";
  }
  EXPECT_EQ(tieralloc_quarantined_bytes(), kPage);

  std::vector<char*> again;
  bool landed = false;
  for (int i = 0; i < 64 && tieralloc_quarantined_bytes(); ++i) {
    char* o = static_cast<char*>(tieralloc_mallocx(kObj, arena));
    ASSERT_EQ(tieralloc_poison_check(o, kObj), 0);
    landed = landed || page_of(o) == page;
    again.push_back(o);
  }
  EXPECT_EQ(tieralloc_quarantined_bytes(), 0u);
  EXPECT_TRUE(landed) << "the slot that completed the page was handed out";
  for (size_t k : {on_page[2], on_page[3]})
    for (size_t b = 0; b < kObj; ++b) ASSERT_EQ(objs[k][b], static_cast<char>('a' + k % 26)) << "object " << k;
  for (char* o : again) tieralloc_free(o);
  EXPECT_EQ(stats_figure(stats_json(), "held_blocks"), 0u) << "the slot held aside meanwhile was released";
}

// Each event's list of allocations, as the handler saw it.
struct Listing {
  int known;
  size_t unlisted;
  std::vector<tieralloc_allocation> blocks;
};
std::mutex g_listings_mu;
std::vector<Listing> g_listings;
void on_poison_keep_listing(const tieralloc_poison_event* ev, void*) {
  std::lock_guard<std::mutex> g(g_listings_mu);
  g_listings.push_back({ev->allocations_known, ev->allocations_unlisted,
                        std::vector<tieralloc_allocation>(ev->allocations, ev->allocations + ev->nallocations)});
}
// The n-th event's listing (from 1), waiting up to 5 s for it.
Listing listing(size_t n) {
  for (int i = 0; i < 500; ++i) {
    {
      std::lock_guard<std::mutex> g(g_listings_mu);
      if (g_listings.size() >= n) return g_listings[n - 1];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "no event " << n;
  return {};
}

bool overlaps(const void* p, size_t n, const void* lo, size_t len) {
  auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(lo);
  return a < b + len && b < a + n;
}

// What a database needs to fetch again from a replica: the live objects a poisoned range touches.
TEST(Poison, EventsListTheLiveAllocationsTheRangeTouches) {
  ASSERT_EQ(tieralloc_set_poison_handler(on_poison_keep_listing, nullptr), 0);
  std::mt19937_64 rng(7);
  std::vector<Block> live;
  for (int i = 0; i < 4000; ++i) {
    size_t n = mixed_size(rng);
    char* p = static_cast<char*>(tieralloc_mallocx(n, 0));
    ASSERT_NE(p, nullptr);
    live.push_back({p, tieralloc_usable_size(p)});
  }

  // A whole page inside busy slabs of small objects: every object of this test on it is listed,
  // at its address with its usable size, and everything listed touches the page.
  char* page = nullptr;
  std::vector<Block> ours;
  for (size_t i = 1000; i < live.size() && ours.size() < 3; i += 7) {
    if (live[i].size > 1024) continue;
    page = page_of(live[i].p);
    ours.clear();
    for (auto& b : live)
      if (overlaps(b.p, b.size, page, kPage)) ours.push_back(b);
  }
  ASSERT_GE(ours.size(), 3u) << "a page holding several of the test's small objects";
  ASSERT_EQ(tieralloc_poison_report(page, kPage), 0);
  Listing l = listing(1);
  EXPECT_EQ(l.known, 1);
  EXPECT_EQ(l.unlisted, 0u);
  for (size_t i = 0; i < l.blocks.size(); ++i) {
    EXPECT_TRUE(overlaps(l.blocks[i].addr, l.blocks[i].size, page, kPage)) << "block " << l.blocks[i].addr;
    if (i) {
      EXPECT_LE(static_cast<char*>(l.blocks[i - 1].addr) + l.blocks[i - 1].size, l.blocks[i].addr) << "in order, apart";
    }
  }
  for (auto& b : ours) {
    auto it = std::find_if(l.blocks.begin(), l.blocks.end(), [&](const tieralloc_allocation& a) { return a.addr == b.p; });
    ASSERT_NE(it, l.blocks.end()) << "live object " << static_cast<void*>(b.p) << " is listed";
    EXPECT_EQ(it->size, b.size);
  }

  // One line deep inside a large block: that block alone.
  const size_t big_size = size_t{3} << 20;
  char* big = static_cast<char*>(tieralloc_mallocx(big_size, 0));
  ASSERT_NE(big, nullptr);
  ASSERT_EQ(tieralloc_poison_report(big + (size_t{2} << 20) + 640, 1), 0);
  l = listing(2);
  ASSERT_EQ(l.blocks.size(), 1u);
  EXPECT_EQ(l.blocks[0].addr, big);
  EXPECT_EQ(l.blocks[0].size, tieralloc_usable_size(big));

  // A freed block too large for the thread caches has gone back to the allocator: nothing listed.
  const size_t gone_size = size_t{4} << 20;
  char* gone = static_cast<char*>(tieralloc_mallocx(gone_size, 0));
  ASSERT_NE(gone, nullptr);
  std::memset(gone, 1, gone_size);
  tieralloc_free(gone);
  ASSERT_EQ(tieralloc_poison_report(gone + (size_t{2} << 20), 1), 0);
  l = listing(3);
  EXPECT_EQ(l.known, 1);
  EXPECT_TRUE(l.blocks.empty()) << l.blocks.size() << " blocks, the first at " << l.blocks[0].addr;
}

TEST(Poison, StormOfReportsWhileOthersAllocate) {
  constexpr size_t kPages = 1024;
  char* area = pattern_pages(kPages);
  std::atomic<bool> stop{false};
  std::atomic<long> reports{0}, allocations{0};
  std::atomic<bool> overlap{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      while (!stop.load()) {
        char* at = area + rng() % (kPages * kPage);
        int rc = (rng() & 1) ? send_fault(SIGBUS, BUS_MCEERR_AO, at, 6) : tieralloc_poison_report(at, 1);
        if (rc == 0) reports.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::microseconds(200));  // thousands per second in all
      }
    });
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::vector<std::pair<char*, size_t>> mine;
      while (!stop.load()) {
        size_t n = mixed_size(rng);
        char* q = static_cast<char*>(tieralloc_mallocx(n, 0));
        if (tieralloc_poison_check(q, n) != 0) overlap.store(true);
        std::memset(q, static_cast<int>(n & 0xff), n);
        mine.emplace_back(q, n);
        allocations.fetch_add(1);
        if (mine.size() > 500) {
          for (auto& [b, len] : mine) {
            for (size_t i = 0; i < len; i += 97)
              if (b[i] != static_cast<char>(len & 0xff)) overlap.store(true);
            tieralloc_free(b);
          }
          mine.clear();
        }
      }
        for (auto& [b, len] : mine) tieralloc_free(b);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_GT(reports.load(), 1500);
  EXPECT_GT(allocations.load(), 1000);
  EXPECT_FALSE(overlap.load());
  // No data lost: every good byte reads back, and repairing every bad range restores the area.
  std::vector<char> out(kPages * kPage);
  size_t nbad = kPages * (kPage / kLine);
  std::vector<tieralloc_range> bad(nbad);
  ssize_t good = tieralloc_recovery_read(out.data(), area, out.size(), bad.data(), &nbad);
  ASSERT_GT(good, 0);
  size_t bad_bytes = 0;
  for (size_t i = 0; i < nbad; ++i) bad_bytes += bad[i].len;
  EXPECT_EQ(static_cast<size_t>(good) + bad_bytes, out.size());
  for (size_t i = 0; i < nbad; ++i) {
    std::vector<char> fix(bad[i].len);
    for (size_t j = 0; j < fix.size(); ++j) fix[j] = expected(bad[i].offset + j);
    int rc = tieralloc_repair_write(area + bad[i].offset, fix.data(), fix.size());
    ASSERT_TRUE(rc == 0 || rc == 1) << rc;  // 1: the page has further bad ranges, repaired next
  }
  EXPECT_EQ(tieralloc_quarantined_bytes(), 0u);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(area[i], expected(i)) << "byte " << i;
}

}  // namespace
