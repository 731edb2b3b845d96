// Idle load-to-use latency, as Intel MLC measures it: one thread chases a pointer through a buffer
// much larger than the last-level cache, in an order the prefetchers cannot guess, so every load
// waits for the one before. Pages are 4 KiB, so, as MLC without large pages, the figure includes
// the TLB misses of a random walk; that is what an application with a big heap sees.
#include <numa.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "bench/worker/common.h"
#include "bench/worker/workloads.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::bench {
namespace {

constexpr size_t kLine = 64;

// Links every cache line of buf into one random cycle; returns the first.
void** link_random_cycle(char* buf, size_t bytes) {
  const size_t lines = bytes / kLine;
  std::vector<uint32_t> order(lines);
  for (size_t i = 0; i < lines; ++i) order[i] = static_cast<uint32_t>(i);
  std::shuffle(order.begin() + 1, order.end(), std::mt19937_64(42));
  for (size_t i = 0; i < lines; ++i)
    *reinterpret_cast<void**>(buf + order[i] * kLine) = buf + order[(i + 1) % lines] * kLine;
  return reinterpret_cast<void**>(buf);
}

}  // namespace

// --target tier:N or node:N, --size BYTES, --seconds S, --delay-ns D (the emulated slow-tier delay,
// added to the measured figure for an emulated tier other than the fastest).
int run_latency(const Args& args) {
  const std::string target = args.str("target", "tier:0");
  const size_t bytes = args.size("size", size_t{256} << 20) / kLine * kLine;
  const double seconds = args.num("seconds", 1);
  const bool is_node = target.rfind("node:", 0) == 0;
  const int index = atoi(target.c_str() + target.find(':') + 1);
  char* buf;
  struct tieralloc_tier_info info {};
  if (is_node) {
    // A node, not a tier: plain memory bound to it, without tieralloc.
    buf = static_cast<char*>(numa_alloc_onnode(bytes, index));
    if (!buf) fail("cannot allocate on node " + std::to_string(index));
  } else {
    if (tieralloc_tier_info(index, &info) != 0) fail("no tier " + std::to_string(index));
    buf = static_cast<char*>(tieralloc_mallocx(bytes, TIERALLOC_TIER(index) | TIERALLOC_STRICT));
    if (!buf) fail("cannot allocate " + std::to_string(bytes) + " bytes on tier " + std::to_string(index) + ": " + strerror(errno));
  }
  void** p = link_random_cycle(buf, bytes);
  report_progress(0.2);
  // Warm the page tables and make every page resident; then chase in timed rounds.
  for (size_t i = 0; i < bytes / kLine; ++i) p = static_cast<void**>(*p);
  uint64_t loads = 0;
  auto t0 = Clock::now();
  double elapsed = 0;
  while ((elapsed = seconds_since(t0)) < seconds) {
    for (int i = 0; i < 1 << 16; ++i) p = static_cast<void**>(*p);
    loads += 1 << 16;
    report_progress(0.2 + 0.8 * elapsed / seconds);
  }
  keep(p);
  const double measured_ns = elapsed * 1e9 / static_cast<double>(loads);
  const bool emulated_slow = !is_node && info.emulated && index > 0;
  const double delay = emulated_slow ? args.num("delay-ns", 0) : 0;
  json r = {{"target", target}, {"bytes", bytes}, {"loads", loads}, {"measured_ns", measured_ns},
            {"emulated_delay_ns", delay}, {"latency_ns", measured_ns + delay}};
  if (!is_node) r["kind"] = info.kind;
  if (is_node) numa_free(buf, bytes);
  else tieralloc_free(buf);
  report_result(r);
  return 0;
}

}  // namespace tieralloc::bench
