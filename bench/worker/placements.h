// The placements `tieralloc bench` compares, shared by the driver (tool/bench.cc) and the worker.
#pragma once

namespace tieralloc::bench {

inline constexpr const char* kPlacements[] = {"all-fast", "all-slow", "first-touch", "static-ratio", "tieralloc"};

}  // namespace tieralloc::bench
