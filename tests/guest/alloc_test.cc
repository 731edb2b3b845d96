// tieralloc's placement on real NUMA nodes, inside the guest: every claim is checked page by page
// with the kernel's move_pages status query and get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR).
// The Budget suite needs TIERALLOC_FAST_LIMIT in the environment; the guest case that runs it sets
// it (tests/guest/CMakeLists.txt), the others run without it.
#include <errno.h>
#include <sys/mman.h>
#include <time.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "tests/guest/kernel_facts.h"
#include "tieralloc/tieralloc.h"

namespace {

using tieralloc::guest::node_histogram;
using tieralloc::guest::policy_node;

std::set<int> tier_nodes(int tier) {
  struct tieralloc_tier_info info;
  if (tieralloc_tier_info(tier, &info) != 0) return {};
  return {info.nodes, info.nodes + info.nnodes};
}

std::string describe(const std::map<int, size_t>& h) {
  std::string s;
  for (auto [node, pages] : h) s += (s.empty() ? "" : " ") + ("node" + std::to_string(node)) + ":" + std::to_string(pages);
  return s;
}

// Nodes of [p, p+len) page by page, in address order, as runs: "node0 x256, node1 x1".
std::string describe_runs(const void* p, size_t len) {
  std::string s;
  std::vector<int> nodes = tieralloc::guest::page_nodes(p, len);
  for (size_t i = 0, j; i < nodes.size(); i = j) {
    for (j = i; j < nodes.size() && nodes[j] == nodes[i]; ++j) {
    }
    s += (s.empty() ? "" : ", ") + ("node" + std::to_string(nodes[i])) + " x" + std::to_string(j - i);
  }
  return s;
}

// The kernel's mappings (with their NUMA policies) that overlap [p - 2 MiB, p + len + 2 MiB).
std::string numa_maps_near(const void* p, size_t len) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) - (2 << 20), hi = reinterpret_cast<uintptr_t>(p) + len + (2 << 20);
  std::ifstream maps("/proc/self/numa_maps");
  std::string line, out;
  while (std::getline(maps, line)) {
    uintptr_t start = std::stoull(line.substr(0, line.find(' ')), nullptr, 16);
    if (start >= lo && start < hi) out += "\n    " + line;
  }
  return out;
}

