#include "tiering/policy.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tieralloc::tiering {
namespace {

constexpr int kBins = 128;

uint64_t scaled(uint64_t limit, double fraction) {
  return limit == kUnlimited ? kUnlimited : static_cast<uint64_t>(static_cast<double>(limit) * fraction);
}

}  // namespace

float threshold_for(std::span<const PageHeat> pages, uint64_t capacity_bytes, size_t page_bytes) {
  if (capacity_bytes == kUnlimited) return 0;
  float hottest = 0;
  uint64_t heated = 0;
  for (const PageHeat& p : pages)
    if (p.heat > 0) hottest = std::max(hottest, p.heat), ++heated;
  if (heated * page_bytes <= capacity_bytes) return 0;
  uint64_t bins[kBins] = {};
  for (const PageHeat& p : pages)
    if (p.heat > 0) ++bins[std::min(kBins - 1, static_cast<int>(p.heat / hottest * kBins))];
  // Walk down from the hottest bin while the pages so far still fit.
  uint64_t fitted = 0;
  int lowest = kBins;
  for (int b = kBins - 1; b >= 0; --b) {
    if ((fitted + bins[b]) * page_bytes > capacity_bytes) break;
    fitted += bins[b];
    lowest = b;
  }
  if (lowest == kBins) return hottest;  // even the hottest bin overflows: only the very top qualifies
  return hottest * static_cast<float>(lowest) / kBins;
}

Plan plan_moves(std::span<const PageHeat> pages, std::span<const TierBudget> tiers, const PolicyConfig& cfg,
                uint32_t period, uint64_t byte_budget) {
  Plan plan;
  const int n = static_cast<int>(tiers.size());
  if (n < 2) return plan;
  const uint64_t page = cfg.page_bytes;
  std::vector<uint64_t> used(static_cast<size_t>(n)), high(static_cast<size_t>(n));
  uint64_t cumulative = 0;
  for (int k = 0; k < n; ++k) {
    used[k] = tiers[k].used_bytes;
    high[k] = scaled(tiers[k].limit_bytes, cfg.high_watermark);
    if (k < n - 1) {
      cumulative = (cumulative == kUnlimited || high[k] == kUnlimited) ? kUnlimited : cumulative + high[k];
      plan.thresholds.push_back(threshold_for(pages, cumulative, page));
    }
  }
  auto target_of = [&](const PageHeat& p) {
    if (p.heat > 0)
      for (int k = 0; k < n - 1; ++k)
        if (p.heat >= plan.thresholds[k]) return k;
    return n - 1;
  };
  auto cooling = [&](const PageHeat& p) {
    return p.moved_period != PageHeat::kNever && period - p.moved_period < cfg.cooldown_periods;
  };
  // Residents of each tier that may move, coldest first: the watermark sheds them from the front,
  // and promotions into a full tier exchange with them.
  std::vector<std::vector<const PageHeat*>> cold(static_cast<size_t>(n));
  std::vector<const PageHeat*> promote;
  for (const PageHeat& p : pages) {
    if (p.tier >= n) continue;
    int t = target_of(p);
    bool wants_up = t < p.tier && p.heat >= plan.thresholds[t] * static_cast<float>(1.0 + cfg.margin);
    if (cooling(p)) {
      if (wants_up) ++plan.cooling_pages;
      continue;
    }
    if (wants_up) promote.push_back(&p);
    else if (p.tier < n - 1) cold[p.tier].push_back(&p);
  }
  for (auto& c : cold) std::sort(c.begin(), c.end(), [](auto* a, auto* b) { return a->heat < b->heat; });
  std::sort(promote.begin(), promote.end(), [](auto* a, auto* b) { return a->heat > b->heat; });
  std::vector<size_t> next_cold(static_cast<size_t>(n), 0);

  auto spend = [&](uint64_t bytes) {
    if (byte_budget < bytes) return false;
    byte_budget -= bytes;
    return true;
  };
  auto move = [&](const PageHeat& p, int from, int to) {
    plan.moves.push_back(Move{p.page, static_cast<uint8_t>(from), static_cast<uint8_t>(to)});
    used[from] -= std::min(used[from], page);
    used[to] += page;
    (to < from ? plan.promoted_bytes : plan.demoted_bytes) += page;
  };

  // Watermarks: a tier above its high mark sheds its coldest pages to the next tier down, to the
  // low mark. Done fastest first, so what tier 0 sheds is counted before tier 1 decides.
  for (int k = 0; k < n - 1; ++k) {
    if (high[k] == kUnlimited || used[k] <= high[k]) continue;
    uint64_t low = scaled(tiers[k].limit_bytes, cfg.low_watermark);
    auto& c = cold[k];
    while (used[k] > low && next_cold[k] < c.size()) {
      if (!spend(page)) {
        plan.deferred_bytes += used[k] - low;
        break;
      }
      move(*c[next_cold[k]++], k, k + 1);
    }
  }
  // Promotions, hottest first, into the room below the high mark, or in exchange for the coldest
  // page of the destination when it is full.
  for (const PageHeat* p : promote) {
    int to = target_of(*p);
    bool room = high[to] == kUnlimited || used[to] + page <= high[to];
    const PageHeat* victim = nullptr;
    if (!room) {
      if (to >= n - 1 || next_cold[to] >= cold[to].size()) continue;
      victim = cold[to][next_cold[to]];
      if (victim->heat >= p->heat * static_cast<float>(1.0 - cfg.margin)) continue;
    }
    if (!spend(victim ? 2 * page : page)) {
      plan.deferred_bytes += page;
      continue;
    }
    if (victim) {
      ++next_cold[to];
      move(*victim, to, to + 1);
    }
    move(*p, p->tier, to);
  }
  return plan;
}

double site_credit(uintptr_t object, size_t object_bytes, uintptr_t run, size_t run_bytes, uintptr_t fault_addr,
                   float score) {
  uintptr_t lo = std::max(object, run), hi = std::min(object + object_bytes, run + run_bytes);
  if (hi <= lo) return -1;
  if (score <= 0 || fault_addr < lo || fault_addr >= hi) return 0;
  return static_cast<double>(score) * static_cast<double>(run_bytes) / static_cast<double>(hi - lo);
}

double site_share(uintptr_t object, size_t object_bytes, uintptr_t run, size_t run_bytes) {
  uintptr_t lo = std::max(object, run), hi = std::min(object + object_bytes, run + run_bytes);
  return hi > lo ? static_cast<double>(hi - lo) / static_cast<double>(run_bytes) : 0.0;
}

SiteHeat classify_site(SiteHeat now, double density, double baseline, double hits, double expected_hits,
                       const SiteRule& rule) {
  if (!(baseline > 0)) return now;
  const double r = density / baseline;
  const bool hot_evidence = hits >= rule.min_hits, cold_evidence = expected_hits >= rule.min_expected_hits;
  if (now == SiteHeat::kHot && r >= rule.hot_stay) return SiteHeat::kHot;
  if (now == SiteHeat::kCold && r <= rule.cold_stay) return SiteHeat::kCold;
  if (r >= rule.hot_enter && hot_evidence) return SiteHeat::kHot;
  if (r <= rule.cold_enter && cold_evidence) return SiteHeat::kCold;
  if (!hot_evidence && !cold_evidence) return now;
  return SiteHeat::kUnknown;
}

}  // namespace tieralloc::tiering
