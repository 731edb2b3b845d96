// GUPS with a moving hot set: how well a placement keeps the updates on the fast tier.
//
// Working set W in 1 MiB blocks; a hot set of 10% of W takes 90% of the updates; the driver gives
// the fast tier a budget of 25% of W; halfway through, the hot set moves to another region. Per
// run: updates per second, the fraction of updates that hit fast-tier pages (tieralloc_tier_of of
// every page, ten times a second), bytes migrated, the time from the hot-set move until 90% of
// updates hit the fast tier again, and the engine's CPU use; and a time line of those.
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "bench/worker/common.h"
#include "bench/worker/workloads.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::bench {

// --placement P, --seconds S, --ws BYTES, --delay-ns D (per update of a slow-tier page; emulated tiers).
int run_gups(const Args& args) {
  const std::string placement = args.str("placement", "tieralloc");
  const double seconds = args.num("seconds", 10);
  const uint64_t ws = args.size("ws", uint64_t{256} << 20);
  struct tieralloc_tier_info fast;
  tieralloc_tier_info(0, &fast);
  const double delay = fast.emulated ? args.num("delay-ns", 0) : 0;
  constexpr size_t kBlock = size_t{1} << 20, kPage = 4096, kPagesPerBlock = kBlock / kPage;
  const size_t nblocks = ws / kBlock, npages = nblocks * kPagesPerBlock;
  std::vector<char*> blocks(nblocks);
  std::vector<const void*> pages;
  for (size_t b = 0; b < nblocks; ++b) {
    blocks[b] = static_cast<char*>(tieralloc_mallocx(kBlock, placement_flags(placement, b) | TIERALLOC_ZERO));
    if (!blocks[b]) fail("allocation of block " + std::to_string(b) + " failed: " + strerror(errno));
    for (size_t p = 0; p < kPagesPerBlock; ++p) pages.push_back(blocks[b] + p * kPage);
  }
  FastPages fast_pages(std::move(pages));
  fast_pages.refresh();

  const size_t hot_pages = npages / 10;
  std::atomic<size_t> hot_start{npages * 4 / 10};  // moves to 80% halfway through
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> updates{0}, fast_hits{0};
  std::thread worker([&] {
    uint64_t x = 0x9E3779B97F4A7C15ull, local = 0, local_fast = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      for (int i = 0; i < 4096; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t page = (x % 10 < 9) ? hot_start.load(std::memory_order_relaxed) + (x >> 8) % hot_pages : (x >> 8) % npages;
        uint64_t* word = reinterpret_cast<uint64_t*>(blocks[page / kPagesPerBlock] + (page % kPagesPerBlock) * kPage) +
                         ((x >> 40) % (kPage / 8));
        *word += 1;
        if (fast_pages.fast(page)) ++local_fast;
        else if (delay > 0) spin_ns(delay);
        ++local;
      }
      updates.store(local, std::memory_order_relaxed);
      fast_hits.store(local_fast, std::memory_order_relaxed);
    }
  });

  Timeline timeline(fast_pages, updates, fast_hits, 1e6);
  double move_t = seconds / 2, recovered_t = -1, migrated_at_move = 0;
  bool moved = false;
  timeline.run(seconds, [&](double t, double hit) {
    if (moved && recovered_t < 0 && hit >= 0.9) recovered_t = t - move_t;
    if (!moved && t >= move_t) {
      hot_start = npages * 8 / 10;
      moved = true;
      move_t = t;
      migrated_at_move = static_cast<double>(timeline.engine().migrated_bytes);
    }
    report_progress(t / seconds);
  });
  stop = true;
  worker.join();
  const double total_t = timeline.elapsed();
  const EngineFigures& engine = timeline.engine();
  json r = {{"placement", placement},
            {"ws_bytes", ws},
            {"fast_budget_bytes", fast.limit_bytes},
            {"seconds", total_t},
            {"updates_per_s", static_cast<double>(updates) / total_t},
            {"fast_hit_ratio", updates ? static_cast<double>(fast_hits) / static_cast<double>(updates) : 0.0},
            {"migrated_bytes", engine.migrated_bytes},
            {"migrated_after_move_bytes", static_cast<double>(engine.migrated_bytes) - migrated_at_move},
            {"hot_set_move_s", move_t},
            {"recovery_s", recovered_t < 0 ? json(nullptr) : json(recovered_t)},
            {"engine_cpu_percent", engine.cpu_percent},
            {"timeline_fields", {"t_s", "fast_hit_ratio", "mupdates_per_s", "migrated_mib"}},
            {"timeline", timeline.points()}};
  for (char* b : blocks) tieralloc_free(b);
  report_result(r);
  return 0;
}

}  // namespace tieralloc::bench