// A line of /sys/devices/system/node/nodeN/meminfo ("Node 0 MemFree: 123 kB").
std::string node_meminfo(int node, const std::string& field) {
  std::ifstream f("/sys/devices/system/node/node" + std::to_string(node) + "/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.find(" " + field + ":") != std::string::npos) return line;
  return "no " + field;
}

// Every page of [p, p+len) is on one of `nodes`, by both kernel interfaces.
::testing::AssertionResult on_nodes(const void* p, size_t len, const std::set<int>& nodes) {
  auto h = node_histogram(p, len);
  for (auto [node, pages] : h)
    if (!nodes.count(node)) return ::testing::AssertionFailure() << "move_pages says pages on " << describe(h);
  for (size_t off = 0; off < len; off += tieralloc::guest::kPage) {
    int n = policy_node(static_cast<const char*>(p) + off);
    if (!nodes.count(n)) return ::testing::AssertionFailure() << "get_mempolicy says node " << n << " at offset " << off;
  }
  return ::testing::AssertionSuccess() << describe(h);
}

class Guest : public ::testing::Test {
 protected:
  void SetUp() override {
    slow_node_ = tieralloc::guest::expected_slow_node();
    ASSERT_GE(slow_node_, 1) << "TIERALLOC_GUEST_SLOW_NODE is not set: run inside the guest";
    tiers_ = tieralloc_tier_count();
    ASSERT_GE(tiers_, 2) << "the guest has a slow node, tieralloc must see at least two tiers";
  }
  int slow_node_ = -1;
  int tiers_ = 0;
};

TEST_F(Guest, FastestTierIsNodeZeroAndSlowestIsTheSlowNode) {
  EXPECT_TRUE(tier_nodes(0).count(0));
  EXPECT_FALSE(tier_nodes(0).count(slow_node_));
  EXPECT_EQ(tier_nodes(tiers_ - 1), std::set<int>{slow_node_});
}

TEST_F(Guest, EachTiersAllocationsLandOnItsNodes) {
  for (int t = 0; t < tiers_; ++t) {
    for (size_t size : {size_t{64}, size_t{5000}, size_t{300000}, size_t{8} << 20}) {
      auto* p = static_cast<unsigned char*>(tieralloc_mallocx(size, TIERALLOC_TIER(t)));
      ASSERT_NE(p, nullptr) << "tier " << t << " size " << size;
      std::memset(p, 0x5a, size);
      EXPECT_TRUE(on_nodes(p, size, tier_nodes(t))) << "tier " << t << " size " << size;
      EXPECT_EQ(tieralloc_tier_of(p), t);
      tieralloc_free(p);
    }
  }
}

TEST_F(Guest, StrictSlowestTierAndHintsUseTheRealNodes) {
  size_t size = 2 << 20;
  auto* strict = static_cast<unsigned char*>(tieralloc_mallocx(size, TIERALLOC_TIER(tiers_ - 1) | TIERALLOC_STRICT));
  auto* cold = static_cast<unsigned char*>(tieralloc_mallocx(size, TIERALLOC_COLD));
  auto* hot = static_cast<unsigned char*>(tieralloc_mallocx(size, TIERALLOC_HOT));
  ASSERT_TRUE(strict && cold && hot);
  for (auto* p : {strict, cold, hot}) std::memset(p, 1, size);
  EXPECT_TRUE(on_nodes(strict, size, {slow_node_}));
  EXPECT_TRUE(on_nodes(cold, size, {slow_node_}));
  EXPECT_TRUE(on_nodes(hot, size, tier_nodes(0)));
  for (auto* p : {strict, cold, hot}) tieralloc_free(p);
}

// Pages really cross nodes and back; a checksum taken before must hold after each move.
TEST_F(Guest, MoveCarriesPagesAcrossNodesAndKeepsContents) {
  const size_t len = 16 << 20;
  auto* p = static_cast<uint64_t*>(tieralloc_mallocx(len, TIERALLOC_TIER(0) | TIERALLOC_ALIGN(4096)));
  ASSERT_NE(p, nullptr);
  uint64_t sum = 0;
  for (size_t i = 0; i < len / 8; ++i) sum += p[i] = i * 0x9e3779b97f4a7c15ull;
  ASSERT_TRUE(on_nodes(p, len, tier_nodes(0)));
  auto checksum = [&] {
    uint64_t s = 0;
    for (size_t i = 0; i < len / 8; ++i) s += p[i];
    return s;
  };
  ASSERT_EQ(tieralloc_move(p, len, tiers_ - 1), 0) << strerror(errno);
  EXPECT_TRUE(on_nodes(p, len, {slow_node_}));
  EXPECT_EQ(tieralloc_tier_of(p), tiers_ - 1);
  EXPECT_EQ(checksum(), sum);
  ASSERT_EQ(tieralloc_move(p, len, 0), 0) << strerror(errno);
  EXPECT_TRUE(on_nodes(p, len, tier_nodes(0)));
  EXPECT_EQ(checksum(), sum);
  tieralloc_free(p);
}

// Memory never touched has no node yet, and 6.1 says so with -EFAULT, not -ENOENT (kernel_test.cc):
// it still reports the tier it is bound to, and a move of a half-touched range succeeds, its
// untouched half following the new binding when it is touched.
TEST_F(Guest, UntouchedMemoryHasItsTierAndMovesWithTheRest) {
  const size_t len = 16 << 20;  // more than the tests before freed on the tier: fresh address space
  auto* p = static_cast<unsigned char*>(tieralloc_mallocx(len, TIERALLOC_TIER(tiers_ - 1) | TIERALLOC_ALIGN(4096)));
  ASSERT_NE(p, nullptr);
  ASSERT_LT(tieralloc::guest::page_nodes(p + len / 2, 1).at(0), 0) << "the page must not be resident yet";
  EXPECT_EQ(tieralloc_tier_of(p + len / 2), tiers_ - 1) << strerror(errno);
  std::memset(p, 7, len / 2);
  EXPECT_TRUE(on_nodes(p, len / 2, {slow_node_}));
  ASSERT_EQ(tieralloc_move(p, len, 0), 0) << strerror(errno);
  EXPECT_TRUE(on_nodes(p, len / 2, tier_nodes(0)));
  EXPECT_EQ(tieralloc_tier_of(p + len / 2), 0);
  std::memset(p + len / 2, 8, len / 2);
  EXPECT_TRUE(on_nodes(p + len / 2, len / 2, tier_nodes(0)));
  EXPECT_EQ(p[0], 7);
  tieralloc_free(p);
}

// Plain malloc under TIERALLOC_FAST_LIMIT: tier 0 until the budget is spent, then the next tier's
// node, never past the budget on tier 0. A suite of its own: it needs the variable, the rest not.
class Budget : public Guest {};

TEST_F(Budget, FillsTierZeroThenSpillsToTheNextNode) {
  struct tieralloc_tier_info fast;
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  ASSERT_NE(fast.limit_bytes, UINT64_MAX) << "run with TIERALLOC_FAST_LIMIT set";
  const size_t block = 1 << 20;
  std::vector<unsigned char*> blocks;
  for (size_t i = 0; i < 3 * fast.limit_bytes / block; ++i) {
    auto* p = static_cast<unsigned char*>(malloc(block));
    ASSERT_NE(p, nullptr);
    std::memset(p, static_cast<int>(i), block);
    blocks.push_back(p);
  }
  size_t fast_blocks = 0, spilled = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto h = node_histogram(blocks[i], block);
    if (h.size() == 1 && tier_nodes(0).count(h.begin()->first)) ++fast_blocks;
    else if (h.size() == 1 && tier_nodes(1).count(h.begin()->first)) ++spilled;
    else
      ADD_FAILURE() << "block " << i << " of " << blocks.size() << " at " << static_cast<void*>(blocks[i]) << " (tier "
                    << tieralloc_tier_of(blocks[i]) << ") split or misplaced: " << describe_runs(blocks[i], block) << "; mappings near it:"
                    << numa_maps_near(blocks[i], block) << "\n  node 0: " << node_meminfo(0, "MemFree");
  }
  EXPECT_GT(fast_blocks, 0u);
  EXPECT_GE(spilled, blocks.size() / 2) << "most of 3x the budget must spill";
  EXPECT_TRUE(on_nodes(blocks.back(), block, tier_nodes(1)));
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  EXPECT_LE(fast.used_bytes, fast.limit_bytes);
  for (size_t i = 0; i < blocks.size(); ++i)
    ASSERT_EQ(blocks[i][block - 1], static_cast<unsigned char>(i)) << i;
  for (auto* p : blocks) free(p);
}

