// The policy with scripted heat: thresholds under a budget, watermarks, hysteresis (margin and
// cool-down), the rate limit, and three tiers.
#include "tiering/policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

namespace tieralloc::tiering {
namespace {

constexpr size_t kPage = 4096;

std::vector<PageHeat> pages(size_t n, uint8_t tier, float heat, uintptr_t base = 0x100000) {
  std::vector<PageHeat> v;
  for (size_t i = 0; i < n; ++i) v.push_back(PageHeat{base + i * kPage, heat, tier, PageHeat::kNever});
  return v;
}

std::map<uintptr_t, int> destinations(const Plan& p) {
  std::map<uintptr_t, int> m;
  for (const Move& mv : p.moves) m[mv.page] = mv.to;
  return m;
}

TEST(Threshold, EverythingHeatedFitsGivesZero) {
  auto v = pages(10, 1, 5.0f);
  EXPECT_EQ(threshold_for(v, 10 * kPage, kPage), 0.0f);
  EXPECT_EQ(threshold_for(v, kUnlimited, kPage), 0.0f);
}

TEST(Threshold, HotSetThatFitsTheBudgetIsAboveIt) {
  // 100 pages at heat 10, 900 at heat 1: a budget of 150 pages puts the threshold between them.
  auto v = pages(100, 1, 10.0f);
  auto cold = pages(900, 1, 1.0f, 0x10000000);
  v.insert(v.end(), cold.begin(), cold.end());
  float t = threshold_for(v, 150 * kPage, kPage);
  EXPECT_GT(t, 1.0f);
  EXPECT_LE(t, 10.0f);
  size_t above = std::count_if(v.begin(), v.end(), [&](const PageHeat& p) { return p.heat >= t; });
  EXPECT_EQ(above, 100u);
}

TEST(Plan, PromotesHotPagesIntoRoomUnderTheHighWatermark) {
  auto v = pages(50, 1, 8.0f);
  auto cold = pages(500, 1, 0.5f, 0x10000000);
  v.insert(v.end(), cold.begin(), cold.end());
  TierBudget tiers[2] = {{100 * kPage, 10 * kPage}, {kUnlimited, 550 * kPage}};
  Plan p = plan_moves(v, tiers, PolicyConfig{}, 100, kUnlimited);
  auto d = destinations(p);
  EXPECT_EQ(p.promoted_bytes, 50 * kPage);
  EXPECT_EQ(p.demoted_bytes, 0u);
  for (size_t i = 0; i < 50; ++i) EXPECT_EQ(d.at(v[i].page), 0);
}

TEST(Plan, ExchangesColdResidentsForHotNewcomersWhenFull) {
  // Tier 0 holds 100 cold pages at its limit; 40 hot pages sit in tier 1.
  auto fast = pages(100, 0, 0.1f);
  auto hot = pages(40, 1, 9.0f, 0x20000000);
  auto v = fast;
  v.insert(v.end(), hot.begin(), hot.end());
  TierBudget tiers[2] = {{100 * kPage, 100 * kPage}, {kUnlimited, 40 * kPage}};
  Plan p = plan_moves(v, tiers, PolicyConfig{}, 100, kUnlimited);
  auto d = destinations(p);
  for (const auto& h : hot) EXPECT_EQ(d.at(h.page), 0);
  EXPECT_EQ(p.promoted_bytes, 40 * kPage);
  // Tier 0 ends at or below its high watermark.
  uint64_t fast_after = 100 * kPage - p.demoted_bytes + p.promoted_bytes;
  EXPECT_LE(fast_after, static_cast<uint64_t>(100 * kPage * 0.95));
}

TEST(Plan, WatermarkDemotesColdestDownToTheLowMark) {
  auto v = pages(100, 0, 1.0f);
  for (size_t i = 0; i < 100; ++i) v[i].heat = static_cast<float>(i);  // page i has heat i
  TierBudget tiers[2] = {{100 * kPage, 100 * kPage}, {kUnlimited, 0}};
  Plan p = plan_moves(v, tiers, PolicyConfig{}, 100, kUnlimited);
  EXPECT_EQ(p.demoted_bytes, 10 * kPage);  // 100% -> 90%
  auto d = destinations(p);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(d.at(v[i].page), 1) << i;  // the coldest ten
  for (size_t i = 10; i < 100; ++i) EXPECT_EQ(d.count(v[i].page), 0u) << i;
}

TEST(Plan, NoMovesWhenEverythingIsWhereItBelongs) {
  auto v = pages(20, 0, 9.0f);
  auto cold = pages(200, 1, 0.2f, 0x20000000);
  v.insert(v.end(), cold.begin(), cold.end());
  TierBudget tiers[2] = {{50 * kPage, 20 * kPage}, {kUnlimited, 200 * kPage}};
  Plan p = plan_moves(v, tiers, PolicyConfig{}, 100, kUnlimited);
  EXPECT_TRUE(p.moves.empty());
}

TEST(Plan, CoolDownHoldsARecentlyMovedPage) {
  auto v = pages(10, 1, 9.0f);
  v[0].moved_period = 95;  // moved 5 periods ago; cool-down is 10
  v[1].moved_period = 80;  // long enough ago
  TierBudget tiers[2] = {{100 * kPage, 0}, {kUnlimited, 10 * kPage}};
  Plan p = plan_moves(v, tiers, PolicyConfig{}, 100, kUnlimited);
  auto d = destinations(p);
  EXPECT_EQ(d.count(v[0].page), 0u);
  EXPECT_EQ(d.at(v[1].page), 0);
  EXPECT_EQ(p.cooling_pages, 1u);
}

TEST(Plan, MarginKeepsBoundaryPagesFromBouncing) {
  // Two pages at nearly equal heat on either side of a full one-page tier: no exchange.
  std::vector<PageHeat> v = {{0x1000, 5.0f, 0, PageHeat::kNever}, {0x2000, 5.2f, 1, PageHeat::kNever}};
  TierBudget tiers[2] = {{kPage, kPage}, {kUnlimited, kPage}};
  PolicyConfig cfg;
  cfg.high_watermark = cfg.low_watermark = 1.0;
  Plan p = plan_moves(v, tiers, cfg, 100, kUnlimited);
  EXPECT_TRUE(p.moves.empty());
  // A clearly hotter newcomer does displace it.
  v[1].heat = 50.0f;
  p = plan_moves(v, tiers, cfg, 100, kUnlimited);
  auto d = destinations(p);
  EXPECT_EQ(d.at(0x2000), 0);
  EXPECT_EQ(d.at(0x1000), 1);
}

TEST(Plan, RateLimitCapsBytesAndPrefersTheHottest) {
  auto v = pages(100, 1, 1.0f);
  for (size_t i = 0; i < 100; ++i) v[i].heat = 1.0f + static_cast<float>(i);
  TierBudget tiers[2] = {{1000 * kPage, 0}, {kUnlimited, 100 * kPage}};
  Plan p = plan_moves(v, tiers, PolicyConfig{}, 100, 10 * kPage);
  EXPECT_EQ(p.promoted_bytes, 10 * kPage);
  EXPECT_GT(p.deferred_bytes, 0u);
  auto d = destinations(p);
  for (size_t i = 90; i < 100; ++i) EXPECT_EQ(d.at(v[i].page), 0) << i;
}

TEST(Plan, ThreeTiersPromoteAndDemoteAcrossBothBoundaries) {
  // Tier 0: 10 pages, tier 1: 30 pages, tier 2: unlimited. Heat decides where 60 pages belong.
  std::vector<PageHeat> v;
  for (size_t i = 0; i < 60; ++i) {
    float heat = i < 9 ? 100.0f : i < 36 ? 10.0f : 0.5f;  // 9 hottest, 27 warm, 24 cold
    uint8_t tier = static_cast<uint8_t>(2 - i % 3);       // scattered over all tiers
    v.push_back(PageHeat{0x100000 + i * kPage, heat, tier, PageHeat::kNever});
  }
  // Applied period after period (past the cool-down each time), the plan settles: then nothing
  // moves any more, every tier is within its limit, and hot and warm pages sit where their heat says.
  PolicyConfig cfg;
  uint32_t period = 100;
  size_t rounds = 0;
  for (; rounds < 8; ++rounds, period += cfg.cooldown_periods) {
    TierBudget tiers[3] = {{10 * kPage, 0}, {30 * kPage, 0}, {kUnlimited, 0}};
    for (const auto& p : v) tiers[p.tier].used_bytes += kPage;
    Plan plan = plan_moves(v, tiers, cfg, period, kUnlimited);
    ASSERT_EQ(plan.thresholds.size(), 2u);
    if (plan.moves.empty()) break;
    for (const Move& m : plan.moves)
      for (auto& p : v)
        if (p.page == m.page) p.tier = m.to, p.moved_period = period;
  }
  EXPECT_LT(rounds, 8u) << "the plan never settled";
  uint64_t count[3] = {};
  for (const auto& p : v) ++count[p.tier];
  EXPECT_LE(count[0], 10u);
  EXPECT_LE(count[1], 30u);
  for (size_t i = 0; i < 9; ++i) EXPECT_EQ(v[i].tier, 0) << i;
  for (size_t i = 9; i < 36; ++i) EXPECT_EQ(v[i].tier, 1) << i;
  // Cold pages leave the fast tier; they need not leave tier 1 while it has room.
  for (size_t i = 36; i < 60; ++i) EXPECT_GE(v[i].tier, 1) << i;
}

// Allocation sites: the credit of one observation, and classification against the baseline.
constexpr uintptr_t kRun = 0x40000000;
constexpr size_t kRunBytes = 65536;

TEST(SiteCredit, OnlyTheObjectTheFirstTouchHitEarns) {
  // A 1 KiB object at offset 4 KiB of the run: a touch inside earns score / (its share of the run).
  EXPECT_DOUBLE_EQ(site_credit(kRun + 4096, 1024, kRun, kRunBytes, kRun + 4096 + 10, 3.0f), 3.0 * 64);
  // The run was touched, but at a neighbour: nothing, however hot the run.
  EXPECT_EQ(site_credit(kRun + 4096, 1024, kRun, kRunBytes, kRun + 4096 + 1024, 3.0f), 0.0);
  EXPECT_EQ(site_credit(kRun + 4096, 1024, kRun, kRunBytes, kRun + 4095, 3.0f), 0.0);
  // Untouched run: an observation worth nothing.
  EXPECT_EQ(site_credit(kRun + 4096, 1024, kRun, kRunBytes, 0, 0.0f), 0.0);
  // Not in this run: no observation at all.
  EXPECT_LT(site_credit(kRun + kRunBytes, 1024, kRun, kRunBytes, kRun + kRunBytes, 3.0f), 0.0);
}

TEST(SiteCredit, LargeObjectsAreCreditedPerRunTheyCover) {
  // A 1 MiB object covers whole runs: a touch anywhere in one is its own, at the run's score.
  EXPECT_DOUBLE_EQ(site_credit(kRun - 4 * kRunBytes, 1 << 20, kRun, kRunBytes, kRun + 5, 2.0f), 2.0);
  // Half a run covered (the object ends mid-run): twice the score for a touch inside.
  EXPECT_DOUBLE_EQ(site_credit(kRun - kRunBytes / 2, kRunBytes, kRun, kRunBytes, kRun + 1, 2.0f), 4.0);
  EXPECT_EQ(site_credit(kRun - kRunBytes / 2, kRunBytes, kRun, kRunBytes, kRun + kRunBytes / 2, 2.0f), 0.0);
}

TEST(SiteCredit, ShareOfTheRun) {
  EXPECT_DOUBLE_EQ(site_share(kRun + 4096, 1024, kRun, kRunBytes), 1.0 / 64);
  EXPECT_DOUBLE_EQ(site_share(kRun - 4 * kRunBytes, 1 << 20, kRun, kRunBytes), 1.0);
  EXPECT_DOUBLE_EQ(site_share(kRun - kRunBytes / 2, kRunBytes, kRun, kRunBytes), 0.5);
  EXPECT_EQ(site_share(kRun + kRunBytes, 1024, kRun, kRunBytes), 0.0);
}

// Plenty of evidence either way: 100 hits, 100 expected.
constexpr double kHits = 100, kExpected = 100;

TEST(SiteClass, ThresholdsAgainstTheBaseline) {
  SiteRule r;
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 1.5, 1.0, kHits, kExpected, r), SiteHeat::kHot);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 1.4, 1.0, kHits, kExpected, r), SiteHeat::kUnknown);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 0.5, 1.0, kHits, kExpected, r), SiteHeat::kCold);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 0.6, 1.0, kHits, kExpected, r), SiteHeat::kUnknown);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 0.0, 1.0, 0, kExpected, r), SiteHeat::kCold);
  // Relative: the same density is hot beside colder memory and cold beside hotter.
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 10, 5, kHits, kExpected, r), SiteHeat::kHot);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 10, 40, kHits, kExpected, r), SiteHeat::kCold);
}

