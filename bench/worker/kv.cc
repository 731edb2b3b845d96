// An in-memory key-value store on tieralloc's C++ API, driven YCSB-style: a hash index (always on
// the fast tier: it is small and every operation walks it) and one heap object per value, placed
// by the placement under test. Keys are drawn from a scrambled Zipfian distribution (YCSB's, theta
// 0.99), so the hot records are scattered over the whole store, as they are in a real cache: a
// placement that is blind to heat gets about its fast share of the accesses; one that measures heat
// can do better.
//
// Per run: operations per second, p50/p99 operation latency (every 8th operation timed), the
// fraction of operations whose value was on the fast tier, bytes migrated, and a time line.
//
// Two options model what many databases hold besides one hot keyspace. --cold-share F puts a share
// F of the records in a second table, an archive (history, audit log, expired versions) that
// --cold-ops of the operations touch, uniformly (default 1%); its records are loaded interleaved
// with the main table's, as an application writes a record and its history entry together, and
// each table's values are allocated by its own insert path, as a database's tables and logs are.
// --replace 1 makes every update store a new copy of the value and free the old one, as Redis's
// SET, memcached's set and multi-version stores do, instead of overwriting it in place. Both off by
// default: one table, in-place updates.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "bench/worker/common.h"
#include "bench/worker/workloads.h"
#include "tieralloc/tieralloc.h"
#include "tieralloc/tieralloc.hpp"

