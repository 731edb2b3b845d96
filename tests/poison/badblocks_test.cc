// The nvdimm badblocks lists of tests/fixtures/nvdimm: a hand-made tree in the kernel's layout
// (modelled on the ndbus0 of hwloc's 32em64t-2n8c+dax+nvme+mic+dimms dump, whose `device` links,
// pfn/btt/namespace devices and block folders it copies, with the region `resource` and
// `badblocks` files that dump lacks). region0 at 0x240000000: namespace0.0 (raw, pmem0) at its
// start; namespace0.1 claimed by pfn0.0 (fsdax, pmem0.1), data at +34 MiB; btt0.0 (pmem0.2s).
// region1 at 0x340000000 has a malformed line and a range running past its end.
#include <gtest/gtest.h>

#include <algorithm>

#include "poison/badblocks.h"
#include "tests/support/sysfs_tree.h"

namespace {

using tieralloc::poison::BadRange;
using tieralloc::poison::merge_ranges;
using tieralloc::poison::read_badblocks;

bool has(const std::vector<BadRange>& v, uint64_t phys, uint64_t len, const std::string& origin) {
  return std::any_of(v.begin(), v.end(), [&](const BadRange& r) { return r.phys == phys && r.len == len && r.origin == origin; });
}

bool has_note(const std::vector<std::string>& notes, const std::string& part) {
  return std::any_of(notes.begin(), notes.end(), [&](const std::string& n) { return n.find(part) != std::string::npos; });
}

TEST(Badblocks, SectorsBecomePhysicalRangesFromEachDevicesBase) {
  auto scan = read_badblocks(tieralloc::os::FsRoot(TIERALLOC_NVDIMM_FIXTURE));
  EXPECT_EQ(scan.lists_read, 4);  // region0, region1, pmem0, pmem0.1
  // region0: sector 8, 8 sectors; sector 69648 (34 MiB + 8 KiB), 2 sectors.
  EXPECT_TRUE(has(scan.ranges, 0x240001000, 4096, "region0"));
  EXPECT_TRUE(has(scan.ranges, 0x242202000, 1024, "region0"));
  // pmem0 (raw namespace at the region's start): the same first range, from the namespace's base.
  EXPECT_TRUE(has(scan.ranges, 0x240001000, 4096, "pmem0"));
  // pmem0.1 (fsdax): sector 16 from the pfn device's data start, the region's second range.
  EXPECT_TRUE(has(scan.ranges, 0x242202000, 1024, "pmem0.1"));
  // region1: sector 0; the last sector of the region (the rest of the range is past its end).
  EXPECT_TRUE(has(scan.ranges, 0x340000000, 512, "region1"));
  EXPECT_TRUE(has(scan.ranges, 0x340000000 + 2097151ull * 512, 512, "region1"));
  EXPECT_EQ(scan.ranges.size(), 6u);
  EXPECT_TRUE(has_note(scan.notes, "pmem0.2s: no physical base")) << "a BTT device cannot be placed";
  EXPECT_TRUE(has_note(scan.notes, "'bogus line'"));
  EXPECT_TRUE(has_note(scan.notes, "past the device's end"));
  EXPECT_EQ(scan.notes.size(), 3u);
}

TEST(Badblocks, MergedRangesNameEachBadSectorOnce) {
  auto merged = merge_ranges(read_badblocks(tieralloc::os::FsRoot(TIERALLOC_NVDIMM_FIXTURE)).ranges);
  ASSERT_EQ(merged.size(), 4u);
  EXPECT_EQ(merged[0].phys, 0x240001000u);
  EXPECT_EQ(merged[0].len, 4096u);
  EXPECT_EQ(merged[1].phys, 0x242202000u);
  EXPECT_EQ(merged[3].phys, 0x340000000u + 2097151ull * 512);
  // Overlapping and touching ranges merge; disjoint ones stay apart.
  auto m = merge_ranges({{100, 50, "a"}, {120, 100, "b"}, {220, 10, "c"}, {300, 1, "d"}});
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].phys, 100u);
  EXPECT_EQ(m[0].len, 130u);
}

TEST(Badblocks, RealDumpWithCleanPmemDevices) {
  // hwloc's dump of a real machine: four pmem block devices with empty lists under
  // /sys/class/block (the dump has no /sys/block or /sys/bus/nd), BTT devices without lists.
  tieralloc::testing::TempDir dir;
  const std::string root = tieralloc::testing::unpack_fixture(dir, "32em64t-2n8c+dax+nvme+mic+dimms");
  auto scan = read_badblocks(tieralloc::os::FsRoot(root));
  EXPECT_EQ(scan.lists_read, 4);  // pmem0.1, pmem0.3, pmem1, pmem1.2
  EXPECT_TRUE(scan.ranges.empty());
  EXPECT_TRUE(scan.notes.empty()) << scan.notes.front();
}

TEST(Badblocks, NoNvdimmsNoLists) {
  auto scan = read_badblocks(tieralloc::os::FsRoot("/nonexistent-fsroot"));
  EXPECT_TRUE(scan.ranges.empty());
  EXPECT_TRUE(scan.notes.empty());
  EXPECT_EQ(scan.lists_read, 0);
}

}  // namespace
