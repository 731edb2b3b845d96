// The frontier (spatially adaptive sampling) with a scripted heat source: which steps a hot run
// queues, how a step is cut to a window's budget, and how fast a moved hot region is found whole
// compared with random sampling alone.
#include "tiering/frontier.h"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <vector>

namespace tieralloc::tiering {
namespace {

constexpr uintptr_t kRun = 65536;
constexpr uintptr_t kBase = 0x40000000;
using N = Frontier::Neighbour;

uintptr_t run(size_t i) { return kBase + i * kRun; }

std::vector<Frontier::Span> take_all(Frontier& f, size_t max_runs = 1000) {
  std::vector<Frontier::Span> out(64);
  out.resize(f.take(out.data(), out.size(), max_runs));
  return out;
}

TEST(Frontier, HotRunQueuesAStepOnEachSidePointingAway) {
  Frontier f(kRun, 8, 16);
  f.hot_run(run(100), [](uintptr_t) { return N::kExplore; });
  auto spans = take_all(f);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].addr, run(101));  // upward: the 8 runs just above
  EXPECT_EQ(spans[0].runs, 8u);
  EXPECT_EQ(spans[1].addr, run(92));   // downward: the 8 runs just below
  EXPECT_EQ(spans[1].runs, 8u);
  EXPECT_EQ(f.pending(), 0u);
}

TEST(Frontier, ANeighbourSampledLatelySpeaksForItself) {
  // A run inside a sampled block has sampled neighbours on both sides: no step.
  Frontier f(kRun, 8, 16);
  f.hot_run(run(100), [](uintptr_t) { return N::kStop; });
  EXPECT_EQ(f.pending(), 0u);
  // At the block's upper edge only the upward step is queued.
  f.hot_run(run(100), [](uintptr_t r) { return r > run(100) ? N::kExplore : N::kStop; });
  auto spans = take_all(f);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].addr, run(101));
}

TEST(Frontier, PromotedRunsArePassedOverNotStoppedAt) {
  // Runs 101..104 already sit on the fastest tier: the step starts past them, at 105.
  Frontier f(kRun, 8, 16);
  f.hot_run(run(100), [](uintptr_t r) {
    if (r < run(100)) return N::kStop;
    return r <= run(104) ? N::kPassOver : N::kExplore;
  });
  auto spans = take_all(f);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].addr, run(105));
  // Nothing to explore within reach: no step.
  f.hot_run(run(100), [](uintptr_t r) { return r < run(100) ? N::kStop : N::kPassOver; });
  EXPECT_EQ(f.pending(), 0u);
}

TEST(Frontier, OverlappingStepsAreQueuedOnce) {
  Frontier f(kRun, 8, 16);
  auto up_only = [](uintptr_t r) { return r > run(100) ? N::kExplore : N::kStop; };
  f.hot_run(run(100), up_only);
  f.hot_run(run(100), up_only);
  EXPECT_EQ(f.pending(), 1u);
}

TEST(Frontier, AStepIsCutToTheBudgetKeepingTheRunsNearestItsOrigin) {
  Frontier f(kRun, 8, 16);
  f.hot_run(run(100), [](uintptr_t) { return N::kExplore; });
  auto spans = take_all(f, 11);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].addr, run(101));  // upward, whole
  EXPECT_EQ(spans[0].runs, 8u);
  EXPECT_EQ(spans[1].addr, run(97));   // downward, cut to its 3 runs nearest run 100
  EXPECT_EQ(spans[1].runs, 3u);
  EXPECT_EQ(f.pending(), 0u);  // the far edge of what was sampled decides whether to go on
}

TEST(Frontier, TheQueueIsBounded) {
  Frontier f(kRun, 4, 3);
  for (size_t i = 0; i < 10; ++i) f.hot_run(run(100 + 20 * i), [](uintptr_t) { return N::kExplore; });
  EXPECT_EQ(f.pending(), 3u);
}

// A scripted heat source: 4096 runs, a hot region of 410 contiguous runs (gups after its hot set
// moves), and a budget of 48 runs a window. Random sampling takes 2 MiB-aligned blocks of 32
// runs; with the frontier, three quarters of each window go to its steps first. Returns the
// windows until every hot run has been sampled at least once.
size_t windows_to_find_region(bool with_frontier) {
  constexpr size_t kRuns = 4096, kHotLo = 3277, kHotHi = 3687, kBudget = 48, kBlock = 32;
  std::mt19937_64 rng(42);
  Frontier f(kRun, kBlock, 64);
  std::vector<uint32_t> last(kRuns, UINT32_MAX);
  std::set<size_t> found;
  for (uint32_t w = 0; w < 10000; ++w) {
    std::vector<Frontier::Span> spans(64);
    spans.resize(with_frontier ? f.take(spans.data(), spans.size(), kBudget * 3 / 4) : 0);
    size_t runs = 0;
    for (const auto& s : spans) runs += s.runs;
    while (runs < kBudget) {
      size_t block = rng() % (kRuns / kBlock);
      spans.push_back(Frontier::Span{run(block * kBlock), kBlock});
      runs += kBlock;
    }
    std::vector<size_t> hot;
    for (const auto& s : spans)
      for (size_t k = 0; k < s.runs; ++k) {
        size_t i = (s.addr - kBase) / kRun + k;
        if (i >= kRuns) continue;
        last[i] = w;
        if (i >= kHotLo && i < kHotHi) found.insert(i), hot.push_back(i);
      }
    if (found.size() == kHotHi - kHotLo) return w + 1;
    for (size_t i : hot)
      f.hot_run(run(i), [&](uintptr_t r) {
        size_t j = (r - kBase) / kRun;
        if (j >= kRuns) return N::kStop;
        return last[j] != UINT32_MAX && w - last[j] < 8 ? N::kStop : N::kExplore;
      });
  }
  return 10000;
}

TEST(Frontier, FindsAMovedHotRegionWholeFarSoonerThanRandomSampling) {
  size_t random_only = windows_to_find_region(false), frontier = windows_to_find_region(true);
  // Random sampling needs several passes over the heap for the region's last blocks; the frontier
  // needs to hit the region once, then grows through it at the budget's pace (410 runs at 36 a
  // window: a dozen windows).
  EXPECT_LE(frontier, 60u) << "random only: " << random_only;
  EXPECT_GE(random_only, 2 * frontier);
}

}  // namespace
}  // namespace tieralloc::tiering
