// hwloc's reading of hwloc's own fixtures must agree with discover(): both see the same sysfs, so
// a disagreement is a classification bug on one side.
#include "numa/hwloc_view.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "tests/support/sysfs_tree.h"

namespace tieralloc::numa {
namespace {

using testing::TempDir;

Topology discover_with_hwloc(const std::string& root) {
  Topology t = discover(DiscoverOptions{root, ""});
  add_hwloc_evidence(t);
  return t;
}

bool has_evidence(const Topology& t, int id, std::string_view exact) {
  const Node* n = t.node(id);
  return n && std::find(n->evidence.begin(), n->evidence.end(), exact) != n->evidence.end();
}

bool has_hwloc_evidence(const Topology& t, int id) {
  const Node* n = t.node(id);
  return n && std::any_of(n->evidence.begin(), n->evidence.end(),
                          [](const std::string& e) { return e.rfind("hwloc:", 0) == 0; });
}

std::string all_warnings(const Topology& t) {
  std::string s;
  for (const auto& w : t.warnings) s += w + "\n";
  return s;
}

TEST(HwlocView, OptaneNodesAreNvmToHwlocAndPmemToUs) {
  TempDir dir;
  auto t = discover_with_hwloc(testing::unpack_fixture(dir, "fakememinitiators-1np2c+1npp+gi"));
  EXPECT_TRUE(t.warnings.empty()) << all_warnings(t);
  for (int id : {7, 10}) {
    EXPECT_EQ(t.node(id)->kind, MemoryKind::kPmem) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:subtype=NVM")) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:bandwidth=78644MB/s")) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:latency=77ns")) << id;
  }
  EXPECT_TRUE(has_evidence(t, 7, "hwloc:dax=dax0.0:NVM"));
  EXPECT_TRUE(has_evidence(t, 10, "hwloc:dax=dax1.0:NVM"));
  // hwloc gives the DRAM nodes no subtype here, only their HMAT figures.
  for (int id : {5, 6, 8, 9}) {
    EXPECT_EQ(t.node(id)->kind, MemoryKind::kDram) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:bandwidth=131072MB/s")) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:latency=26ns")) << id;
  }
  // Memory-less initiator nodes are not NUMA nodes to hwloc.
  for (int id : {0, 1, 2, 3, 4}) EXPECT_FALSE(has_hwloc_evidence(t, id)) << id;
}

TEST(HwlocView, HbmDramAndNvmSubtypesMatchOurKinds) {
  TempDir dir;
  auto t = discover_with_hwloc(testing::unpack_fixture(dir, "fakeheteromemtiers"));
  EXPECT_TRUE(t.warnings.empty()) << all_warnings(t);
  for (int id : {2, 4}) {
    EXPECT_EQ(t.node(id)->kind, MemoryKind::kHbm) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:subtype=HBM")) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:bandwidth=10000MB/s")) << id;
  }
  for (int id : {0, 1}) {
    EXPECT_EQ(t.node(id)->kind, MemoryKind::kDram) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:subtype=DRAM")) << id;
  }
  for (int id : {6, 8, 9}) {
    EXPECT_EQ(t.node(id)->kind, MemoryKind::kPmem) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:subtype=NVM")) << id;
    EXPECT_TRUE(has_evidence(t, id, "hwloc:bandwidth=100MB/s")) << id;
  }
  // HBM handed out through soft-reserved (hmem) dax: specific-purpose memory, which says nothing
  // against HBM.
  EXPECT_TRUE(has_evidence(t, 4, "hwloc:dax=dax1.0:SPM"));
  EXPECT_TRUE(has_evidence(t, 8, "hwloc:dax=dax7.0:NVM"));
}

TEST(HwlocView, DisagreementIsReported) {
  TempDir dir;
  auto t = discover(DiscoverOptions{testing::unpack_fixture(dir, "fakeheteromemtiers"), ""});
  // As if discovery had missed the nvdimm parent of node 8's dax device.
  for (auto& n : t.nodes)
    if (n.id == 8) n.kind = MemoryKind::kDram;
  add_hwloc_evidence(t);
  ASSERT_EQ(t.warnings.size(), 1u) << all_warnings(t);
  EXPECT_NE(t.warnings[0].find("hwloc cross-check: node8 is NVM"), std::string::npos) << t.warnings[0];
  EXPECT_TRUE(has_evidence(t, 8, "hwloc:subtype=NVM"));
}

TEST(HwlocView, GpuNodesHiddenByHwlocGetNothing) {
  TempDir dir;
  auto t = discover_with_hwloc(testing::unpack_fixture(dir, "nvidiagpunumanodes"));
  EXPECT_TRUE(t.warnings.empty()) << all_warnings(t);
  for (int id = 250; id <= 255; ++id) EXPECT_FALSE(has_hwloc_evidence(t, id)) << id;
}

TEST(HwlocView, MissingRootWarnsAndLeavesNodesAlone) {
  Topology t;
  t.fsroot = "/nonexistent/tieralloc/root";
  Node n;
  n.id = 0;
  n.evidence = {"has_cpu"};
  t.nodes.push_back(n);
  add_hwloc_evidence(t);
  ASSERT_EQ(t.warnings.size(), 1u);
  EXPECT_NE(t.warnings[0].find("hwloc"), std::string::npos) << t.warnings[0];
  EXPECT_EQ(t.nodes[0].evidence, (std::vector<std::string>{"has_cpu"}));
}

TEST(HwlocView, RootWithoutSysfsIsNotReadAsTheHost) {
  // A directory, but no sysfs: hwloc would fall back to describing the host instead.
  TempDir dir;
  dir.write("proc/meminfo", "MemTotal:       8000000 kB\n");
  auto t = discover_with_hwloc(dir.path());
  EXPECT_FALSE(has_hwloc_evidence(t, 0));
  EXPECT_NE(all_warnings(t).find("hwloc: cannot read the topology"), std::string::npos) << all_warnings(t);
}

TEST(HwlocView, CallerEnvironmentIsRestored) {
  TempDir dir;
  std::string root = testing::unpack_fixture(dir, "fakeheteromemtiers");
  setenv("HWLOC_FSROOT", "/elsewhere", 1);
  unsetenv("HWLOC_THISSYSTEM");
  auto t = discover_with_hwloc(root);
  // hwloc read root, not the caller's HWLOC_FSROOT...
  EXPECT_TRUE(has_evidence(t, 2, "hwloc:subtype=HBM"));
  // ...and the caller's settings are back.
  ASSERT_NE(getenv("HWLOC_FSROOT"), nullptr);
  EXPECT_STREQ(getenv("HWLOC_FSROOT"), "/elsewhere");
  EXPECT_EQ(getenv("HWLOC_THISSYSTEM"), nullptr);
  unsetenv("HWLOC_FSROOT");
}

}  // namespace
}  // namespace tieralloc::numa
