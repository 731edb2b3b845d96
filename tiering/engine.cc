#include "tiering/engine.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <unordered_map>
#include <vector>

#include "alloc/heap.h"
#include "alloc/pagemap.h"
#include "alloc/process_topology.h"
#include "alloc/sites.h"
#include "os/fs.h"
#include "os/memory.h"
#include "tiering/damon.h"
#include "tiering/policy.h"
#include "tiering/sampler.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::tiering {
namespace {

using alloc::heap_tier_count;
using alloc::page_map;

constexpr uint32_t kPolicyEvery = 4;  // periods between policy rounds

uint64_t now_ns(clockid_t clock = CLOCK_MONOTONIC) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

struct RunRecord {
  float heat = 0;
  uint32_t samples = 0;
  uint32_t moved = PageHeat::kNever;
};

// What the engine learned of one allocation site (alloc/sites.h), by its slot: first-touch credit and
// observations, both decayed each policy round so a site's class follows its current behaviour.
struct SiteRecord {
  double credit = 0, observations = 0;
  double hits = 0;           // observations in which the first touch hit the object
  double expected_hits = 0;  // hits an object of average density would have had
};
constexpr double kSiteDecay = 0.98;  // per policy round: about 10 s of memory at 50 ms periods
constexpr size_t kMaxRunsPerSample = 2;  // a large object is observed through its first 4 MiB

struct Pin {
  uintptr_t start, end;
};

// Hint pins outlive the engine (hints work under TIERALLOC_POLICY=static too).
std::mutex g_pin_lock;
std::vector<Pin>* g_pins = nullptr;

// A run holding any pinned page stays where it is: moving it would move the pinned page too.
bool pinned(uintptr_t run) {
  if (!g_pins) return false;
  for (const Pin& p : *g_pins)
    if (p.start < run + kRunBytes && run < p.end) return true;
  return false;
}

enum class Source { kNone, kSampler, kDamon };

struct Engine {
  EngineConfig cfg;
  Source source = Source::kNone;
  std::atomic<bool> stop{false};
  bool running = false;
  bool forked_child = false;
  pthread_t thread{};
  std::mutex window_lock;  // held while runs are armed and while pages move; fork waits on it
  Sampler sampler;
  DamonMonitor damon;
  uint64_t damon_next_read_ns = 0;
  std::atomic<uint64_t> damon_reads{0}, kdamond_cpu_ns{0};
  std::atomic<size_t> damon_regions{0};
  std::string damon_error;  // the last read's failure, for the stats (engine thread only)
  mutable std::mutex damon_error_lock;
  std::unordered_map<uintptr_t, RunRecord> heat;  // by run address
  std::mt19937_64 rng{0x7469657261ull};
  uint32_t period = 0;
  std::atomic<double> runs_per_period{0};  // runs sampled per period, averaged (periods skipped count 0)
  double sample_credit_ns = 0;             // the CPU budget not yet spent (a token bucket)
  std::atomic<double> window_us{0};  // adapted so that a useful share of sampled runs is touched
  uint64_t tokens = 0, refilled_ns = 0;
  bool kernel_promotes = false;
  bool huge_pages = false;  // the heap is advised to use transparent huge pages (cheap sampling)

  // Allocation sites: the samples (refreshed each policy round), their runs sorted for lookup by
  // the sampler's results, and what each site earned.
  std::vector<alloc::SiteSample> samples;
  std::vector<std::pair<uintptr_t, uint32_t>> sample_runs;  // (run, index in samples)
  std::vector<uintptr_t> target_runs;  // runs of samples whose sites still lack evidence
  std::vector<SiteRecord> sites;
  double base_credit = 0, base_observations = 0, base_touched = 0;
  SiteRule site_rule;
  std::atomic<uint32_t> sites_hot{0}, sites_cold{0};
  std::atomic<uint64_t> site_observations{0};

