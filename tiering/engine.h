// The tiering engine: one background thread that samples page heat, keeps a decayed heat per run,
// asks the policy (tiering/policy.h) what to move, and moves it through the heap's migrator. It
// never runs on the application's threads, and virtual addresses never change: pages move, not
// objects.
//
// It starts with the library when there are two tiers or more and TIERALLOC_POLICY is not static.
// After fork() the child runs without it (a fork's child is usually about to exec, or is a
// snapshot writer such as Redis's BGSAVE that must not spend CPU moving pages); the parent's
// engine keeps running, and fork never waits on more than one sampling window.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tieralloc::tiering {

struct EngineConfig {
  bool migrate = true;             // false: TIERALLOC_POLICY=static
  double sampler_cpu_percent = 1;  // 0: no sampler
  bool damon = true;               // without the sampler, DAMON where the kernel offers it
  uint64_t migrate_rate = uint64_t{256} << 20;  // bytes per second
  uint32_t period_ms = 50;
  uint32_t window_us = 1000;       // how long runs stay armed at first (then adapted)
  // Weight of the newest observation in a run's heat (an exponentially weighted mean over the
  // run's samples): a run found untouched loses this share of its heat each time it is sampled.
  // A quarter: a mean over about four samples, which a run of a small heap gets every few periods;
  // a half let single noisy samples swap hot runs out (gups: 58-83% fast hits, against 80-87%).
  double observation_weight = 0.25;
  // Mean bytes between allocation-site samples (alloc/sites.h); 0 = no allocation-site heat.
  uint64_t site_sample_bytes = 0;
};

// Starts the engine if the configuration and the topology call for it; false if it did not start.
bool engine_start(const EngineConfig& cfg);
void engine_stop();
bool engine_running();

// Pins [addr, addr+len) hot (TIERALLOC_HOT: tier 0) or cold (TIERALLOC_COLD: slowest tier) and moves
// it there now; 0 clears the pin. 0 or -errno.
int engine_hint(void* addr, size_t len, int hint);

// The "tiering" member of tieralloc_stats_json.
std::string engine_stats_json();
// The engine's state in words, one "tieralloc: " line per topic, for TIERALLOC_STATS=stderr (and so
// `tieralloc run --stats`): the heat source or why there is none, the kernel's own tiering, what
// moved and what failed to, the engine's CPU, allocation sites.
std::string engine_status_text();

}  // namespace tieralloc::tiering
