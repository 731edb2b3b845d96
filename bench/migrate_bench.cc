// Migration throughput in bytes/s, each path against a plain memcpy of the same bytes timed
// between its own runs (bench/paired_memcpy.h), so the ratio survives a machine whose speed drifts:
//
//   BM_Memcpy       the reference: memcpy between two resident buffers
//   BM_MovePages    move_pages(2) of every page of a resident buffer that is not tieralloc's
//   BM_EngineMove   tieralloc_move of a tieralloc block: alloc/heap.cc's heap_move, which
//                   tieralloc_hint also runs (mbind with MPOL_MF_MOVE per run of pages, then
//                   move_pages to check where they are, and the page map rewritten). The engine
//                   thread's own heat migrations go through heap_migrate_pages, which no public
//                   call reaches; on real tiers it is move_pages with explicit nodes, as in
//                   BM_MovePages, plus the same page-map bookkeeping.
//
// What a move does depends on the machine, and every row says which in its label and counters:
// with two nodes with memory, pages go back and forth between the first two (a real copy each
// time); with one node, move_pages targets the node the pages are already on, so the kernel walks
// and looks up every page but copies nothing (same_node = 1). BM_EngineMove follows the tiers
// tieralloc sees: on emulated tiers (TIERALLOC_TIERS=emulate:..., set by the runner before the
// library starts) a move only rewrites the page map (emulated = 1); with one real tier it is the
// real system calls, to the same node.
#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/paired_memcpy.h"
#include "tieralloc/tieralloc.h"

namespace {

using tieralloc_bench::Clock;
using tieralloc_bench::PairedMemcpy;
using tieralloc_bench::seconds_since;
constexpr size_t kPage = 4096;

// Nodes this process may allocate on that have memory (cpuset and offline nodes respected).
std::vector<int> memory_nodes() {
  std::vector<int> nodes;
  if (numa_available() < 0) return {0};
  bitmask* allowed = numa_get_mems_allowed();
  for (int n = 0; n <= numa_max_node(); ++n)
    if (numa_bitmask_isbitset(allowed, static_cast<unsigned>(n)) && numa_node_size64(n, nullptr) > 0) nodes.push_back(n);
  numa_bitmask_free(allowed);
  if (nodes.empty()) nodes.push_back(0);
  return nodes;
}

// Anonymous memory outside tieralloc, in 4 KiB pages (no transparent huge pages: a THP would move
// as one unit and the page walk measured would not be the one heap_move issues), all resident.
char* resident_buffer(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, MADV_NOHUGEPAGE);
  std::memset(p, 0x5a, bytes);
  return static_cast<char*>(p);
}

// The path's timed runs with memcpy of the same bytes interleaved (bench/paired_memcpy.h): the
// iteration's (manual) time is the path's; bytes_per_second is the path's, memcpy's a counter.
struct Paired {
  benchmark::State& state;
  size_t bytes;
  PairedMemcpy baseline;
  double path_s = 0;

  Paired(benchmark::State& s, size_t n) : state(s), bytes(n), baseline(n) {}
  void path_took(double s, const void* copy_src) {
    path_s += s;
    state.SetIterationTime(s);
    baseline.pace(copy_src, s);
  }
  void finish() {
    if (state.iterations() == 0 || path_s <= 0 || !baseline.measured()) return;
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
    state.counters["memcpy_bytes_per_second"] = baseline.bytes_per_second();
    // Below 1: the path moves bytes more slowly than memcpy copies them.
    state.counters["speed_vs_memcpy"] = baseline.seconds_per_copy() / (path_s / static_cast<double>(state.iterations()));
  }
};

// One page shows a call's fixed cost: since Linux 5.13, move_pages and mbind with MPOL_MF_MOVE
// first disable and drain every CPU's LRU caches, whatever the number of pages, so small moves are
// slow, and slower on a busy machine. The larger sizes show the per-page cost.
void sizes(benchmark::internal::Benchmark* b) {
  for (long n : {4L << 10, 1L << 20, 16L << 20, 64L << 20}) b->Arg(n);
  b->UseManualTime();
}