  // Figures for the stats document.
  std::atomic<uint64_t> periods{0}, sampled_runs{0}, touched_runs{0};
  std::atomic<uint64_t> promoted_bytes{0}, demoted_bytes{0}, failed_pages{0}, deferred_bytes{0}, cooling_runs{0};
  std::atomic<uint64_t> sampler_cpu_ns{0}, policy_cpu_ns{0}, started_ns{0};
  std::atomic<float> hot_threshold{0};
  std::atomic<size_t> tracked_runs{0};
  std::atomic<double> sampler_cpu_percent{0};
};

Engine* g_engine = nullptr;
const char* g_off_reason = "off: not started";

// Spans of up to 128 MiB (64 runs), at random places over the mapped ranges, each with at least
// one resident page (mincore): sampling untouched address space would only find it cold again.
// Spans are long because what arming costs is mostly the TLB shootdown, one per mprotect whatever
// its length: on this VM 30 us for one run with the application running on the other CPU, against
// 4.5 us with it idle.
constexpr size_t kSpanRuns = 64;

// Whether [lo, hi) meets any of the n spans: a run is armed by one span at most.
bool overlaps_spans(const Sampler::Span* spans, size_t n, uintptr_t lo, uintptr_t hi) {
  for (size_t k = 0; k < n; ++k)
    if (lo < spans[k].addr + spans[k].runs * kRunBytes && spans[k].addr < hi) return true;
  return false;
}

size_t choose_spans(Engine& e, Sampler::Span* out, size_t max_spans, size_t want_runs) {
  static alloc::MappedRange ranges[4096];
  static unsigned char resident[kSpanRuns * kRunPages];
  size_t nranges = std::min<size_t>(alloc::heap_mapped_ranges(ranges, 4096), 4096);
  std::vector<uint64_t> cumulative;
  uint64_t total = 0;
  for (size_t i = 0; i < nranges; ++i) {
    uintptr_t first = (ranges[i].addr + kRunBytes - 1) & ~(kRunBytes - 1);
    uintptr_t end = (ranges[i].addr + ranges[i].len) & ~(kRunBytes - 1);
    total += end > first ? (end - first) / kRunBytes : 0;
    cumulative.push_back(total);
  }
  if (!total) return 0;
  size_t n = 0, runs = 0;
  for (size_t attempt = 0; attempt < 4 * max_spans && n < max_spans && runs < want_runs; ++attempt) {
    uint64_t pick = e.rng() % total;
    size_t r = static_cast<size_t>(std::upper_bound(cumulative.begin(), cumulative.end(), pick) - cumulative.begin());
    uint64_t before = r ? cumulative[r - 1] : 0;
    uintptr_t first = (ranges[r].addr + kRunBytes - 1) & ~(kRunBytes - 1);
    uintptr_t end = (ranges[r].addr + ranges[r].len) & ~(kRunBytes - 1);
    // As many runs as still wanted from the picked one on, moved back to fit in the range.
    uintptr_t run = first + (pick - before) * kRunBytes;
    const uintptr_t len = std::min(kSpanRuns, want_runs - runs) * kRunBytes;
    uintptr_t lo = end - first > len ? std::min(run, end - len) : first;
    uintptr_t hi = std::min(end, lo + len);
    if (overlaps_spans(out, n, lo, hi) || hi <= lo || mincore(reinterpret_cast<void*>(lo), hi - lo, resident) != 0) continue;
    bool any = false;
    for (size_t i = 0; i < (hi - lo) / 4096; ++i) any |= resident[i] & 1;
    if (!any) continue;
    out[n++] = Sampler::Span{lo, (hi - lo) / kRunBytes};
    runs += (hi - lo) / kRunBytes;
  }
  return n;
}

// A run's heat is the weighted mean of its scores over the samples that covered it, newest first;
// it decays per observation, not per second. A decayed sum per second would compare runs by when
// the random sampler last visited them rather than by how hot they are: with thousands of runs a
// visit comes every few seconds, longer than any useful half-life.
void observe(RunRecord& r, float score, float weight) {
  r.heat = r.samples++ ? (1 - weight) * r.heat + weight * score : score;
}

// Credits the sampled objects lying in an observed run (policy.h's site_credit).
void credit_sites(Engine& e, const RunResult& r, float score) {
  auto it = std::lower_bound(e.sample_runs.begin(), e.sample_runs.end(), std::make_pair(r.run, uint32_t{0}));
  for (; it != e.sample_runs.end() && it->first == r.run; ++it) {
    const alloc::SiteSample& s = e.samples[it->second];
    double c = site_credit(s.addr, s.size, r.run, kRunBytes, r.fault_addr, score);
    if (c < 0) continue;
    SiteRecord& rec = e.sites[s.slot];
    rec.credit += c, rec.observations += 1, rec.hits += c > 0;
    // An object of average density is first-touched as often as a random run is touched, times
    // the share of the run it covers.
    if (e.base_observations > 0)
      rec.expected_hits += e.base_touched / e.base_observations * site_share(s.addr, s.size, r.run, kRunBytes);
    e.site_observations.fetch_add(1, std::memory_order_relaxed);
  }
}

// One policy round for allocation sites: each site's class from its density against the average
// sampled byte's, the lookup turned on once any site has a class, then the newest samples indexed
// by run for the next windows.
void classify_sites(Engine& e) {
  const double baseline = e.base_observations > 0 ? e.base_credit / e.base_observations : 0;
  uint32_t hot = 0, cold = 0;
  for (uint32_t slot = 0; slot < alloc::kSiteSlots; ++slot) {
    if (!alloc::site_at(slot)) continue;
    SiteRecord& rec = e.sites[slot];
    auto now = static_cast<SiteHeat>(alloc::site_class(slot));
    SiteHeat next = classify_site(now, rec.observations > 0 ? rec.credit / rec.observations : 0, baseline, rec.hits,
                                  rec.expected_hits, e.site_rule);
    if (next != now) alloc::site_set_class(slot, static_cast<alloc::SiteClass>(next));
    hot += next == SiteHeat::kHot;
    cold += next == SiteHeat::kCold;
    rec.credit *= kSiteDecay, rec.observations *= kSiteDecay, rec.hits *= kSiteDecay, rec.expected_hits *= kSiteDecay;
  }
  e.base_credit *= kSiteDecay, e.base_observations *= kSiteDecay, e.base_touched *= kSiteDecay;
  e.sites_hot.store(hot, std::memory_order_relaxed);
  e.sites_cold.store(cold, std::memory_order_relaxed);
  alloc::sites_set_steering(hot + cold > 0);

  e.samples.resize(alloc::kSiteSamples);
  e.samples.resize(alloc::site_samples(e.samples.data(), e.samples.size()));
  e.sample_runs.clear();
  e.target_runs.clear();
  for (uint32_t i = 0; i < e.samples.size(); ++i) {
    const alloc::SiteSample& s = e.samples[i];
    // Sampling is spent on a site's runs only while it lacks evidence: a site observed often enough
    // by the random runs costs the run heat nothing.
    const SiteRecord& rec = e.sites[s.slot];
    const bool target = rec.hits < 2 * e.site_rule.min_hits && rec.expected_hits < 2 * e.site_rule.min_expected_hits;
    uintptr_t end = s.addr + std::max<uint32_t>(s.size, 1);
    uintptr_t run = s.addr & ~(kRunBytes - 1);
    for (size_t k = 0; k < kMaxRunsPerSample && run < end; ++k, run += kRunBytes) {
      e.sample_runs.emplace_back(run, i);
      if (target) e.target_runs.push_back(run);
    }
  }
  std::sort(e.sample_runs.begin(), e.sample_runs.end());
}

// Every page of the run is heap: runs are what the engine moves, and a heap range need not start
// or end on a run boundary.
bool run_managed(uintptr_t run) {
  for (size_t p = 0; p < kRunPages; ++p)
    if (!page_map().get(run + p * 4096).managed()) return false;
  return true;
}

// Adds up to `want` single-run spans over target_runs (not overlapping the first
// n spans, wholly in memory tieralloc maps); their runs go to `targeted`. Returns how many.
size_t target_sample_runs(Engine& e, Sampler::Span* spans, size_t n, size_t want, uintptr_t* targeted) {
  size_t added = 0;
  for (size_t attempt = 0; attempt < 4 * want && added < want; ++attempt) {
    uintptr_t run = e.target_runs[e.rng() % e.target_runs.size()];
    if (overlaps_spans(spans, n + added, run, run + kRunBytes) || !run_managed(run)) continue;
    spans[n + added] = Sampler::Span{run, 1};
    targeted[added++] = run;
  }
  return added;
}

// One sampling window: arm, wait, disarm, fold the touches into page heat. A touch soon after
// arming means a hot page: the score grows with log2(window / time to first touch).
//
// The CPU budget is kept as a token bucket: a window is opened only while the budget has credit,
// and each window spends what it cost. A window's cost is mostly per mprotect (the TLB shootdown:
// 30 to 100 us here while the application runs) and per fault, hardly per run, so a window arms a
// whole span of runs and the budget decides how often windows open, not how many runs they cover.
void sample(Engine& e) {
  const double period_ns = e.cfg.period_ms * 1e6, allowance = period_ns * e.cfg.sampler_cpu_percent / 100;
  e.sample_credit_ns = std::min(e.sample_credit_ns + allowance, 4 * allowance);
  auto average = [](std::atomic<double>& a, double v) { a.store(a.load(std::memory_order_relaxed) * 0.9 + v * 0.1); };
  if (e.sample_credit_ns <= 0) {
    average(e.sampler_cpu_percent, 0);
    average(e.runs_per_period, 0);
    return;
  }
  uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID), h0 = Sampler::handler_ns();
  static Sampler::Span spans[Sampler::kMaxSpans];
  static RunResult results[Sampler::kMaxRuns];
  const size_t want = kSpanRuns;
  // One run (its own span: one more mprotect) goes to a run holding samples of sites that still
  // lack evidence: random runs alone would visit a site's few samples too rarely to learn its heat
  // in seconds.
  size_t targets = e.target_runs.empty() ? 0 : 1;
  size_t n = choose_spans(e, spans, Sampler::kMaxSpans - targets, want > targets ? want - targets : 1);
  static uintptr_t targeted[Sampler::kMaxSpans];
  size_t ntargeted = target_sample_runs(e, spans, n, std::min(targets, Sampler::kMaxSpans - n), targeted);
  n += ntargeted;
  std::sort(targeted, targeted + ntargeted);
  size_t got = 0;
  double window_us = 0;  // as long as it really was: a sleep overshoots by tens of microseconds
  {
    std::lock_guard<std::mutex> g(e.window_lock);
    e.sampler.arm(spans, n);
    uint64_t opened = now_ns();
    struct timespec w = {0, static_cast<long>(e.window_us.load() * 1000)};
    while (nanosleep(&w, &w) != 0 && errno == EINTR) {
    }
    window_us = static_cast<double>(now_ns() - opened) / 1000;
    got = e.sampler.disarm(results);
  }
  uint64_t touched = 0;
  for (size_t i = 0; i < got; ++i) {
    uint32_t us = results[i].fault_us;
    float score = 0;
    if (us) {
      ++touched;
      score = 1.0f + static_cast<float>(std::clamp(std::log2(window_us / us), 0.0, 11.0));
    }
    observe(e.heat[results[i].run], score, static_cast<float>(e.cfg.observation_weight));
    credit_sites(e, results[i], score);
    // The baseline a site is compared with: the density of an average resident byte, from the
    // runs chosen at random only.
    if (!std::binary_search(targeted, targeted + ntargeted, results[i].run))
      e.base_credit += score, e.base_observations += 1, e.base_touched += us != 0;
  }
  // A window in which almost nothing is touched learns nothing; one in which almost everything is
  // cannot tell hot from warm and costs a fault per page. Aim between.
  if (got) {
    double share = static_cast<double>(touched) / static_cast<double>(got);
    double w = e.window_us.load();
    if (share < 0.02) w *= 1.25;
    else if (share > 0.25) w /= 1.25;
    e.window_us.store(std::clamp(w, 50.0, 20000.0));
  }
  e.sampled_runs.fetch_add(got, std::memory_order_relaxed);
  e.touched_runs.fetch_add(touched, std::memory_order_relaxed);

