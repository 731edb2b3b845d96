// DAMON, the kernel's data access monitor, as the tiering engine's heat source: a kernel thread
// (kdamond) samples the accessed bits of this process's pages through its page tables and reports
// how often each region of the heap was found accessed. Unlike the portable sampler
// (tiering/sampler.h) nothing is taken from the application: no page loses access, so a system
// call that writes into the heap never fails, and no signal is involved. So the engine uses DAMON
// by default wherever it can, and the sampler only when asked.
//
// What it needs: DAMON's sysfs interface with virtual-address operations (CONFIG_DAMON_SYSFS and
// CONFIG_DAMON_VADDR), Linux 6.11 or later (the sysfs "commit" of new target regions while running,
// which a growing heap needs), and write access to /sys/kernel/mm/damon (root). DAMON's kdamonds
// are one resource of the whole machine: tieralloc takes one only when no program has any
// configured (nr_kdamonds is 0, or every kdamond is off and monitors a process that has exited),
// holds it for the life of its process, and returns it at exit. Processes of tieralloc's own
// serialise their set-up through a lock file, so two never configure the same kdamond.
//
// What it reports: per region, how many of the last aggregation interval's samples found the
// region accessed (0 to aggr_us / sample_us). Regions are DAMON's own, split and merged as access
// patterns change within the address ranges tieralloc gives it (the heap's mapped ranges, committed
// again as the heap grows); run_scores() turns them into the engine's per-run heat.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tieralloc::tiering {

struct DamonRegion {
  uintptr_t start, end;   // virtual addresses, [start, end)
  uint32_t nr_accesses;   // samples of the last aggregation interval that found it accessed
};

struct AddressRange {
  uintptr_t start, end;
  bool operator==(const AddressRange&) const = default;
};

// The ranges DAMON is asked to watch: `ranges` sorted and merged where the gap between two is at
// most `max_gap`, then merged across the smallest gaps until at most `max_count` remain. Gaps are
// harmless to DAMON (unmapped addresses are never found accessed), regions cost sysfs writes.
std::vector<AddressRange> coalesce_ranges(std::vector<AddressRange> ranges, uintptr_t max_gap, size_t max_count);

// Calls score(run, accesses) for every run_bytes-aligned run that the regions (sorted, not
// overlapping) cover at least partly: accesses is the mean of nr_accesses over the run's bytes
// that regions cover.
template <typename Fn>
void run_scores(const std::vector<DamonRegion>& regions, uintptr_t run_bytes, Fn score) {
  uintptr_t current = 0;
  double weighted = 0, covered = 0;
  for (const DamonRegion& r : regions) {
    for (uintptr_t lo = r.start; lo < r.end;) {
      const uintptr_t run = lo & ~(run_bytes - 1), hi = std::min(r.end, run + run_bytes);
      if (covered > 0 && run != current) score(current, weighted / covered), weighted = covered = 0;
      current = run;
      weighted += static_cast<double>(hi - lo) * r.nr_accesses, covered += static_cast<double>(hi - lo);
      lo = hi;
    }
  }
  if (covered > 0) score(current, weighted / covered);
}

class DamonMonitor {
 public:
  struct Attrs {
    uint32_t sample_us = 5000;    // DAMON's defaults: an accessed-bit check per region every 5 ms,
    uint32_t aggr_us = 100000;    // aggregated over 100 ms (so 0 to 20 accesses)
    // The resolution wanted: the engine's run. DAMON is given as many regions as the ranges hold
    // runs (at least 10, at most 500) and may split them to twice that: finer regions would cost
    // DAMON a check each and the reader three sysfs files each, and tell the engine nothing more.
    uintptr_t region_bytes = uintptr_t{2} << 20;
  };
  // DAMON's nr_regions bounds for ranges of `bytes` in all.
  static std::pair<uint32_t, uint32_t> region_bounds(uintptr_t bytes, uintptr_t region_bytes);

  DamonMonitor() = default;
  DamonMonitor(const DamonMonitor&) = delete;
  DamonMonitor& operator=(const DamonMonitor&) = delete;
  ~DamonMonitor() { stop(); }

  // Takes a kdamond and starts it on this process over `ranges`. False with reason() when DAMON
  // cannot be used here; then nothing in /sys is left changed.
  bool start(const std::vector<AddressRange>& ranges, const Attrs& attrs);
  // Points the running kdamond at new ranges (sysfs "commit"); a no-op when they are unchanged.
  bool set_ranges(const std::vector<AddressRange>& ranges);
  // The regions of the last aggregation interval, sorted by address. Blocks until the kdamond has
  // reported (up to one aggregation interval). False with reason() when it has stopped.
  bool read(std::vector<DamonRegion>& out);
  // Stops the kdamond and removes it (nr_kdamonds back to 0). Only in the process that started it.
  void stop();

  bool running() const { return owner_ != 0; }
  pid_t kdamond_pid() const { return kdamond_pid_.load(std::memory_order_relaxed); }
  const Attrs& attrs() const { return attrs_; }
  uint32_t max_accesses() const { return attrs_.aggr_us / attrs_.sample_us; }
  uint32_t max_regions() const { return max_regions_.load(std::memory_order_relaxed); }
  uint64_t commits() const { return commits_; }  // times new ranges were given to the running kdamond
  const std::string& reason() const { return reason_; }

 private:
  bool write_regions(const std::vector<AddressRange>& ranges);
  bool write_region_bounds(const std::vector<AddressRange>& ranges);
  bool fail(std::string why);

  Attrs attrs_;
  pid_t owner_ = 0;  // the process that started it (a forked child must not stop it)
  // Atomic: the statistics read these from other threads while the engine thread changes them.
  std::atomic<pid_t> kdamond_pid_{0};
  std::vector<AddressRange> ranges_;
  std::atomic<uint32_t> max_regions_{0};
  uint64_t commits_ = 0;
  std::string reason_;
};

}  // namespace tieralloc::tiering
