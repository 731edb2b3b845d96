// Tier discovery against real sysfs dumps (hwloc's test suite) and hand-made trees, plus bad input.
#include "numa/topology.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "tests/support/sysfs_tree.h"

namespace tieralloc::numa {
namespace {

using testing::NodeSpec;
using testing::TempDir;

Topology discover_at(const std::string& root, const std::string& tiers = "") {
  return discover(DiscoverOptions{root, tiers});
}

std::vector<int> tier_nodes(const Topology& t, int rank) {
  return rank < static_cast<int>(t.tiers.size()) ? t.tiers[static_cast<size_t>(rank)].nodes : std::vector<int>{};
}

MemoryKind kind_of(const Topology& t, int id) {
  const Node* n = t.node(id);
  return n ? n->kind : MemoryKind::kUnknown;
}

bool has_warning(const Topology& t, std::string_view needle) {
  return std::any_of(t.warnings.begin(), t.warnings.end(),
                     [&](const std::string& w) { return w.find(needle) != std::string::npos; });
}

bool has_evidence(const Topology& t, int id, std::string_view needle) {
  const Node* n = t.node(id);
  return n && std::any_of(n->evidence.begin(), n->evidence.end(),
                          [&](const std::string& e) { return e.find(needle) != std::string::npos; });
}

TEST(FixtureTopology, OptaneKmemNodesAreASlowerPmemTier) {
  TempDir dir;
  auto t = discover_at(testing::unpack_fixture(dir, "fakememinitiators-1np2c+1npp+gi"));
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_EQ(t.ranked_by, "hmat");
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{5, 6, 8, 9}));
  EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{7, 10}));
  EXPECT_EQ(t.tiers[0].kind, MemoryKind::kDram);
  EXPECT_EQ(t.tiers[1].kind, MemoryKind::kPmem);
  for (int id : {7, 10}) {
    EXPECT_EQ(kind_of(t, id), MemoryKind::kPmem) << id;
    EXPECT_TRUE(has_evidence(t, id, ":kmem:nvdimm")) << id;
  }
  // CPU-less, but DRAM by HMAT: CPU-less does not mean slow.
  for (int id : {5, 6, 8, 9}) EXPECT_EQ(kind_of(t, id), MemoryKind::kDram) << id;
  // Initiator-only nodes hold no memory.
  for (int id : {0, 1, 2, 3, 4}) {
    EXPECT_FALSE(t.node(id)->usable) << id;
    EXPECT_EQ(t.node(id)->tier, -1) << id;
  }
  // Each pmem node is local to one package: its HMAT initiators are one package's CPU nodes.
  EXPECT_EQ(t.node(7)->hmat->initiators, (std::vector<int>{0, 2}));
  EXPECT_EQ(t.node(10)->hmat->initiators, (std::vector<int>{1, 3}));
}

TEST(FixtureTopology, HbmIsNotASlowTierAndNvmIsBelowDram) {
  TempDir dir;
  auto t = discover_at(testing::unpack_fixture(dir, "fakeheteromemtiers"));
  ASSERT_EQ(t.tiers.size(), 3u);
  EXPECT_EQ(t.ranked_by, "hmat");
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{2, 4}));
  EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{0, 1}));
  EXPECT_EQ(tier_nodes(t, 2), (std::vector<int>{6, 8, 9}));
  EXPECT_EQ(kind_of(t, 2), MemoryKind::kHbm);
  EXPECT_EQ(kind_of(t, 4), MemoryKind::kHbm);
  EXPECT_TRUE(t.node(4)->cpus.empty());
  for (int id : {0, 1}) EXPECT_EQ(kind_of(t, id), MemoryKind::kDram);
  for (int id : {6, 8, 9}) EXPECT_EQ(kind_of(t, id), MemoryKind::kPmem);
}

TEST(FixtureTopology, GpuMemoryNodesAreNotAHeapTier) {
  TempDir dir;
  auto t = discover_at(testing::unpack_fixture(dir, "nvidiagpunumanodes"));
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 8}));
  for (int id = 250; id <= 255; ++id) {
    ASSERT_NE(t.node(id), nullptr);
    EXPECT_EQ(kind_of(t, id), MemoryKind::kGpu) << id;
    EXPECT_FALSE(t.node(id)->usable) << id;
    EXPECT_EQ(t.node(id)->tier, -1);
  }
}