  // The sampler's cost: this thread's CPU for the window plus every fault handler it caused.
  uint64_t cost = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0 + (Sampler::handler_ns() - h0);
  e.sampler_cpu_ns.fetch_add(cost, std::memory_order_relaxed);
  e.sample_credit_ns -= static_cast<double>(cost);
  average(e.sampler_cpu_percent, 100.0 * static_cast<double>(cost) / period_ns);
  average(e.runs_per_period, static_cast<double>(got));
}

// CPU time of a thread of the machine (the kdamond) from /proc/PID/stat, in nanoseconds.
uint64_t task_cpu_ns(pid_t pid) {
  auto stat = os::read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat) return 0;
  size_t p = stat->rfind(')');  // the command name may hold spaces and parentheses
  if (p == std::string::npos) return 0;
  unsigned long long utime = 0, stime = 0;
  // After ") ": state, then fields 4..13, then utime (14) and stime (15).
  if (sscanf(stat->c_str() + p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return 0;
  return (utime + stime) * (1000000000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
}

// The heap's mapped ranges as DAMON is to watch them: merged across gaps of up to 64 MiB
// (unmapped address space costs DAMON a region, not a sample per page) into at most 32 ranges.
std::vector<AddressRange> damon_ranges() {
  static alloc::MappedRange ranges[4096];
  size_t n = std::min<size_t>(alloc::heap_mapped_ranges(ranges, 4096), 4096);
  std::vector<AddressRange> out;
  for (size_t i = 0; i < n; ++i) out.push_back(AddressRange{ranges[i].addr, ranges[i].addr + ranges[i].len});
  return coalesce_ranges(std::move(out), uintptr_t{64} << 20, 32);
}

constexpr double kDamonReadCpuPercent = 1;
constexpr float kDamonObservationWeight = 0.5f;

// One look at DAMON's regions: every run of the heap they cover is observed at once, scored by
// the mean number of the aggregation interval's samples that found its bytes accessed. Reads are
// spaced so that this thread's share of a core stays within the heat budget (reading costs three
// sysfs files per region), and never closer than one aggregation interval: DAMON has nothing new
// before.
// The kdamond's CPU time over the engine's wall time, in percent of one core.
double kdamond_cpu_percent(const Engine& e) {
  const double wall_s = static_cast<double>(now_ns() - e.started_ns.load()) / 1e9;
  return wall_s > 0 ? 100.0 * static_cast<double>(e.kdamond_cpu_ns.load()) / 1e9 / wall_s : 0.0;
}

void observe_damon(Engine& e) {
  const uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  std::vector<DamonRegion> regions;
  const uint64_t commits = e.damon.commits();
  bool ok = e.damon.set_ranges(damon_ranges()) && e.damon.read(regions);
  {
    std::lock_guard<std::mutex> g(e.damon_error_lock);
    e.damon_error = ok ? std::string() : e.damon.reason();  // the last read's, not any ever
  }
  uint64_t observed = 0, touched = 0;
  run_scores(regions, kRunBytes, [&](uintptr_t run, double accesses) {
    if (!run_managed(run)) return;  // a gap between heap ranges, a range's ragged end, a neighbour
    // A read is a measurement over a whole aggregation interval, not one first-touch time: it is
    // given more weight than a sampler's observation.
    observe(e.heat[run], static_cast<float>(accesses), kDamonObservationWeight);
    ++observed, touched += accesses > 0;
  });
  e.sampled_runs.fetch_add(observed, std::memory_order_relaxed);
  e.touched_runs.fetch_add(touched, std::memory_order_relaxed);
  e.damon_regions.store(regions.size(), std::memory_order_relaxed);
  e.damon_reads.fetch_add(1, std::memory_order_relaxed);
  if (e.damon.kdamond_pid() > 0) e.kdamond_cpu_ns.store(task_cpu_ns(e.damon.kdamond_pid()), std::memory_order_relaxed);
  const uint64_t cost = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
  e.sampler_cpu_ns.fetch_add(cost, std::memory_order_relaxed);
  const double spacing_ns = std::max(static_cast<double>(e.damon.attrs().aggr_us) * 1000,
                                     static_cast<double>(cost) * 100 / kDamonReadCpuPercent);
  e.damon_next_read_ns = now_ns() + static_cast<uint64_t>(spacing_ns);
  // Ranges new to DAMON (the heap grew) have no history yet: look again as soon as one
  // aggregation interval has measured them, whatever the budget says, as the heap grows rarely.
  if (e.damon.commits() != commits)
    e.damon_next_read_ns = std::min<uint64_t>(e.damon_next_read_ns, now_ns() + 2000ull * e.damon.attrs().aggr_us);
  e.runs_per_period.store(static_cast<double>(observed));
}

// One policy round: heat and tier of every tracked run, the plan, and the moves.
void migrate(Engine& e) {
  uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  int ntiers = heap_tier_count();
  std::vector<PageHeat> runs;
  runs.reserve(e.heat.size());
  {
    std::lock_guard<std::mutex> g(g_pin_lock);
    for (auto it = e.heat.begin(); it != e.heat.end();) {
      alloc::PageEntry pe = page_map().get(it->first);
      if (!pe.managed()) {
        it = e.heat.erase(it);  // released by jemalloc's owner: no longer ours to track
        continue;
      }
      // Address space jemalloc retains uncommitted holds nothing to move and is charged to no tier.
      // Offered to the policy it is the coldest resident of its tier: the victim of every exchange
      // and of every watermark round, whose demotion moves nothing while the promotion it made room
      // for pushes the fast tier past its budget.
      bool committed = false;
      page_map().for_each_run(it->first, kRunBytes, [&](alloc::PageEntry p, size_t) { committed |= p.committed; });
      if (committed && !pinned(it->first)) runs.push_back(PageHeat{it->first, it->second.heat, pe.tier, it->second.moved});
      ++it;
    }
  }
  e.tracked_runs.store(e.heat.size(), std::memory_order_relaxed);
  std::vector<TierBudget> budgets(static_cast<size_t>(ntiers));
  for (int t = 0; t < ntiers; ++t) {
    alloc::TierCounters c = alloc::heap_tier_counters(t);
    budgets[t].limit_bytes = c.limit_bytes == alloc::kNoLimit ? kUnlimited : c.limit_bytes;
    budgets[t].used_bytes = c.used_bytes;
  }
  uint64_t now = now_ns();
  if (e.refilled_ns) {
    double add = static_cast<double>(e.cfg.migrate_rate) * static_cast<double>(now - e.refilled_ns) / 1e9;
    e.tokens = std::min<uint64_t>(e.cfg.migrate_rate, e.tokens + static_cast<uint64_t>(add));
  }
  e.refilled_ns = now;

  PolicyConfig pcfg;
  pcfg.page_bytes = kRunBytes;
  // A run's first-touch times are noisy (the application's fault handling and scheduling shift
  // them by tens of microseconds): a wider margin than the policy's default keeps a hot run from
  // being exchanged for a lukewarm one that had a lucky sample. gups: with 0.25, 83-87% of
  // updates on the fast tier; with 0.4, 88-90%.
  pcfg.margin = 0.4;
  pcfg.cooldown_periods = 2 * kPolicyEvery * 5;  // two seconds at the default period
  Plan plan = plan_moves(runs, budgets, pcfg, e.period, e.tokens);
  if (!plan.thresholds.empty()) e.hot_threshold.store(plan.thresholds[0], std::memory_order_relaxed);
  e.deferred_bytes.fetch_add(plan.deferred_bytes, std::memory_order_relaxed);
  e.cooling_runs.fetch_add(plan.cooling_pages, std::memory_order_relaxed);
  e.policy_cpu_ns.fetch_add(now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0, std::memory_order_relaxed);

  // Moves grouped by destination, a batch of runs at a time; the window lock is taken per batch
  // so fork() never waits long. A run moves page by page; it counts as moved when any page did
  // (the rest were not resident: nothing to move).
  constexpr size_t kBatchRuns = 4;
  static uintptr_t pages[kBatchRuns * kRunPages];
  static int status[kBatchRuns * kRunPages];
  const Move* batch[kBatchRuns];
  for (int to = 0; to < ntiers; ++to) {
    size_t n = 0;
    auto flush = [&] {
      if (!n) return;
      for (size_t i = 0; i < n; ++i)
        for (size_t p = 0; p < kRunPages; ++p) pages[i * kRunPages + p] = batch[i]->page + p * 4096;
      std::lock_guard<std::mutex> g(e.window_lock);
      size_t moved = alloc::heap_migrate_pages(pages, n * kRunPages, to, status);
      e.tokens -= std::min<uint64_t>(e.tokens, moved * 4096);
      for (size_t i = 0; i < n; ++i) {
        size_t ok = 0, failed = 0;
        for (size_t p = 0; p < kRunPages; ++p) {
          int st = status[i * kRunPages + p];
          ok += st == 0;
          failed += st != 0 && st != -ENOENT;  // busy, pinned, target full: retried in a later round
        }
        (to < batch[i]->from ? e.promoted_bytes : e.demoted_bytes).fetch_add(ok * 4096, std::memory_order_relaxed);
        e.failed_pages.fetch_add(failed, std::memory_order_relaxed);
        if (ok) {
          auto it = e.heat.find(batch[i]->page);
          if (it != e.heat.end()) it->second.moved = e.period;
        }
      }
      n = 0;
    };
    for (const Move& m : plan.moves) {
      if (m.to != to) continue;
      if (m.to < m.from && e.kernel_promotes) continue;  // numa_balancing=2 promotes by itself
      batch[n++] = &m;
      if (n == kBatchRuns) flush();
    }
    flush();
  }
}

void* engine_main(void* arg) {
  Engine& e = *static_cast<Engine*>(arg);
  pthread_setname_np(pthread_self(), "tieralloc-tier");
  // Sampling windows last tens of microseconds; the default 50 us timer slack would double them.
  prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0);
  while (!e.stop.load(std::memory_order_relaxed)) {
    uint64_t t0 = now_ns();
    if (e.source == Source::kSampler) sample(e);
    if (e.source == Source::kDamon && now_ns() >= e.damon_next_read_ns) observe_damon(e);
    if (e.cfg.migrate && e.period % kPolicyEvery == 0) migrate(e);
    if (e.source == Source::kSampler && e.cfg.site_sample_bytes && e.period % kPolicyEvery == 0) classify_sites(e);
    ++e.period;
    e.periods.fetch_add(1, std::memory_order_relaxed);
    uint64_t spent = now_ns() - t0, period = uint64_t{e.cfg.period_ms} * 1000000;
    if (spent < period) {
      struct timespec ts = {static_cast<time_t>((period - spent) / 1000000000), static_cast<long>((period - spent) % 1000000000)};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      }
    }
  }
  return nullptr;
}

