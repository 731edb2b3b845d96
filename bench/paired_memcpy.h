// A memcpy baseline interleaved with the path a benchmark measures, for ratios that survive a
// shared machine whose speed drifts from second to second: separate benchmark rows run seconds
// apart, these copies run between the path's own timed stretches.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

namespace tieralloc_bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

class PairedMemcpy {
 public:
  explicit PairedMemcpy(size_t bytes) : bytes_(bytes), dst_(bytes, 1) {}

  // Called after each timed stretch of the path (path_s seconds): copies `bytes` from src as many
  // times as keeps the time spent copying level with the time spent on the path. Whichever is
  // faster, the copies then cost the run about as long as the path itself (a path 1000x faster
  // than memcpy gets a copy every thousand stretches, not one per stretch), and many copies are
  // timed together so that the clock's own cost stays out of a short copy's figure.
  void pace(const void* src, double path_s) {
    path_s_ += path_s;
    if (copy_s_ >= path_s_) return;
    const double per_copy = copies_ ? copy_s_ / static_cast<double>(copies_) : 0;
    const long n = per_copy > 0 ? std::clamp(std::lround((path_s_ - copy_s_) / per_copy), 1L, 1L << 16) : 1;
    const auto t0 = Clock::now();
    for (long i = 0; i < n; ++i) {
      std::memcpy(dst_.data(), src, bytes_);
      benchmark::ClobberMemory();
    }
    copy_s_ += seconds_since(t0);
    copies_ += n;
  }

  bool measured() const { return copies_ > 0 && copy_s_ > 0; }
  double seconds_per_copy() const { return copy_s_ / static_cast<double>(copies_); }
  double bytes_per_second() const { return static_cast<double>(bytes_) / seconds_per_copy(); }

 private:
  size_t bytes_;
  std::vector<char> dst_;
  double path_s_ = 0, copy_s_ = 0;
  long copies_ = 0;
};

}  // namespace tieralloc_bench