TEST(SiteClass, HysteresisKeepsAClassUntilTheWiderBound) {
  SiteRule r;
  EXPECT_EQ(classify_site(SiteHeat::kHot, 1.3, 1.0, kHits, kExpected, r), SiteHeat::kHot);       // above hot_stay
  EXPECT_EQ(classify_site(SiteHeat::kHot, 1.1, 1.0, kHits, kExpected, r), SiteHeat::kUnknown);   // below it
  EXPECT_EQ(classify_site(SiteHeat::kCold, 0.6, 1.0, kHits, kExpected, r), SiteHeat::kCold);     // below cold_stay
  EXPECT_EQ(classify_site(SiteHeat::kCold, 0.8, 1.0, kHits, kExpected, r), SiteHeat::kUnknown);  // above it
  // A swing across the whole band flips the class directly.
  EXPECT_EQ(classify_site(SiteHeat::kHot, 0.2, 1.0, kHits, kExpected, r), SiteHeat::kCold);
  EXPECT_EQ(classify_site(SiteHeat::kCold, 3.0, 1.0, kHits, kExpected, r), SiteHeat::kHot);
}

TEST(SiteClass, ThinEvidenceChangesNothing) {
  SiteRule r;
  // Hot takes a few real hits: one lucky first touch of a small object is not a hot site.
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 10, 1.0, r.min_hits - 1, kExpected, r), SiteHeat::kUnknown);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 10, 1.0, r.min_hits, kExpected, r), SiteHeat::kHot);
  // Cold takes enough watching that an average site would have been hit several times: no hit in
  // a few observations of small objects says nothing (a hot site with unlucky samples looks so).
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 0, 1.0, 0, r.min_expected_hits - 0.5, r), SiteHeat::kUnknown);
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 0, 1.0, 0, r.min_expected_hits, r), SiteHeat::kCold);
  // Without evidence either way a class stays, whatever the noisy ratio says.
  EXPECT_EQ(classify_site(SiteHeat::kHot, 0, 1.0, 0, 1, r), SiteHeat::kHot);
  EXPECT_EQ(classify_site(SiteHeat::kCold, 50, 1.0, 1, 1, r), SiteHeat::kCold);
  // No baseline (nothing sampled at random was ever touched): nothing to compare with.
  EXPECT_EQ(classify_site(SiteHeat::kUnknown, 0, 0, kHits, kExpected, r), SiteHeat::kUnknown);
  EXPECT_EQ(classify_site(SiteHeat::kCold, 0, 0, kHits, kExpected, r), SiteHeat::kCold);
}

}  // namespace
}  // namespace tieralloc::tiering
