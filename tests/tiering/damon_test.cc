// DAMON as a heat source: the pure parts (ranges given to DAMON, regions turned into run scores)
// with exact figures, and the monitor against this machine's real kernel. Where the kernel lacks
// virtual-address DAMON (this project's VMs: 6.18 with DAMON for physical addresses only), start()
// must say why and leave /sys as it found it; where it has it, the kdamond must run on this
// process and be given back. The engine driven by DAMON end to end is a guest test (numa-6.12).
#include "tiering/damon.h"

#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <map>
#include <optional>

#include "os/fs.h"

namespace tieralloc::tiering {
namespace {

constexpr uintptr_t kRun = uintptr_t{2} << 20;
constexpr uintptr_t kBase = uintptr_t{0x7f0000000000};

std::map<uintptr_t, double> scores(const std::vector<DamonRegion>& regions) {
  std::map<uintptr_t, double> out;
  run_scores(regions, kRun, [&](uintptr_t run, double accesses) {
    EXPECT_FALSE(out.count(run)) << "run scored twice";
    out[run] = accesses;
  });
  return out;
}

TEST(DamonRunScores, EachRunGetsTheByteWeightedMeanOfTheRegionsCoveringIt) {
  // Run 0: a quarter at 20, three quarters at 4. Run 1: one region reaching on into run 2 and 3.
  // Run 4: not covered. Run 5: covered in part only, by a region at 8.
  const std::vector<DamonRegion> regions = {
      {kBase, kBase + kRun / 4, 20},
      {kBase + kRun / 4, kBase + kRun, 4},
      {kBase + kRun, kBase + 3 * kRun + kRun / 2, 10},
      {kBase + 3 * kRun + kRun / 2, kBase + 4 * kRun, 0},
      {kBase + 5 * kRun + 4096, kBase + 5 * kRun + 8192, 8},
  };
  const auto s = scores(regions);
  ASSERT_EQ(s.size(), 5u);
  EXPECT_DOUBLE_EQ(s.at(kBase), 0.25 * 20 + 0.75 * 4);
  EXPECT_DOUBLE_EQ(s.at(kBase + kRun), 10);
  EXPECT_DOUBLE_EQ(s.at(kBase + 2 * kRun), 10);
  EXPECT_DOUBLE_EQ(s.at(kBase + 3 * kRun), 5);
  EXPECT_FALSE(s.count(kBase + 4 * kRun));
  EXPECT_DOUBLE_EQ(s.at(kBase + 5 * kRun), 8) << "only the covered bytes count";
  EXPECT_TRUE(scores({}).empty());
}

TEST(DamonRanges, MergedAcrossSmallGapsThenAcrossTheNarrowestUntilFewEnough) {
  const uintptr_t M = 1 << 20;
  std::vector<AddressRange> in = {{kBase + 100 * M, kBase + 110 * M}, {kBase, kBase + 4 * M},
                                  {kBase + 5 * M, kBase + 8 * M},     {kBase + 50 * M, kBase + 60 * M},
                                  {kBase + 70 * M, kBase + 70 * M}};  // empty: dropped
  auto out = coalesce_ranges(in, 2 * M, 0);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], (AddressRange{kBase, kBase + 8 * M})) << "a 1 MiB gap is merged, sorted first";
  EXPECT_EQ(out[1], (AddressRange{kBase + 50 * M, kBase + 60 * M}));
  EXPECT_EQ(out[2], (AddressRange{kBase + 100 * M, kBase + 110 * M}));
  out = coalesce_ranges(in, 2 * M, 2);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0], (AddressRange{kBase, kBase + 8 * M}));
  EXPECT_EQ(out[1], (AddressRange{kBase + 50 * M, kBase + 110 * M})) << "the 40 MiB gap goes before the 42 MiB one";
}

TEST(DamonRanges, RegionBoundsFollowTheRunsTheRangesHold) {
  EXPECT_EQ(DamonMonitor::region_bounds(4 << 20, kRun), (std::pair<uint32_t, uint32_t>{10, 20})) << "DAMON's minimum";
  EXPECT_EQ(DamonMonitor::region_bounds(uintptr_t{64} << 20, kRun), (std::pair<uint32_t, uint32_t>{32, 64}));
  EXPECT_EQ(DamonMonitor::region_bounds(uintptr_t{64} << 30, kRun), (std::pair<uint32_t, uint32_t>{500, 1000}))
      << "capped: DAMON's cost grows with regions";
}

std::optional<long long> nr_kdamonds() {
  // Read under tieralloc's lock, so no other tieralloc process is half-way through a probe.
  os::FileLock lock{"/run/tieralloc/damon.lock"};
  auto s = os::read_file("/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds", 64);
  return s ? os::parse_int(os::trim(*s)) : std::nullopt;
}

TEST(DamonOnThisKernel, StartsOnThisProcessOrSaysWhyAndLeavesSysfsAsItWas) {
  const size_t len = 8 << 20;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  const auto start = reinterpret_cast<uintptr_t>(p);
  const std::optional<long long> before = nr_kdamonds();
  {
    DamonMonitor m;
    if (!m.start({{start, start + len}}, DamonMonitor::Attrs{})) {
      EXPECT_FALSE(m.reason().empty());
      EXPECT_FALSE(m.running());
      printf("DAMON not usable here: %s\n", m.reason().c_str());
      EXPECT_EQ(nr_kdamonds(), before) << "a failed start left a kdamond configured";
      std::vector<DamonRegion> regions;
      EXPECT_FALSE(m.read(regions));
    } else {
      EXPECT_TRUE(m.running());
      EXPECT_GT(m.kdamond_pid(), 0);
      EXPECT_EQ(nr_kdamonds(), 1);
      std::vector<DamonRegion> regions;
      ASSERT_TRUE(m.read(regions)) << m.reason();
      ASSERT_FALSE(regions.empty());
      for (const DamonRegion& r : regions) {
        EXPECT_GE(r.start, start);
        EXPECT_LE(r.end, start + len);
        EXPECT_LE(r.nr_accesses, m.max_accesses());
      }
      DamonMonitor other;
      EXPECT_FALSE(other.start({{start, start + len}}, DamonMonitor::Attrs{})) << "a second taker while one runs";
      EXPECT_NE(other.reason().find("in use"), std::string::npos) << other.reason();
      m.stop();
      EXPECT_EQ(nr_kdamonds(), 0) << "the kdamond was not given back";
    }
  }
  munmap(p, len);
}

}  // namespace
}  // namespace tieralloc::tiering
