// tieralloc-bench-worker WORKLOAD --option value ...: one measurement, for `tieralloc bench`, which
// starts it once per placement with that placement's environment (see common.h for the protocol).
// Not meant to be run by hand, though it can be: it prints its results as JSON lines.
#include <cstdio>
#include <cstring>

#include "bench/worker/workloads.h"

int main(int argc, char** argv) {
  using namespace tieralloc::bench;
  const char* w = argc > 1 ? argv[1] : "";
  Args args(argc, argv);
  if (!strcmp(w, "latency")) return run_latency(args);
  if (!strcmp(w, "bandwidth")) return run_bandwidth(args);
  if (!strcmp(w, "gups")) return run_gups(args);
  if (!strcmp(w, "kv")) return run_kv(args);
  fprintf(stderr, "usage: tieralloc-bench-worker latency|bandwidth|gups|kv --option value ...\n");
  return 2;
}