void BM_Memcpy(benchmark::State& state) {
  const auto bytes = static_cast<size_t>(state.range(0));
  std::vector<char> src(bytes, 0x5a), dst(bytes, 1);
  for (auto _ : state) {
    auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
    state.SetIterationTime(seconds_since(t0));
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Memcpy)->Apply(sizes);

void BM_MovePages(benchmark::State& state) {
  const auto bytes = static_cast<size_t>(state.range(0));
  const size_t npages = bytes / kPage;
  const std::vector<int> nodes = memory_nodes();
  // Two targets when there are two nodes: every call really migrates. One: the node the pages are
  // on, which the kernel checks page by page and leaves.
  const int a = nodes[0], b = nodes.size() > 1 ? nodes[1] : nodes[0];
  const bool same_node = a == b;
  char* buf = resident_buffer(bytes);
  if (buf == nullptr) {
    state.SkipWithError("mmap failed");
    return;
  }
  std::vector<void*> pages(npages);
  for (size_t i = 0; i < npages; ++i) pages[i] = buf + i * kPage;
  std::vector<int> target(npages), status(npages);
  Paired paired(state, bytes);
  long not_moved = 0;
  int to = b;
  for (auto _ : state) {
    std::fill(target.begin(), target.end(), to);
    auto t0 = Clock::now();
    // MPOL_MF_MOVE: only pages this process alone maps, which is every page of a private buffer.
    const long rc = move_pages(0, npages, pages.data(), target.data(), status.data(), MPOL_MF_MOVE);
    const double s = seconds_since(t0);
    if (rc < 0) {
      state.SkipWithError((std::string("move_pages: ") + std::strerror(errno)).c_str());
      break;
    }
    for (int st : status) not_moved += st != to;  // another node, or -errno
    paired.path_took(s, buf);
    to = to == a ? b : a;
  }
  paired.finish();
  state.counters["same_node"] = same_node;
  state.counters["memory_nodes"] = static_cast<double>(nodes.size());
  // Per call. A page that did not reach the target was not migrated: on a real move this must
  // stay 0, or the bytes/s figure would claim bytes that did not move.
  state.counters["pages_not_moved"] = benchmark::Counter(static_cast<double>(not_moved), benchmark::Counter::kAvgIterations);
  state.SetLabel(same_node ? "move_pages to the node the pages are on (one memory node): page walk, no copy"
                           : "move_pages between node " + std::to_string(a) + " and node " + std::to_string(b));
  munmap(buf, bytes);
}
BENCHMARK(BM_MovePages)->Apply(sizes);

void BM_EngineMove(benchmark::State& state) {
  const auto bytes = static_cast<size_t>(state.range(0));
  const int ntiers = tieralloc_tier_count();
  struct tieralloc_tier_info info {};
  tieralloc_tier_info(0, &info);
  const bool emulated = info.emulated != 0;
  // Back and forth between the two fastest tiers; with one tier, to tier 0, where it is.
  const int a = 0, b = ntiers > 1 ? 1 : 0;
  auto* buf = static_cast<char*>(tieralloc_mallocx(bytes, TIERALLOC_TIER(a) | TIERALLOC_ALIGN(kPage)));
  if (buf == nullptr) {
    state.SkipWithError("tieralloc_mallocx failed (emulated fast tier smaller than the buffer?)");
    return;
  }
  std::memset(buf, 0x5a, bytes);
  Paired paired(state, bytes);
  int to = b;
  for (auto _ : state) {
    auto t0 = Clock::now();
    const int rc = tieralloc_move(buf, bytes, to);
    const double s = seconds_since(t0);
    if (rc != 0 || tieralloc_tier_of(buf) != to || tieralloc_tier_of(buf + bytes - 1) != to) {
      state.SkipWithError((std::string("tieralloc_move did not move the block: ") + std::strerror(errno)).c_str());
      break;
    }
    paired.path_took(s, buf);
    to = to == a ? b : a;
  }
  paired.finish();
  state.counters["emulated"] = emulated;
  state.counters["tiers"] = ntiers;
  state.counters["same_tier"] = a == b;
  state.SetLabel(emulated ? "emulated tiers: the page map is rewritten, no data moves"
                 : a == b ? "one tier: mbind(MPOL_MF_MOVE) and move_pages to the same node, no copy"
                          : "tier 0 <-> tier 1: mbind(MPOL_MF_MOVE), pages copied between nodes");
  tieralloc_free(buf);
}
BENCHMARK(BM_EngineMove)->Apply(sizes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // Which topology the rows ran on, so merged results say it without relying on row labels.
  const char* tiers = std::getenv("TIERALLOC_TIERS");
  benchmark::AddCustomContext("tieralloc_tiers", tiers && *tiers ? tiers : "discovered");
  struct tieralloc_tier_info info {};
  tieralloc_tier_info(0, &info);
  benchmark::AddCustomContext("tieralloc_tier_count", std::to_string(tieralloc_tier_count()));
  benchmark::AddCustomContext("tieralloc_emulated", info.emulated ? "true" : "false");
  std::string nodes;
  for (int n : memory_nodes()) nodes += (nodes.empty() ? "" : ",") + std::to_string(n);
  benchmark::AddCustomContext("memory_nodes", nodes);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
