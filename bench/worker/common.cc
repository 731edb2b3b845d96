#include "bench/worker/common.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "tieralloc/tieralloc.h"

namespace tieralloc::bench {

Args::Args(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    if (strncmp(argv[i], "--", 2) != 0 || i + 1 >= argc) fail(std::string("bad argument ") + argv[i]);
    values_[argv[i] + 2] = argv[i + 1];
    ++i;
  }
}

std::string Args::str(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

double Args::num(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  char* end;
  double v = strtod(it->second.c_str(), &end);
  if (*end || end == it->second.c_str()) fail("--" + name + ": not a number: " + it->second);
  return v;
}

uint64_t Args::size(const std::string& name, uint64_t fallback) const {
  double v = num(name, static_cast<double>(fallback));
  if (v < 1) fail("--" + name + " must be positive");
  return static_cast<uint64_t>(v);
}

void report_progress(double fraction) {
  printf("progress %.3f\n", fraction < 0 ? 0 : fraction > 1 ? 1 : fraction);
  fflush(stdout);
}

void report_result(const json& item) {
  printf("result %s\n", item.dump().c_str());
  fflush(stdout);
}

void fail(const std::string& why) {
  fprintf(stderr, "tieralloc-bench-worker: %s\n", why.c_str());
  exit(1);
}

void spin_ns(double ns) {
  auto until = Clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(ns));
  while (Clock::now() < until) {
  }
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int placement_flags(const std::string& placement, size_t i) {
  const int slowest = tieralloc_tier_count() - 1;
  if (placement == "all-fast") return TIERALLOC_TIER(0);
  if (placement == "all-slow") return TIERALLOC_TIER(slowest);
  // memkind's static ratio: a fixed share of the data on the fast tier, here one block in four.
  if (placement == "static-ratio") return TIERALLOC_TIER(i % 4 == 0 ? 0 : slowest);
  return 0;
}

size_t FastPages::refresh() {
  size_t on_fast = 0;
  for (size_t i = 0; i < pages_.size(); ++i) {
    bool f = tieralloc_tier_of(pages_[i].load(std::memory_order_relaxed)) == 0;
    fast_[i].store(f, std::memory_order_relaxed);
    on_fast += f;
  }
  return on_fast;
}

EngineFigures engine_figures() {
  std::string doc(static_cast<size_t>(tieralloc_stats_json(nullptr, 0)) + 1, '\0');
  doc.resize(static_cast<size_t>(tieralloc_stats_json(doc.data(), doc.size())));
  EngineFigures f;
  json stats = json::parse(doc, nullptr, false);
  if (stats.is_discarded() || !stats.contains("tiering")) return f;
  const json& t = stats["tiering"];
  f.migrated_bytes = t.value("promoted_bytes", uint64_t{0}) + t.value("demoted_bytes", uint64_t{0});
  f.cpu_percent = t.value("engine_cpu_percent", 0.0);
  return f;
}

void Timeline::run(double seconds, const std::function<void(double t, double hit)>& on_point) {
  start_ = Clock::now();
  uint64_t last_ops = 0, last_fast = 0;
  double last_t = 0;
  for (double t = 0; t < seconds;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    t = elapsed();
    pages_.refresh();
    engine_ = engine_figures();
    const uint64_t o = ops_.load(), f = fast_ops_.load();
    const double hit = o > last_ops ? static_cast<double>(f - last_fast) / static_cast<double>(o - last_ops) : 0;
    points_.push_back({t, hit, static_cast<double>(o - last_ops) / (t - last_t) / rate_unit_, engine_.migrated_bytes / 1048576.0});
    last_ops = o, last_fast = f, last_t = t;
    on_point(t, hit);
  }
}

}  // namespace tieralloc::bench
