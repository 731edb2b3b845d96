// Run-time options, all from the environment, all in one table (alloc/options.cc) from which the
// parser, `tieralloc help` and the README's table are kept. A malformed value is reported once on
// stderr, naming the variable, and the option keeps its safe default.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tieralloc::alloc {

struct Options {
  // TIERALLOC_FAST_LIMIT: budget on tier 0, in bytes, or percent of its capacity when
  // fast_limit_percent > 0. 0 = none beyond the tier's free memory.
  uint64_t fast_limit_bytes = 0;
  double fast_limit_percent = 0;
  // TIERALLOC_STATS: "" (off), "stderr", or a file path; statistics written at exit.
  std::string stats;
  // TIERALLOC_POLICY: automatic migration by heat (default) or static placement only.
  bool migrate = true;
  // TIERALLOC_SAMPLER: the hinting-fault sampler's CPU budget, percent of one core; 0 = off (the
  // default: see tiering/sampler.h for why it is opt-in).
  double sampler_cpu_percent = 0;
  // TIERALLOC_DAMON: without the sampler, use the kernel's DAMON as the heat source where it can be.
  bool damon = true;
  // TIERALLOC_MIGRATE_RATE: bytes per second the engine may move.
  uint64_t migrate_rate = uint64_t{256} << 20;
  // TIERALLOC_SITE_SAMPLE: mean bytes allocated between two allocation-site samples (alloc/sites.h);
  // 0 = no allocation-site heat. Used only while the tiering engine has a heat source.
  uint64_t site_sample_bytes = uint64_t{512} << 10;
  // TIERALLOC_POISON: take machine-check SIGBUS and stray accesses to quarantined pages (on), or
  // leave SIGBUS/SIGSEGV to the application and the kernel (off; the API still quarantines).
  bool poison = true;
  // TIERALLOC_QUARANTINE_FILE: the quarantine journal's path, "" = off (TIERALLOC_QUARANTINE_FILE=off,
  // or no home directory to put it in).
  std::string quarantine_file = default_quarantine_file();

  // $XDG_STATE_HOME/tieralloc/quarantine when XDG_STATE_HOME is an absolute path (the XDG base
  // directory rules ignore a relative one), else $HOME/.local/state/tieralloc/quarantine, else "".
  static std::string default_quarantine_file();
};

struct OptionDoc {
  const char* name;
  const char* value;
  const char* description;
};
// TIERALLOC_FSROOT and TIERALLOC_TIERS are read by numa/ but documented here with the rest.
const std::vector<OptionDoc>& option_docs();

// Parses the environment; warnings (one per bad variable) are appended to `warnings`.
Options options_from_env(std::vector<std::string>& warnings);

}  // namespace tieralloc::alloc