namespace tieralloc::bench {
namespace {

uint64_t mix64(uint64_t x) {  // splitmix64's finaliser: a bijection that scatters keys
  x ^= x >> 30, x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27, x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Rng {
  uint64_t s;
  uint64_t next() { return mix64(s += 0x9E3779B97F4A7C15ull); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

// YCSB's ZipfianGenerator (Gray et al., "Quickly generating billion-record synthetic databases").
class Zipfian {
 public:
  Zipfian(uint64_t n, double theta) : n_(n), theta_(theta), alpha_(1 / (1 - theta)) {
    for (uint64_t i = 1; i <= n; ++i) zetan_ += 1 / std::pow(static_cast<double>(i), theta);
    double zeta2 = 1 + 1 / std::pow(2.0, theta);
    eta_ = (1 - std::pow(2.0 / static_cast<double>(n), 1 - theta)) / (1 - zeta2 / zetan_);
  }
  uint64_t rank(Rng& rng) const {
    double u = rng.uniform(), uz = u * zetan_;
    if (uz < 1) return 0;
    if (uz < 1 + std::pow(0.5, theta_)) return 1;
    return std::min(n_ - 1, static_cast<uint64_t>(static_cast<double>(n_) * std::pow(eta_ * u - eta_ + 1, alpha_)));
  }

 private:
  uint64_t n_;
  double theta_, alpha_, zetan_ = 0, eta_;
};

// Open addressing with linear probing; key 0 marks an empty slot (keys are record ids + 1).
class Index {
 public:
  explicit Index(size_t records) : mask_(std::bit_ceil(records * 2) - 1), slots_(mask_ + 1, Slot{}, tieralloc::allocator<Slot>(Placement::tier(0))) {}
  void put(uint64_t key, char* value) {
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_)
      if (slots_[i].key == 0 || slots_[i].key == key) {
        slots_[i] = Slot{key, value};
        return;
      }
  }
  char* get(uint64_t key) const {
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i].value;
      if (slots_[i].key == 0) return nullptr;
    }
  }

 private:
  struct Slot {
    uint64_t key = 0;
    char* value = nullptr;
  };
  size_t mask_;
  std::vector<Slot, tieralloc::allocator<Slot>> slots_;
};

// The two tables' insert paths, one call site each, as in a database whose tables are written by
// different code. Kept apart on purpose: noipa stops the compiler folding the two identical bodies
// into one function (identical code folding), and the asm stops it turning the call into a tail
// jump, which would make the caller's return address the site.
__attribute__((noipa)) char* new_main_value(size_t bytes, int flags) {
  void* p = tieralloc_mallocx(bytes, flags);
  asm volatile("" : : "r"(p) : "memory");
  return static_cast<char*>(p);
}
__attribute__((noipa)) char* new_archive_value(size_t bytes, int flags) {
  void* p = tieralloc_mallocx(bytes, flags);
  asm volatile("" : : "r"(p) : "memory");
  return static_cast<char*>(p);
}

}  // namespace

// --placement P, --mix A|B|C, --records N, --value-size B, --seconds S, --delay-ns D,
// --cold-share F, --cold-ops F, --replace 0|1.
int run_kv(const Args& args) {
  const std::string placement = args.str("placement", "tieralloc"), mix = args.str("mix", "B");
  const size_t records = args.size("records", 65536), value_size = args.size("value-size", 1024);
  const double seconds = args.num("seconds", 5);
  const double read_share = mix == "A" ? 0.5 : mix == "B" ? 0.95 : 1.0;
  const double cold_share = args.num("cold-share", 0), cold_ops = args.num("cold-ops", 0.01);
  const bool replace = args.num("replace", 0) != 0;
  struct tieralloc_tier_info fast;
  tieralloc_tier_info(0, &fast);
  const double delay = fast.emulated ? args.num("delay-ns", 0) : 0;

  // Which table each record is in: a hash of its id, so the tables interleave in load order.
  std::vector<uint32_t> main_ids, archive_ids;
  std::vector<uint8_t> in_archive(records);
  for (size_t r = 0; r < records; ++r) {
    in_archive[r] = static_cast<double>(mix64(r ^ 0xA5C1) % 1000000) < cold_share * 1e6;
    (in_archive[r] ? archive_ids : main_ids).push_back(static_cast<uint32_t>(r));
  }
  if (main_ids.empty()) fail("--cold-share leaves no record in the main table");
  auto new_value = [&](size_t r) {
    return in_archive[r] ? new_archive_value(value_size, placement_flags(placement, r))
                         : new_main_value(value_size, placement_flags(placement, r));
  };

  // Load: every record once, in key order.
  auto load_t0 = Clock::now();
  Index index(records);
  std::vector<char*> values(records);
  for (size_t r = 0; r < records; ++r) {
    char* v = new_value(r);
    if (!v) fail("allocation of record " + std::to_string(r) + " failed");
    memset(v, static_cast<int>(r), value_size);
    values[r] = v;
    index.put(r + 1, v);
    if (r % 16384 == 0) report_progress(0.1 * static_cast<double>(r) / static_cast<double>(records));
  }
  const double load_s = seconds_since(load_t0);
  FastPages fast_values(std::vector<const void*>(values.begin(), values.end()));
  fast_values.refresh();
  const Zipfian zipf(main_ids.size(), 0.99);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ops{0}, fast_ops{0};
  std::vector<uint32_t> latencies_ns;
  latencies_ns.reserve(size_t{1} << 20);
  std::thread client([&] {
    Rng rng{12345};
    std::vector<char> buf(value_size);
    uint64_t local = 0, local_fast = 0, checksum = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      for (int i = 0; i < 1024; ++i) {
        const bool timed = (local & 7) == 0;
        const auto t0 = timed ? Clock::now() : Clock::time_point{};
        const bool archive = !archive_ids.empty() && rng.uniform() < cold_ops;
        const uint64_t record = archive ? archive_ids[rng.next() % archive_ids.size()]
                                        : main_ids[mix64(zipf.rank(rng)) % main_ids.size()];
        const bool read = rng.uniform() < read_share;
        char* v = index.get(record + 1);
        if (read) {
          memcpy(buf.data(), v, value_size), checksum += static_cast<uint8_t>(buf[value_size / 2]);
          // Every write fills a whole value with one byte: a value whose ends differ was handed
          // out twice or freed under the store.
          if (buf[0] != buf[value_size - 1]) fail("record " + std::to_string(record) + " is corrupt");
        } else if (replace) {
          char* nv = new_value(record);
          if (!nv) fail("allocation of a new copy of record " + std::to_string(record) + " failed");
          memset(nv, static_cast<int>(local), value_size);
          index.put(record + 1, nv);
          values[record] = nv;
          fast_values.replace(record, nv);
          tieralloc_free(v);
        } else {
          memset(v, static_cast<int>(local), value_size);
        }
        if (fast_values.fast(record)) ++local_fast;
        else if (delay > 0) spin_ns(delay);
        if (timed && latencies_ns.size() < latencies_ns.capacity())
          latencies_ns.push_back(static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()));
        ++local;
      }
      ops.store(local, std::memory_order_relaxed);
      fast_ops.store(local_fast, std::memory_order_relaxed);
    }
    keep(checksum);
  });

  Timeline timeline(fast_values, ops, fast_ops, 1e3);
  timeline.run(seconds, [&](double t, double) { report_progress(0.1 + 0.9 * t / seconds); });
  stop = true;
  client.join();
  const double run_s = timeline.elapsed();
  const EngineFigures& engine = timeline.engine();
  auto percentile_us = [&](double q) {
    if (latencies_ns.empty()) return 0.0;
    auto nth = latencies_ns.begin() + static_cast<ptrdiff_t>(q * static_cast<double>(latencies_ns.size() - 1));
    std::nth_element(latencies_ns.begin(), nth, latencies_ns.end());
    return *nth / 1e3;
  };
  json r = {{"placement", placement},
            {"mix", mix},
            {"cold_share", cold_share},
            {"cold_ops", archive_ids.empty() ? 0.0 : cold_ops},
            {"replace", replace},
            {"read_share", read_share},
            {"records", records},
            {"value_bytes", value_size},
            {"fast_budget_bytes", fast.limit_bytes},
            {"load_s", load_s},
            {"seconds", run_s},
            {"ops_per_s", static_cast<double>(ops) / run_s},
            {"p50_us", percentile_us(0.50)},
            {"p99_us", percentile_us(0.99)},
            {"fast_hit_ratio", ops ? static_cast<double>(fast_ops) / static_cast<double>(ops) : 0.0},
            {"migrated_bytes", engine.migrated_bytes},
            {"engine_cpu_percent", engine.cpu_percent},
            {"timeline_fields", {"t_s", "fast_hit_ratio", "kops_per_s", "migrated_mib"}},
            {"timeline", timeline.points()}};
  for (char* v : values) tieralloc_free(v);
  report_result(r);
  return 0;
}

}  // namespace tieralloc::bench