TEST(FixtureTopology, EightDramNodesAreOneTier) {
  TempDir dir;
  auto t = discover_at(testing::unpack_fixture(dir, "16amd64-8n2c"));
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  for (const auto& n : t.nodes) {
    EXPECT_EQ(n.kind, MemoryKind::kDram);
    EXPECT_EQ(n.cpus.size(), 2u);
    EXPECT_EQ(n.distance_to(n.id), 10);
  }
}

TEST(FixtureTopology, MemorySideCacheMeansOneTier) {
  TempDir dir;
  auto t = discover_at(testing::unpack_fixture(dir, "memorysidecaches"));
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 1, 2, 3}));
  for (const auto& n : t.nodes) {
    EXPECT_GT(n.memory_side_cache_bytes, 0u) << n.id;
    EXPECT_TRUE(has_evidence(t, n.id, "memory_side_cache")) << n.id;
  }
}

TEST(FixtureTopology, DevdaxAndOfflineKmemNodesAreNotUsed) {
  TempDir dir;
  auto t = discover_at(testing::unpack_fixture(dir, "32em64t-2n8c+dax+nvme+mic+dimms"));
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 1}));
  EXPECT_EQ(t.node(4), nullptr);
  EXPECT_EQ(t.node(5), nullptr);
}

// A 2-socket Optane machine in App Direct mode with both PMem regions onlined by kmem: the kernel
// puts DRAM in memory_tier4 and the kmem nodes in memory_tier22.
void write_optane_2s(const TempDir& dir) {
  testing::write_nodes(dir, {
                                {0, "0-23", 192ull << 20, {10, 21, 17, 28}},
                                {1, "24-47", 192ull << 20, {21, 10, 28, 17}},
                                {2, "", 768ull << 20, {17, 28, 10, 28}},
                                {3, "", 768ull << 20, {28, 17, 28, 10}},
                            });
  testing::write_dax(dir, "dax0.0", 2, "kmem", "LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region0/dax0.0");
  testing::write_dax(dir, "dax1.0", 3, "kmem", "LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region1/dax1.0");
  testing::write_memory_tier(dir, 4, "0-1");
  testing::write_memory_tier(dir, 22, "2-3");
}

TEST(HandMadeTopology, OptaneAppDirectKmemFollowsKernelTiers) {
  TempDir dir;
  write_optane_2s(dir);
  auto t = discover_at(dir.path());
  EXPECT_TRUE(t.warnings.empty()) << t.warnings.front();
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_EQ(t.ranked_by, "memory_tiering");
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 1}));
  EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{2, 3}));
  EXPECT_EQ(t.tiers[1].kind, MemoryKind::kPmem);
  EXPECT_EQ(t.tiers[1].capacity_bytes, 2 * (768ull << 30));
  EXPECT_TRUE(has_evidence(t, 2, "memory_tiering:22"));
  EXPECT_TRUE(has_evidence(t, 3, "dax:dax1.0:kmem:nvdimm"));
  EXPECT_EQ(t.kernel.numa_balancing, 0);
  EXPECT_EQ(t.kernel.demotion_enabled, false);
}

TEST(HandMadeTopology, CxlExpanderIsSlowerByHmat) {
  TempDir dir;
  testing::write_nodes(dir, {
                                {0, "0-15", 64ull << 20, {10, 14}, 90, 60000},
                                {1, "", 256ull << 20, {14, 10}, 250, 20000},
                            });
  auto t = discover_at(dir.path());
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_EQ(t.ranked_by, "hmat");
  EXPECT_EQ(kind_of(t, 1), MemoryKind::kCxl);
  EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{1}));
  EXPECT_TRUE(has_evidence(t, 1, "hmat:slower-than-dram"));
}

