// The tiering policy: given each tracked page's heat and tier and each tier's budget, decide which
// pages move where this period. Pure computation with no clock, no syscalls and no allocator state,
// so it is tested with scripted heat (tests/tiering/policy_test.cc) and run unchanged by the engine.
//
// Heat is compared against one threshold per tier boundary, chosen from a histogram of page heat so
// that the pages at or above threshold k fit in tiers 0..k (as Memtis does). A page is promoted only
// when clearly above its boundary and demoted only when clearly below (a relative margin), and never
// within a cool-down after its last move: together these keep a page at the boundary from bouncing.
// Moves spend a byte budget (the migration rate limit), hottest promotions first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace tieralloc::tiering {

constexpr uint64_t kUnlimited = UINT64_MAX;

struct PageHeat {
  uintptr_t page;          // page address
  float heat;              // decayed access score; 0 = never seen accessed
  uint8_t tier;            // where it is now
  uint32_t moved_period;   // period of its last move (kNever if none)
  static constexpr uint32_t kNever = UINT32_MAX;
};

struct TierBudget {
  uint64_t limit_bytes = kUnlimited;  // what the tier may hold (kUnlimited: no bound)
  uint64_t used_bytes = 0;            // what it holds now
};

struct PolicyConfig {
  size_t page_bytes = 4096;
  // Demote from a tier above high*limit down to low*limit; promotions fill up to high*limit.
  double high_watermark = 0.95;
  double low_watermark = 0.90;
  // A page is promoted only above threshold*(1+margin) and demoted only below threshold*(1-margin).
  double margin = 0.25;
  uint32_t cooldown_periods = 10;
};

struct Move {
  uintptr_t page;
  uint8_t from, to;
};

struct Plan {
  std::vector<Move> moves;
  std::vector<float> thresholds;  // per boundary k (between tier k and k+1)
  uint64_t promoted_bytes = 0, demoted_bytes = 0;
  uint64_t deferred_bytes = 0;   // wanted to move but over the rate budget
  uint64_t cooling_pages = 0;    // wanted to move but inside their cool-down
};

// Heat at or above which pages fill at most `capacity_bytes` (a 128-bin histogram between 0 and
// the hottest page). Returns 0 when everything fits, +inf when nothing heated fits.
float threshold_for(std::span<const PageHeat> pages, uint64_t capacity_bytes, size_t page_bytes);

Plan plan_moves(std::span<const PageHeat> pages, std::span<const TierBudget> tiers, const PolicyConfig& cfg,
                uint32_t period, uint64_t byte_budget);

// Allocation-site heat (alloc/sites.h). A sampled object is observed whenever the sampler watches a
// run it lies in: the sampler reports whether the run was touched, how soon (`score`, 0 when
// untouched) and which byte the first touch hit. The object is credited only when that byte is its
// own, divided by the share of the run the object covers. Over many observations this estimates
// the object's access density (first touches per byte) whatever its neighbours are: a cold object
// beside hot ones earns nothing from their touches, and a small object is not outweighed by a large
// one of equal density. Returns -1 when the object does not overlap the run.
double site_credit(uintptr_t object, size_t object_bytes, uintptr_t run, size_t run_bytes, uintptr_t fault_addr,
                   float score);

// Same values as alloc::SiteClass.
enum class SiteHeat : uint8_t { kUnknown = 0, kHot = 1, kCold = 2 };

// The share of a run an object covers (0 when it does not overlap it): a first touch landing at
// random in a run of average density hits the object with this probability.
double site_share(uintptr_t object, size_t object_bytes, uintptr_t run, size_t run_bytes);

// A site is hot when its sampled bytes are `hot_enter` times denser in first touches than the
// average resident byte (`baseline`), cold at `cold_enter` times or less; once classed it keeps its
// class until it crosses the wider `hot_stay` / `cold_stay` bounds (hysteresis). A class is taken
// only on enough evidence: hot on at least `min_hits` first touches of the site's objects, cold
// only when a site of average density would have earned `min_expected_hits` or more meanwhile
// (`expected_hits`) -- a small object is first-touched rarely even when warm, and no hit in a few
// dozen observations says nothing. On thin evidence a site keeps whatever class it has.
struct SiteRule {
  double min_hits = 3, min_expected_hits = 6;
  double hot_enter = 1.5, hot_stay = 1.2;
  double cold_enter = 0.5, cold_stay = 0.67;
};
SiteHeat classify_site(SiteHeat now, double density, double baseline, double hits, double expected_hits,
                       const SiteRule& rule = {});

}  // namespace tieralloc::tiering
