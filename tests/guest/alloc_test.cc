// tieralloc's placement on real NUMA nodes, inside the guest: every claim is checked page by page
// with the kernel's move_pages status query and get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR).
// The Budget suite needs TIERALLOC_FAST_LIMIT in the environment; the guest case that runs it sets
// it (tests/guest/CMakeLists.txt), the others run without it.
#include <errno.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
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
  for (auto* p : blocks) {
    auto h = node_histogram(p, block);
    if (h.size() == 1 && tier_nodes(0).count(h.begin()->first)) ++fast_blocks;
    else if (h.size() == 1 && tier_nodes(1).count(h.begin()->first)) ++spilled;
    else ADD_FAILURE() << "block split or misplaced: " << describe(h);
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

}  // namespace
