// What the workloads of `tieralloc bench` share: the protocol to the driver (tool/bench.cc), the
// placements, the emulated-tier delay, and a view of which pages sit on the fast tier.
//
// The worker runs one measurement per process, because a placement is a process-wide configuration
// (the driver sets TIERALLOC_* for each run). It talks to the driver on stdout, one line each:
//   progress F          F in [0, 1], how far this run is
//   result {JSON}       one measured item; a run may print several
// Everything else (warnings, errors) goes to stderr.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tieralloc::bench {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// The options a workload was started with ("--name value" pairs; the driver has checked them).
class Args {
 public:
  Args(int argc, char** argv);
  std::string str(const std::string& name, const std::string& fallback = "") const;
  double num(const std::string& name, double fallback) const;
  uint64_t size(const std::string& name, uint64_t fallback) const;

 private:
  std::map<std::string, std::string> values_;
};

void report_progress(double fraction);
void report_result(const json& item);
[[noreturn]] void fail(const std::string& why);

// Busy-waits about ns nanoseconds: the per-access cost of a slow-tier page on emulated tiers.
// steady_clock is read through the vDSO (TSC), so the wait adds no system call.
void spin_ns(double ns);

double seconds_since(Clock::time_point t0);

// Gives a computed value a use, so the loop that computed it is not optimised away.
template <typename T>
inline void keep(const T& value) {
  asm volatile("" : : "m"(value) : "memory");
}

// Where a placement puts block i of n (tieralloc_mallocx flags). "first-touch" and "tieralloc" use
// the default placement (fastest tier first, within its budget); they differ in the engine, which
// the driver turns on through the environment for "tieralloc" only.
int placement_flags(const std::string& placement, size_t i);

// Which of a set of pages are on the fast tier, refreshed on demand with tieralloc_tier_of. The
// workloads read it on every access, so it is a plain byte per page, not a system call. A page may
// be replaced by another (kv's copy-on-update): its flag is then the old one's until the next
// refresh, at most one sampling interval of the time line.
class FastPages {
 public:
  explicit FastPages(const std::vector<const void*>& pages) : pages_(pages.size()), fast_(pages.size()) {
    for (size_t i = 0; i < pages.size(); ++i) pages_[i].store(pages[i], std::memory_order_relaxed);
  }
  size_t refresh();  // returns how many are on the fast tier
  bool fast(size_t i) const { return fast_[i].load(std::memory_order_relaxed); }
  void replace(size_t i, const void* page) { pages_[i].store(page, std::memory_order_relaxed); }
  size_t size() const { return pages_.size(); }

 private:
  std::vector<std::atomic<const void*>> pages_;
  std::vector<std::atomic<uint8_t>> fast_;
};

// Figures from tieralloc_stats_json: bytes the engine moved, and its CPU use.
struct EngineFigures {
  uint64_t migrated_bytes = 0;
  double cpu_percent = 0;
};
EngineFigures engine_figures();

// The time line gups and kv record while their worker thread counts operations (ops) and those
// that hit the fast tier (fast_ops): every 100 ms the fast pages are refreshed and one point is
// appended -- seconds since run() began, the hit ratio since the previous point, operations per
// second since then divided by rate_unit (1e3: thousands, 1e6: millions), MiB the engine migrated.
class Timeline {
 public:
  Timeline(FastPages& pages, const std::atomic<uint64_t>& ops, const std::atomic<uint64_t>& fast_ops, double rate_unit)
      : pages_(pages), ops_(ops), fast_ops_(fast_ops), rate_unit_(rate_unit) {}
  // Samples until `seconds` have passed; on_point(t, hit) runs after each point (progress, and what
  // a workload changes at a given time).
  void run(double seconds, const std::function<void(double t, double hit)>& on_point);
  double elapsed() const { return seconds_since(start_); }
  const EngineFigures& engine() const { return engine_; }  // at the last point
  const json& points() const { return points_; }

 private:
  FastPages& pages_;
  const std::atomic<uint64_t>& ops_;
  const std::atomic<uint64_t>& fast_ops_;
  const double rate_unit_;
  Clock::time_point start_ = Clock::now();
  EngineFigures engine_;
  json points_ = json::array();
};

}  // namespace tieralloc::bench
