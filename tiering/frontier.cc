#include "tiering/frontier.h"

#include <algorithm>

namespace tieralloc::tiering {

Frontier::Frontier(size_t run_bytes, size_t span_runs, size_t max_pending)
    : run_bytes_(run_bytes), span_runs_(std::max<size_t>(span_runs, 1)), max_pending_(max_pending) {}

bool Frontier::queued(uintptr_t lo, uintptr_t hi) const {
  for (const Step& s : queue_)
    if (lo < s.addr + s.runs * run_bytes_ && s.addr < hi) return true;
  return false;
}

void Frontier::hot_run(uintptr_t run, const std::function<Neighbour(uintptr_t)>& classify) {
  const uintptr_t reach = span_runs_ * run_bytes_;
  // Only the first neighbour not passed over decides: one sampled lately says what it is by itself
  // (hot, it queued its own steps; cold, the region ends there), so a region sampled whole queues
  // steps at its edges only, and a step into cold memory ends the walk unless its far edge happens
  // to be hot.
  auto first = [&](uintptr_t r, bool up) -> uintptr_t {
    for (size_t k = 0; k < span_runs_; ++k) {
      if (up ? r + run_bytes_ < r : r < run_bytes_) return 0;
      r = up ? r + run_bytes_ : r - run_bytes_;
      Neighbour n = classify(r);
      if (n == Neighbour::kStop) return 0;
      if (n == Neighbour::kExplore) return r;
    }
    return 0;
  };
  if (uintptr_t r = first(run, true); r && !queued(r, r + reach) && queue_.size() < max_pending_)
    queue_.push_back(Step{r, span_runs_, false});
  if (uintptr_t r = first(run, false); r && r + run_bytes_ >= reach) {
    uintptr_t lo = r + run_bytes_ - reach;
    if (!queued(lo, r + run_bytes_) && queue_.size() < max_pending_) queue_.push_back(Step{lo, span_runs_, true});
  }
}

size_t Frontier::take(Span* out, size_t max_spans, size_t max_runs) {
  size_t n = 0, steps = 0;
  for (; steps < queue_.size() && n < max_spans && max_runs > 0; ++steps) {
    const Step& s = queue_[steps];
    // Cut to what is left, keeping the part nearest the origin; the far edge of that part, once
    // sampled, says whether the region goes on.
    size_t runs = std::min(s.runs, max_runs);
    out[n++] = Span{s.downward ? s.addr + (s.runs - runs) * run_bytes_ : s.addr, runs};
    max_runs -= runs;
  }
  queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(steps));
  return n;
}

}  // namespace tieralloc::tiering
