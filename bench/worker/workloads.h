// The workloads of tieralloc-bench-worker, one per `tieralloc bench` workload that runs in-process.
#pragma once

#include "bench/worker/common.h"

namespace tieralloc::bench {

int run_latency(const Args& args);
int run_bandwidth(const Args& args);
int run_gups(const Args& args);
int run_kv(const Args& args);

}  // namespace tieralloc::bench