void release_damon_at_exit() {
  if (g_engine && g_engine->source == Source::kDamon) engine_stop();
}

void atfork_prepare() {
  if (g_engine && g_engine->running) g_engine->window_lock.lock();
}
void atfork_parent() {
  if (g_engine && g_engine->running) g_engine->window_lock.unlock();
}
void atfork_child() {
  if (!g_engine || !g_engine->running) return;
  // The engine's thread does not exist here; the lock held in prepare belongs to nobody.
  new (&g_engine->window_lock) std::mutex();
  g_engine->running = false;
  g_engine->forked_child = true;
  // No heat source here any more: allocations go straight to jemalloc again.
  alloc::sites_stop_in_forked_child();
}

}  // namespace

bool engine_start(const EngineConfig& cfg) {
  if (g_engine && g_engine->running) return true;
  // Without a second tier nothing can move; without migration or a heat source there is nothing
  // to decide. The stats say which.
  if (heap_tier_count() < 2) g_off_reason = "off: one tier";
  else if (!cfg.migrate) g_off_reason = "off: TIERALLOC_POLICY=static";
  else if (cfg.sampler_cpu_percent > 0 && !Sampler::install()) g_off_reason = "off: the fault handler could not be installed";
  else if (cfg.sampler_cpu_percent <= 0 && !cfg.damon)
    g_off_reason = "off: no heat source (TIERALLOC_DAMON=off; the sampler is opt-in: TIERALLOC_SAMPLER=on)";
  else g_off_reason = nullptr;
  if (g_off_reason) return false;
  Engine* e = g_engine ? g_engine : new Engine;
  // The sampler when asked for; otherwise DAMON where the kernel offers it.
  e->source = cfg.sampler_cpu_percent > 0 ? Source::kSampler : Source::kDamon;
  if (e->source == Source::kDamon) {
    static char why[512];
    if (alloc::process_topology().fsroot != "/")
      snprintf(why, sizeof why, "off: no heat source (DAMON: TIERALLOC_FSROOT stands in for /sys; the sampler is opt-in: TIERALLOC_SAMPLER=on)");
    else if (!e->damon.start(damon_ranges(), DamonMonitor::Attrs{}))
      snprintf(why, sizeof why, "off: no heat source (DAMON: %s; the sampler is opt-in: TIERALLOC_SAMPLER=on)", e->damon.reason().c_str());
    else
      why[0] = '\0';
    if (why[0]) {
      g_off_reason = why;
      if (e != g_engine) delete e;
      return false;
    }
  }
  e->cfg = cfg;
  e->window_us = cfg.window_us;
  e->stop = false;
  e->started_ns = now_ns();
  const numa::Topology& topo = alloc::process_topology();
  e->kernel_promotes = !topo.emulated && topo.kernel.numa_balancing >= 0 && (topo.kernel.numa_balancing & 2);
  if (cfg.site_sample_bytes && e->sites.empty()) e->sites.resize(alloc::kSiteSlots);
  // Huge pages make the sampler's mprotect cheap; DAMON has no use for them (its accessed-bit
  // samples would see a whole 2 MiB as one page), and they cost resident memory in sparse heaps.
  e->huge_pages = e->source == Source::kSampler && alloc::heap_use_huge_pages();
  // The engine's thread takes no asynchronous signals: they belong to the application's threads
  // (a program that sigwait()s in one thread must not see them delivered to ours).
  sigset_t all, old;
  sigfillset(&all);
  sigdelset(&all, SIGSEGV);
  sigdelset(&all, SIGBUS);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&e->thread, nullptr, engine_main, e);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    e->damon.stop();
    if (!g_engine) delete e;
    return false;
  }
  static bool atfork_registered = false;
  if (!atfork_registered) pthread_atfork(atfork_prepare, atfork_parent, atfork_child), atfork_registered = true;
  // The kdamond is the machine's, not the process's: given back at exit. (Killed, the process
  // leaves it configured but stopped; the next tieralloc process takes it over.)
  static bool atexit_registered = false;
  if (e->source == Source::kDamon && !atexit_registered) atexit(release_damon_at_exit), atexit_registered = true;
  e->running = true;
  g_engine = e;
  // Allocation sites learn from the sampler's first touches, which name the object touched; DAMON
  // reports regions, which do not.
  if (e->source == Source::kSampler) alloc::sites_start(cfg.site_sample_bytes);
  return true;
}