TEST(HandMadeTopology, HmatDecidesWhenKernelPutsEverythingInOneTier) {
  // Linux 6.1 ignores HMAT for memory tiers: a CPU-less slower node lands in memory_tier4 with DRAM.
  TempDir dir;
  testing::write_nodes(dir, {
                                {0, "0-1", 1ull << 20, {10, 20}, 100, 20000},
                                {1, "", 1ull << 20, {20, 10}, 300, 4000},
                            });
  testing::write_memory_tier(dir, 4, "0-1");
  auto t = discover_at(dir.path());
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_EQ(t.ranked_by, "hmat");
  EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{1}));
}

TEST(HandMadeTopology, DistanceAloneSeparatesFarCpulessMemory) {
  TempDir dir;
  testing::write_nodes(dir, {
                                {0, "0-3", 1ull << 20, {10, 21, 40}},
                                {1, "4-7", 1ull << 20, {21, 10, 40}},
                                {2, "", 4ull << 20, {40, 40, 10}},
                            });
  auto t = discover_at(dir.path());
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_EQ(t.ranked_by, "distance");
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 1}));
  EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{2}));
}

TEST(HandMadeTopology, LaptopHasOneDramTier) {
  TempDir dir;
  testing::write_nodes(dir, {{0, "0-7", 16ull << 20, {10}}});
  auto t = discover_at(dir.path());
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(t.tiers[0].kind, MemoryKind::kDram);
  EXPECT_EQ(t.tiers[0].capacity_bytes, 16ull << 30);
  EXPECT_FALSE(t.emulated);
}

TEST(Emulation, CarvesNamedTiersOutOfTheFastestNodes) {
  TempDir dir;
  testing::write_nodes(dir, {{0, "0-7", 16ull << 20, {10}}});
  auto t = discover_at(dir.path(), "emulate:fast=1G,slow=4G");
  EXPECT_TRUE(t.warnings.empty());
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_TRUE(t.emulated);
  EXPECT_TRUE(t.tiers[0].emulated && t.tiers[1].emulated);
  EXPECT_EQ(t.tiers[0].capacity_bytes, 1ull << 30);
  EXPECT_EQ(t.tiers[1].capacity_bytes, 4ull << 30);
  EXPECT_EQ(t.tiers[0].kind, MemoryKind::kDram);
  EXPECT_EQ(t.tiers[1].kind, MemoryKind::kPmem);
  EXPECT_EQ(t.tiers[1].nodes, (std::vector<int>{0}));
  EXPECT_NE(format_table(t).find("EMULATED"), std::string::npos);
  EXPECT_NE(format_json(t).find("\"emulated\": true"), std::string::npos);
}

TEST(Emulation, ExplicitNodeListsSetTheOrder) {
  TempDir dir;
  write_optane_2s(dir);
  auto t = discover_at(dir.path(), "2-3:pmem;0-1:dram");
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_FALSE(t.emulated);
  EXPECT_EQ(t.ranked_by, "TIERALLOC_TIERS");
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{2, 3}));
  EXPECT_EQ(t.tiers[0].kind, MemoryKind::kPmem);
}

TEST(BadInput, MalformedTieraallocTiersWarnsAndKeepsDiscovery) {
  TempDir dir;
  write_optane_2s(dir);
  for (const char* spec : {"garbage", "emulate:", "emulate:fast=", "emulate:fast=abc", "emulate:fast=-1G",
                           "emulate:warp=1G", "emulate:fast=1G,,", "0-1:dram;2-3:", "0-1:gpu", "0-9:dram",
                           "0-1:dram;1-3:pmem", "x-y:dram", "emulate:fast=100000000T"}) {
    auto t = discover_at(dir.path(), spec);
    EXPECT_TRUE(has_warning(t, "TIERALLOC_TIERS")) << spec;
    EXPECT_FALSE(t.emulated) << spec;
    ASSERT_EQ(t.tiers.size(), 2u) << spec;
    EXPECT_EQ(t.ranked_by, "memory_tiering") << spec;
    EXPECT_EQ(tier_nodes(t, 1), (std::vector<int>{2, 3})) << spec;
    EXPECT_TRUE(t.node(2)->usable) << spec;
  }
}