// With the kernel's NUMA balancing on (the balancing machine), memory tieralloc placed on the
// slow node or moved there stays there while node 0's CPUs use it, and tieralloc_tier_of keeps
// naming the slow tier throughout. A control region in the same loop, moved to the slow node
// without a policy, shows the kernel really is pulling pages back during the window.
class Balancing : public Guest {};

TEST_F(Balancing, TierPlacementHoldsWhileTheKernelPullsUnboundPagesBack) {
  int balancing = -1;
  std::ifstream("/proc/sys/kernel/numa_balancing") >> balancing;
  ASSERT_EQ(balancing, 1) << "run on a machine with numa_balancing=1";
  const size_t len = 4 << 20;
  const int slow_tier = tiers_ - 1;

  void* control_map = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(control_map, MAP_FAILED);
  auto* control = static_cast<unsigned char*>(control_map);
  std::memset(control, 1, len);
  std::vector<void*> pages;
  for (size_t off = 0; off < len; off += tieralloc::guest::kPage) pages.push_back(control + off);
  std::vector<int> to_slow(pages.size(), slow_node_), status(pages.size());
  ASSERT_EQ(syscall(SYS_move_pages, 0, pages.size(), pages.data(), to_slow.data(), status.data(), MPOL_MF_MOVE), 0);
  ASSERT_EQ(node_histogram(control, len)[slow_node_], pages.size());

  auto* placed = static_cast<unsigned char*>(tieralloc_mallocx(len, TIERALLOC_TIER(slow_tier) | TIERALLOC_ALIGN(4096)));
  auto* moved = static_cast<unsigned char*>(tieralloc_mallocx(len, TIERALLOC_TIER(0) | TIERALLOC_ALIGN(4096)));
  ASSERT_TRUE(placed && moved);
  std::memset(placed, 2, len);
  std::memset(moved, 3, len);
  ASSERT_EQ(tieralloc_move(moved, len, slow_tier), 0) << strerror(errno);
  ASSERT_TRUE(on_nodes(placed, len, {slow_node_}));
  ASSERT_TRUE(on_nodes(moved, len, {slow_node_}));

  // Touch everything from node 0's CPUs, without sleeping (the kernel scans a task's memory only
  // after it has run for a while), until it has pulled most of the control region back or 20 s
  // pass.
  const long migrated_before = tieralloc::guest::vmstat("numa_pages_migrated");
  timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  double elapsed = 0;
  size_t samples = 0, wrong_tier = 0, control_back = 0;
  std::map<int, size_t> control_status;
  while (elapsed < 20) {
    for (auto* region : {control, placed, moved})
      for (size_t off = 0; off < len; off += tieralloc::guest::kPage) region[off]++;
    for (size_t off = 0; off < len; off += 64 * tieralloc::guest::kPage) {
      ++samples;
      if (tieralloc_tier_of(placed + off) != slow_tier) ++wrong_tier;
      if (tieralloc_tier_of(moved + off) != slow_tier) ++wrong_tier;
    }
    control_status = node_histogram(control, len);
    control_back = control_status[0];
    clock_gettime(CLOCK_MONOTONIC, &now);
    elapsed = static_cast<double>(now.tv_sec - start.tv_sec) + static_cast<double>(now.tv_nsec - start.tv_nsec) / 1e9;
    if (control_back * 2 > pages.size()) break;
  }
  const long migrated = tieralloc::guest::vmstat("numa_pages_migrated") - migrated_before;
  printf("after %.1f s of use from node 0: control region %s; tieralloc's regions placed %s, moved %s; "
         "the kernel's numa_pages_migrated +%ld\n", elapsed, describe(control_status).c_str(),
         describe(node_histogram(placed, len)).c_str(), describe(node_histogram(moved, len)).c_str(), migrated);
  EXPECT_GT(control_back * 2, pages.size()) << "the kernel never pulled the unbound pages back: is balancing active?";
  EXPECT_GE(migrated, static_cast<long>(control_back)) << "the kernel's balancing, not something else, moved them";
  EXPECT_TRUE(on_nodes(placed, len, {slow_node_}));
  EXPECT_TRUE(on_nodes(moved, len, {slow_node_}));
  EXPECT_EQ(wrong_tier, 0u) << "of " << samples << " tieralloc_tier_of samples per region";
  tieralloc_free(placed);
  tieralloc_free(moved);
  munmap(control, len);
}

}  // namespace
