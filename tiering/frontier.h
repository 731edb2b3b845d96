// Spatially adaptive sampling: where the random sample finds a hot run on a slower tier, the runs
// beside it are sampled next, a span at a time outward, until the edges come back cold.
//
// Random sampling alone finds a hot region at the rate it covers the whole heap: under the 1% CPU
// budget this VM samples about a thousand 64 KiB runs a second, so in a 256 MiB heap a run is seen
// every few seconds, and the last runs of a new 25 MiB hot set are found only after several
// passes. Hot data is mostly contiguous (an array, an arena's recent extents, a hash table's
// buckets), which is what DAMON relies on when it splits a region whose sampled page was accessed
// and merges neighbours that behave alike. Here a region grows from any run found hot, at the cost
// of the runs that are sampled anyway: the engine gives the frontier a share of each window and the
// random sample the rest, so the whole heap is still visited and cooling is still noticed.
//
// Pure bookkeeping with no clock, no syscalls and no allocator state (tests/tiering/frontier_test.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace tieralloc::tiering {

class Frontier {
 public:
  struct Span {
    uintptr_t addr;  // run-aligned
    size_t runs;
  };
  // run_bytes: the sampling granule; span_runs: how far one step reaches; max_pending: spans queued
  // at most (further steps are dropped until the queue drains: the random sample still finds them).
  Frontier(size_t run_bytes, size_t span_runs, size_t max_pending);

  // What a neighbour of a hot run calls for.
  enum class Neighbour {
    kExplore,   // sample it soon
    kPassOver,  // already where hot runs go (the fastest tier), or sampled lately and touched: look
                // at the next one
    kStop,      // sampled lately and untouched (the region ends there), or memory the sampler may
                // not arm
  };
  // A run just sampled and found hot: on each side of it, the first neighbour within span_runs that
  // `classify` does not pass over, if it is to be explored, starts a step of span_runs runs
  // pointing away from the hot run.
  void hot_run(uintptr_t run, const std::function<Neighbour(uintptr_t)>& classify);

  // Takes queued spans, oldest first, for this window: up to max_spans spans and max_runs runs in
  // all. A span larger than what is left is cut to the part nearest the run that queued it, so a
  // region grows contiguously from where it was found. Returns the count.
  size_t take(Span* out, size_t max_spans, size_t max_runs);

  size_t pending() const { return queue_.size(); }
  void clear() { queue_.clear(); }

 private:
  struct Step {
    uintptr_t addr;
    size_t runs;
    bool downward;  // grows toward lower addresses: its origin is its upper end
  };
  bool queued(uintptr_t lo, uintptr_t hi) const;

  size_t run_bytes_, span_runs_, max_pending_;
  std::vector<Step> queue_;
};

}  // namespace tieralloc::tiering