void engine_stop() {
  if (!g_engine || !g_engine->running) return;
  alloc::sites_stop();
  g_engine->stop = true;
  pthread_join(g_engine->thread, nullptr);
  g_engine->running = false;
  g_engine->damon.stop();
}

bool engine_running() { return g_engine && g_engine->running; }

int engine_hint(void* addr, size_t len, int hint) {
  if (!addr || !len || (hint != 0 && hint != TIERALLOC_HOT && hint != TIERALLOC_COLD)) return -EINVAL;
  uintptr_t start = reinterpret_cast<uintptr_t>(addr) & ~uintptr_t{4095};
  uintptr_t end = (reinterpret_cast<uintptr_t>(addr) + len + 4095) & ~uintptr_t{4095};
  if (end <= start) return -EINVAL;
  {
    std::lock_guard<std::mutex> g(g_pin_lock);
    if (!g_pins) g_pins = new std::vector<Pin>;
    // A new hint replaces older ones over the same pages.
    std::vector<Pin> kept;
    for (const Pin& p : *g_pins) {
      if (p.end <= start || p.start >= end) {
        kept.push_back(p);
        continue;
      }
      if (p.start < start) kept.push_back(Pin{p.start, start});
      if (p.end > end) kept.push_back(Pin{end, p.end});
    }
    if (hint) kept.push_back(Pin{start, end});
    g_pins->swap(kept);
  }
  if (!hint) return 0;
  int tier = hint == TIERALLOC_HOT ? 0 : heap_tier_count() - 1;
  return alloc::heap_move(reinterpret_cast<void*>(start), end - start, tier);
}

