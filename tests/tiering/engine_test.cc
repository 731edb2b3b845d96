// The tiering engine in a real process on emulated tiers (fast 8 MiB, slow 512 MiB), with the
// hinting-fault sampler on: real faults, real mprotect, the page map as the migrator's target.
// Run by ctest with TIERALLOC_TIERS=emulate:fast=8M,slow=512M TIERALLOC_SAMPLER=5%.
#include <gtest/gtest.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/stats_json.h"
#include "tieralloc/tieralloc.h"

namespace {

using namespace std::chrono_literals;
constexpr size_t kMiB = size_t{1} << 20, kPage = 4096;

using tieralloc::testing::stats_figure;
using tieralloc::testing::stats_json;

double fraction_on(char* base, size_t len, int tier) {
  size_t n = 0, on = 0;
  for (size_t off = 0; off < len; off += kPage, ++n) on += tieralloc_tier_of(base + off) == tier;
  return static_cast<double>(on) / static_cast<double>(n);
}

TEST(Engine, RunsOnEmulatedTiersWithTheSampler) {
  ASSERT_EQ(tieralloc_tier_count(), 2);
  std::string s = stats_json();
  EXPECT_NE(s.find("\"engine\": \"running\""), std::string::npos) << s;
  EXPECT_NE(s.find("\"source\": \"sampler\""), std::string::npos) << s;
  EXPECT_NE(s.find("page map only (emulated tiers)"), std::string::npos) << s;
}

// A thread keeps touching 2 MiB of a 32 MiB slow-tier buffer: the sampler's faults find it, the
// policy promotes it into the fast tier's 8 MiB, and the untouched rest stays slow.
TEST(Engine, PromotesWhatIsTouchedAndLeavesTheRest) {
  const size_t len = 32 * kMiB, hot = 2 * kMiB;
  char* buf = static_cast<char*>(tieralloc_mallocx(len, TIERALLOC_TIER(1) | TIERALLOC_ALIGN(2 * kMiB) | TIERALLOC_ZERO));
  ASSERT_NE(buf, nullptr);
  ASSERT_LT(fraction_on(buf, hot, 0), 0.01);
  uint64_t faults_before = stats_figure(stats_json(), "faults");
  std::atomic<bool> stop{false};
  std::thread toucher([&] {
    uint64_t x = 88172645463325252ull;
    while (!stop.load(std::memory_order_relaxed)) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[(x % (hot / kPage)) * kPage + (x >> 50) % kPage] += 1;
    }
  });
  auto deadline = std::chrono::steady_clock::now() + 20s;
  double promoted = 0;
  while (std::chrono::steady_clock::now() < deadline && (promoted = fraction_on(buf, hot, 0)) < 0.9)
    std::this_thread::sleep_for(100ms);
  stop = true;
  toucher.join();
  EXPECT_GE(promoted, 0.9) << stats_json();
  EXPECT_LT(fraction_on(buf + hot, len - hot, 0), 0.1) << "untouched memory was promoted too";
  EXPECT_GT(stats_figure(stats_json(), "faults"), faults_before);
  EXPECT_GT(stats_figure(stats_json(), "promoted_bytes"), 0u);
  tieralloc_free(buf);
}

// Writers keep updating checksummed blocks while the engine samples them and the test moves them
// back and forth between tiers: no update is lost, no checksum ever fails.
TEST(Engine, MigrationUnderConcurrentWritersLosesNothing) {
  constexpr int kThreads = 3;
  constexpr size_t kBlock = 1 * kMiB, kWords = kBlock / 8;
  struct Block {
    uint64_t* words;
    std::atomic<uint64_t> rounds{0};
  };
  Block blocks[kThreads];
  for (auto& b : blocks) {
    b.words = static_cast<uint64_t*>(tieralloc_mallocx(kBlock, TIERALLOC_TIER(1) | TIERALLOC_ZERO));
    ASSERT_NE(b.words, nullptr);
  }
  std::atomic<bool> stop{false}, bad{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t)
    writers.emplace_back([&, t] {
      Block& b = blocks[t];
      // Each round adds 1 to every word; the sum proves every write of every round landed.
      for (uint64_t r = 1; !stop.load(std::memory_order_relaxed); ++r) {
        for (size_t i = 0; i < kWords; ++i) b.words[i] += 1;
        uint64_t sum = 0;
        for (size_t i = 0; i < kWords; ++i) sum += b.words[i];
        if (sum != r * kWords) bad = true;
        b.rounds.store(r, std::memory_order_relaxed);
      }
    });
  auto end = std::chrono::steady_clock::now() + 3s;
  for (int flip = 0; std::chrono::steady_clock::now() < end; ++flip)
    for (auto& b : blocks) tieralloc_move(b.words, kBlock, flip % 2);
  stop = true;
  for (auto& w : writers) w.join();
  EXPECT_FALSE(bad.load());
  for (auto& b : blocks) {
    uint64_t r = b.rounds.load();
    EXPECT_GT(r, 0u);
    for (size_t i = 0; i < kWords; ++i) ASSERT_EQ(b.words[i], r) << i;
    tieralloc_free(b.words);
  }
}