TEST(BadInput, GarbageSysfsFilesFallBackWithWarnings) {
  TempDir dir;
  write_optane_2s(dir);
  dir.write("sys/devices/system/node/node0/distance", "");
  dir.write("sys/devices/system/node/node1/meminfo", "Node 1 MemTotal: lots kB\n");
  dir.write("sys/devices/system/node/node3/cpulist", "zz\n");
  testing::write_memory_tier(dir, 22, "2-3,7");
  dir.write("sys/devices/virtual/memory_tiering/memory_tier99/nodelist", "\x01\x02nonsense");
  auto t = discover_at(dir.path());
  EXPECT_TRUE(has_warning(t, "node0/distance"));
  EXPECT_TRUE(has_warning(t, "node1/meminfo"));
  EXPECT_TRUE(has_warning(t, "node3/cpulist"));
  EXPECT_TRUE(has_warning(t, "node7"));
  EXPECT_TRUE(has_warning(t, "memory_tier99"));
  // Still the same two tiers: node1 has CPUs, so its unreadable size does not make it unusable.
  ASSERT_EQ(t.tiers.size(), 2u);
  EXPECT_EQ(tier_nodes(t, 0), (std::vector<int>{0, 1}));
  EXPECT_TRUE(t.node(1)->usable);
  EXPECT_FALSE(t.node(1)->capacity_known);
  EXPECT_TRUE(t.node(0)->distances.empty());
}

TEST(BadInput, OnlineListNamingAbsentNodeAndTruncatedFiles) {
  TempDir dir;
  testing::write_nodes(dir, {{0, "0-1", 1ull << 20, {10}}});
  dir.write("sys/devices/system/node/online", "0,5\n");
  dir.write("sys/devices/system/node/node0/access1/initiators/read_latency", "\n");
  auto t = discover_at(dir.path());
  EXPECT_TRUE(has_warning(t, "node5"));
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(t.nodes.size(), 1u);
}

TEST(BadInput, MissingFsRootFallsBackToTheRealRoot) {
  auto t = discover_at("/nonexistent/tieralloc/root");
  EXPECT_TRUE(has_warning(t, "TIERALLOC_FSROOT=/nonexistent/tieralloc/root"));
  EXPECT_EQ(t.fsroot, "/");
  EXPECT_GE(t.tiers.size(), 1u);
}

TEST(BadInput, EmptyTreeStillGivesOneTier) {
  TempDir dir;
  dir.write("proc/meminfo", "MemTotal:       8000000 kB\nMemAvailable:   4000000 kB\n");
  auto t = discover_at(dir.path());
  ASSERT_EQ(t.tiers.size(), 1u);
  EXPECT_EQ(t.tiers[0].capacity_bytes, 8000000ull * 1024);
  EXPECT_TRUE(has_warning(t, "no NUMA nodes"));
}

TEST(Format, JsonHasTheDocumentedShape) {
  TempDir dir;
  write_optane_2s(dir);
  std::string j = format_json(discover_at(dir.path()));
  EXPECT_NE(j.find("\"emulated\": false"), std::string::npos);
  EXPECT_NE(j.find("{\"id\": 2, \"cpus\": \"\", \"kind\": \"pmem\", \"usable\": true, \"tier\": 1, \"capacity_bytes\": "
                   "824633720832, \"evidence\": [\"memory_tiering:22\", \"dax:dax0.0:kmem:nvdimm\"]}"),
            std::string::npos)
      << j;
  EXPECT_NE(j.find("{\"rank\": 1, \"kind\": \"pmem\", \"nodes\": [2, 3], \"capacity_bytes\": 1649267441664}"),
            std::string::npos);
  EXPECT_NE(j.find("\"kernel\": {\"numa_balancing\": 0, \"demotion_enabled\": false}"), std::string::npos);
}

TEST(Format, UnusableNodesHaveNullTier) {
  TempDir dir;
  std::string j = format_json(discover_at(testing::unpack_fixture(dir, "nvidiagpunumanodes")));
  EXPECT_NE(j.find("\"id\": 250, \"cpus\": \"\", \"kind\": \"gpu\", \"usable\": false, \"tier\": null"), std::string::npos)
      << j;
}

}  // namespace
}  // namespace tieralloc::numa