// Appends the "sites" member (allocation-site heat) to a stats object.
std::string with_sites(const char* object, const Engine* e) {
  alloc::SiteCounters c = alloc::site_counters();
  auto u = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  char buf[512];
  snprintf(buf, sizeof buf,
           ", \"sites\": {\"sample_bytes\": %llu, \"tracked\": %u, \"hot\": %u, \"cold\": %u, \"steering\": %s, "
           "\"sampled_allocations\": %llu, \"remembered_samples\": %llu, \"steered_allocations\": %llu, \"dropped_samples\": %llu, "
           "\"observations\": %llu}}",
           u(alloc::sites_sample_bytes()), static_cast<unsigned>(c.tracked), e ? e->sites_hot.load() : 0u,
           e ? e->sites_cold.load() : 0u, (alloc::site_mode() & alloc::kSiteSteer) ? "true" : "false", u(c.sampled),
           u(c.remembered), u(c.steered), u(c.dropped), e ? u(e->site_observations.load()) : 0ull);
  std::string out(object);
  out.pop_back();  // the object's closing brace
  return out + buf;
}

std::string engine_stats_json() {
  const numa::Topology& topo = alloc::process_topology();
  const Engine* e = g_engine;
  char buf[2048];
  if (!e) {
    snprintf(buf, sizeof buf,
             "{\"engine\": \"%s\", \"source\": \"none\", \"kernel\": {\"numa_balancing\": %d, \"demotion_enabled\": %s}}",
             g_off_reason, topo.kernel.numa_balancing, topo.kernel.demotion_enabled ? (*topo.kernel.demotion_enabled ? "true" : "false") : "null");
    return with_sites(buf, e);
  }
  double wall_s = static_cast<double>(now_ns() - e->started_ns.load()) / 1e9;
  auto u = [](const std::atomic<uint64_t>& a) { return static_cast<unsigned long long>(a.load(std::memory_order_relaxed)); };
  double cpu_total = static_cast<double>(e->sampler_cpu_ns.load() + e->policy_cpu_ns.load()) / 1e9;
  snprintf(buf, sizeof buf,
           "{\"engine\": \"%s\", \"source\": \"%s\", \"migration\": \"%s\", \"policy\": \"%s\", "
           "\"periods\": %llu, \"runs_per_period\": %.0f, \"sampled_runs\": %llu, \"touched_runs\": %llu, "
           "\"window_us\": %.0f, \"faults\": %llu, \"tracked_runs\": %zu, \"hot_threshold\": %.3f, "
           "\"sampler_cpu_percent\": %.3f, \"sampler_cpu_budget_percent\": %.2f, \"engine_cpu_percent\": %.3f, "
           "\"promoted_bytes\": %llu, \"demoted_bytes\": %llu, \"failed_pages\": %llu, \"deferred_bytes\": %llu, "
           "\"cooling_runs\": %llu, \"migrate_rate\": %llu, \"run_bytes\": %zu, \"huge_pages\": %s, "
           "\"kernel\": {\"numa_balancing\": %d, \"demotion_enabled\": %s, \"kernel_promotes\": %s}}",
           e->running ? "running" : e->forked_child ? "stopped in forked child" : "stopped",
           e->source == Source::kSampler ? "sampler" : e->source == Source::kDamon ? "damon" : "none",
           alloc::heap_emulated() ? "page map only (emulated tiers)" : "move_pages", e->cfg.migrate ? "auto" : "static",
           u(e->periods), e->runs_per_period.load(), u(e->sampled_runs), u(e->touched_runs),
           e->window_us.load(), static_cast<unsigned long long>(Sampler::faults()), e->tracked_runs.load(), e->hot_threshold.load(),
           e->sampler_cpu_percent.load(), e->cfg.sampler_cpu_percent, wall_s > 0 ? 100.0 * cpu_total / wall_s : 0.0,
           u(e->promoted_bytes), u(e->demoted_bytes), u(e->failed_pages), u(e->deferred_bytes), u(e->cooling_runs),
           static_cast<unsigned long long>(e->cfg.migrate_rate), static_cast<size_t>(kRunBytes),
           e->huge_pages ? "true" : "false", topo.kernel.numa_balancing,
           topo.kernel.demotion_enabled ? (*topo.kernel.demotion_enabled ? "true" : "false") : "null",
           e->kernel_promotes ? "true" : "false");
  std::string out = with_sites(buf, e);
  if (e->source == Source::kDamon) {
    std::string error;
    {
      std::lock_guard<std::mutex> g(e->damon_error_lock);
      error = e->damon_error;
    }
    const DamonMonitor::Attrs& a = e->damon.attrs();
    snprintf(buf, sizeof buf,
             ", \"damon\": {\"kdamond_pid\": %d, \"sample_us\": %u, \"aggr_us\": %u, \"max_regions\": %u, "
             "\"regions\": %zu, \"reads\": %llu, \"kdamond_cpu_percent\": %.3f, \"error\": ",
             static_cast<int>(e->damon.kdamond_pid()), a.sample_us, a.aggr_us, e->damon.max_regions(), e->damon_regions.load(),
             u(e->damon_reads), kdamond_cpu_percent(*e));
    out.pop_back();
    out += buf;
    os::append_json_string(out, error);
    out += "}}";
  }
  return out;
}