// A program with its own SIGSEGV handler for a guard page keeps getting its faults while the
// sampler takes its own.
sigjmp_buf g_guard_jump;
std::atomic<int> g_guard_faults{0};
char* g_guard = nullptr;
void guard_handler(int, siginfo_t* info, void*) {
  char* at = static_cast<char*>(info->si_addr);
  if (at >= g_guard && at < g_guard + kPage) g_guard_faults.fetch_add(1);
  siglongjmp(g_guard_jump, 1);
}

TEST(Engine, ApplicationGuardPageHandlerStillGetsItsFaults) {
  struct sigaction sa = {}, old = {};
  sa.sa_sigaction = guard_handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGSEGV, &sa, &old), 0);
  char* guard = static_cast<char*>(mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(guard, MAP_FAILED);
  g_guard = guard;
  // Keep the sampler busy on heap memory meanwhile.
  char* heap = static_cast<char*>(tieralloc_mallocx(8 * kMiB, TIERALLOC_TIER(1) | TIERALLOC_ZERO));
  uint64_t faults_before = stats_figure(stats_json(), "faults");
  for (int i = 0; i < 50; ++i) {
    if (sigsetjmp(g_guard_jump, 1) == 0) {
      *reinterpret_cast<volatile char*>(guard + (i % 64)) = 1;
      ADD_FAILURE() << "the guard page did not fault";
    }
    for (size_t off = 0; off < 8 * kMiB; off += kPage) heap[off] += 1;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(g_guard_faults.load(), 50);
  EXPECT_GT(stats_figure(stats_json(), "faults"), faults_before) << "the sampler took no faults meanwhile: " << stats_json();
  for (size_t off = 0; off < 8 * kMiB; off += kPage) ASSERT_EQ(heap[off], 50);
  sigaction(SIGSEGV, &old, nullptr);
  munmap(guard, kPage);
  tieralloc_free(heap);
}

// Hints pin: a range hinted cold goes to the slowest tier and stays there however hot it runs.
TEST(Engine, HintPinsAgainstHeat) {
  const size_t len = 2 * kMiB;
  char* buf = static_cast<char*>(tieralloc_mallocx(len, TIERALLOC_TIER(0) | TIERALLOC_ZERO));
  ASSERT_NE(buf, nullptr);
  ASSERT_EQ(tieralloc_hint(buf, len, TIERALLOC_COLD), 0);
  EXPECT_GT(fraction_on(buf, len, 1), 0.99);
  auto end = std::chrono::steady_clock::now() + 1500ms;
  while (std::chrono::steady_clock::now() < end)
    for (size_t off = 0; off < len; off += kPage) buf[off] += 1;
  EXPECT_GT(fraction_on(buf, len, 1), 0.99) << "the engine moved a pinned range";
  EXPECT_EQ(tieralloc_hint(buf, len, 0), 0);
  EXPECT_EQ(tieralloc_hint(nullptr, len, TIERALLOC_HOT), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(tieralloc_hint(buf, len, TIERALLOC_HOT | TIERALLOC_COLD), -1);
  EXPECT_EQ(errno, EINVAL);
  tieralloc_free(buf);
}

// fork() while the engine samples and migrates: never a deadlock; the child runs without the
// engine, allocates freely, and no page is left without access.
TEST(Engine, ForkWhileRunning) {
  char* buf = static_cast<char*>(tieralloc_mallocx(16 * kMiB, TIERALLOC_TIER(1) | TIERALLOC_ZERO));
  std::atomic<bool> stop{false};
  std::thread toucher([&] {
    while (!stop.load())
      for (size_t off = 0; off < 16 * kMiB; off += kPage) buf[off] += 1;
  });
  for (int i = 0; i < 20; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Every page of the buffer readable (none left armed), allocation works, engine stopped.
      uint64_t sum = 0;
      for (size_t off = 0; off < 16 * kMiB; off += kPage) sum += static_cast<unsigned char>(buf[off]);
      void* p = malloc(1 << 20);
      memset(p, 1, 1 << 20);
      free(p);
      std::string s = stats_json();
      _exit(s.find("stopped in forked child") != std::string::npos && sum < UINT64_MAX ? 0 : 3);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child died of signal " << WTERMSIG(status);
    ASSERT_EQ(WEXITSTATUS(status), 0);
    std::this_thread::sleep_for(15ms);
  }
  stop = true;
  toucher.join();
  EXPECT_NE(stats_json().find("\"engine\": \"running\""), std::string::npos);
  tieralloc_free(buf);
}

}  // namespace
