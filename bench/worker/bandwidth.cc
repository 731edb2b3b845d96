// Sequential bandwidth, STREAM-style: read (sum), write (fill) and triad (a = b + s*c), with T
// threads each streaming its own slice of arrays far larger than the last-level cache.
#include <numa.h>

#include <barrier>
#include <cstring>
#include <thread>
#include <vector>

#include "bench/worker/common.h"
#include "bench/worker/workloads.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::bench {
namespace {

enum class Op { kRead, kWrite, kTriad };
const char* const kOpNames[] = {"read", "write", "triad"};

// Bytes one pass over n elements moves (STREAM's count: no write-allocate traffic).
double pass_bytes(Op op, size_t n) {
  return static_cast<double>(n * sizeof(double)) * (op == Op::kTriad ? 3 : 1);
}

double pass(Op op, double* a, const double* b, const double* c, size_t n) {
  switch (op) {
    case Op::kRead: {
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t i = 0; i < n; i += 4) s0 += a[i], s1 += a[i + 1], s2 += a[i + 2], s3 += a[i + 3];
      return s0 + s1 + s2 + s3;
    }
    case Op::kWrite:
      for (size_t i = 0; i < n; ++i) a[i] = 1.0;
      return a[n / 2];
    case Op::kTriad:
      for (size_t i = 0; i < n; ++i) a[i] = b[i] + 3.0 * c[i];
      return a[n / 2];
  }
  return 0;
}

}  // namespace

// --target tier:N or node:N, --size BYTES (per array), --threads T, --seconds S (per operation).
int run_bandwidth(const Args& args) {
  const std::string target = args.str("target", "tier:0");
  const size_t bytes = args.size("size", size_t{64} << 20) & ~size_t{4095};
  const int threads = static_cast<int>(args.num("threads", 1));
  const double seconds = args.num("seconds", 0.5);
  const bool is_node = target.rfind("node:", 0) == 0;
  const int index = atoi(target.c_str() + target.find(':') + 1);
  auto alloc = [&]() -> double* {
    void* p = is_node ? numa_alloc_onnode(bytes, index)
                      : tieralloc_mallocx(bytes, TIERALLOC_TIER(index) | TIERALLOC_STRICT);
    if (!p) fail("cannot allocate " + std::to_string(bytes) + " bytes on " + target);
    memset(p, 0, bytes);  // resident, so page faults are not timed
    return static_cast<double*>(p);
  };
  double* arrays[3] = {alloc(), alloc(), alloc()};
  const size_t n = bytes / sizeof(double), slice = n / static_cast<size_t>(threads) / 4 * 4;
  struct tieralloc_tier_info info {};
  if (!is_node) tieralloc_tier_info(index, &info);

  int step = 0;
  for (Op op : {Op::kRead, Op::kWrite, Op::kTriad}) {
    // All threads start together and stream until the first passes the deadline; the figure is
    // the bytes all of them moved over the time the slowest took.
    std::barrier sync(threads);
    std::atomic<bool> stop{false};
    std::vector<double> moved(static_cast<size_t>(threads)), took(static_cast<size_t>(threads));
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        size_t off = static_cast<size_t>(t) * slice;
        sync.arrive_and_wait();
        auto t0 = Clock::now();
        double sink = 0, bytes_moved = 0;
        do {
          sink += pass(op, arrays[0] + off, arrays[1] + off, arrays[2] + off, slice);
          bytes_moved += pass_bytes(op, slice);
          if (seconds_since(t0) >= seconds) stop = true;
        } while (!stop.load(std::memory_order_relaxed));
        took[static_cast<size_t>(t)] = seconds_since(t0);
        keep(sink);
        moved[static_cast<size_t>(t)] = bytes_moved;
      });
    for (auto& w : workers) w.join();
    double total = 0, slowest = 0;
    for (int t = 0; t < threads; ++t) total += moved[static_cast<size_t>(t)], slowest = std::max(slowest, took[static_cast<size_t>(t)]);
    json r = {{"target", target}, {"op", kOpNames[static_cast<int>(op)]}, {"threads", threads},
              {"bytes_per_array", bytes}, {"gb_per_s", total / slowest / 1e9}};
    if (!is_node) r["kind"] = info.kind;
    report_result(r);
    report_progress(static_cast<double>(++step) / 3);
  }
  for (double* a : arrays) is_node ? numa_free(a, bytes) : tieralloc_free(a);
  return 0;
}

}  // namespace tieralloc::bench