std::string engine_status_text() {
  const numa::Topology& topo = alloc::process_topology();
  const Engine* e = g_engine;
  std::string o;
  char line[512];
  if (!e) {
    // g_off_reason reads "off: why".
    const char* why = std::strncmp(g_off_reason, "off: ", 5) == 0 ? g_off_reason + 5 : g_off_reason;
    snprintf(line, sizeof line, "tieralloc: engine: off (%s); heat source: none\n", why);
    o += line;
  } else {
    const char* state = e->running ? "running" : e->forked_child ? "stopped (forked child)" : "stopped";
    if (e->source == Source::kDamon) {
      snprintf(line, sizeof line,
               "tieralloc: engine: %s; heat source: DAMON (the kernel's access monitor on this process's virtual "
               "addresses: %zu regions, an accessed-bit check per region every %u us; kdamond CPU %.3f%% of one core); "
               "migration: %s\n",
               state, e->damon_regions.load(), e->damon.attrs().sample_us,
               kdamond_cpu_percent(*e), alloc::heap_emulated() ? "page map only (emulated tiers)" : "move_pages");
    } else if (e->source == Source::kSampler)
      snprintf(line, sizeof line,
               "tieralloc: engine: %s; heat source: hinting-fault sampler over 2 MiB runs (%.2f%% of one core budgeted, "
               "%.3f%% used; heap on transparent huge pages: %s); migration: %s\n",
               state, e->cfg.sampler_cpu_percent, e->sampler_cpu_percent.load(), e->huge_pages ? "advised" : "unavailable",
               alloc::heap_emulated() ? "page map only (emulated tiers)" : "move_pages");
    else
      snprintf(line, sizeof line, "tieralloc: engine: %s; heat source: none\n", state);
    o += line;
  }
  const int nb = topo.kernel.numa_balancing;
  const char* nb_words = nb < 0 ? "unreadable" : nb == 0 ? "off" : nb == 1 ? "NUMA locality balancing"
                        : nb == 2 ? "memory tiering: the kernel promotes hot pages" : "locality balancing and memory tiering";
  const char* demotion = topo.kernel.demotion_enabled ? (*topo.kernel.demotion_enabled ? "on" : "off") : "unknown";
  snprintf(line, sizeof line, "tieralloc: kernel tiering: numa_balancing=%d (%s), demotion_enabled=%s%s\n", nb, nb_words,
           demotion, e && e->kernel_promotes ? "; promotion left to the kernel" : "");
  o += line;
  if (e) {
    double wall_s = static_cast<double>(now_ns() - e->started_ns.load()) / 1e9;
    double cpu_s = static_cast<double>(e->sampler_cpu_ns.load() + e->policy_cpu_ns.load()) / 1e9;
    snprintf(line, sizeof line,
             "tieralloc: migrated: %s promoted, %s demoted, %llu pages failed to move (retried later); engine CPU %.3f%% of one core\n",
             os::format_bytes(e->promoted_bytes.load()).c_str(), os::format_bytes(e->demoted_bytes.load()).c_str(),
             static_cast<unsigned long long>(e->failed_pages.load()), wall_s > 0 ? 100.0 * cpu_s / wall_s : 0.0);
    o += line;
  }
  alloc::SiteCounters c = alloc::site_counters();
  if (e && e->source == Source::kDamon)
    snprintf(line, sizeof line, "tieralloc: allocation sites: off (they learn from the sampler's first touches; DAMON's "
             "regions do not name objects)\n");
  else if (e && e->cfg.site_sample_bytes)
    snprintf(line, sizeof line,
             "tieralloc: allocation sites: %u tracked, %u hot, %u cold; %llu allocations steered, %llu sampled (one per %s)\n",
             static_cast<unsigned>(c.tracked), e->sites_hot.load(), e->sites_cold.load(), static_cast<unsigned long long>(c.steered),
             static_cast<unsigned long long>(c.sampled), os::format_bytes(e->cfg.site_sample_bytes).c_str());
  else
    snprintf(line, sizeof line, "tieralloc: allocation sites: off (%s)\n",
             e ? "TIERALLOC_SITE_SAMPLE=0" : "no heat source");
  o += line;
  return o;
}

}  // namespace tieralloc::tiering
