// What the poison subsystem costs, each path against its clean counterpart timed between its own
// runs (paired), so that the ratios survive a machine whose speed drifts between seconds:
//
//   BM_MallocFreeQuarantined  malloc+free while pages are quarantined (alloc/preload.cc's
//                             *_avoiding slow path) vs the same pairs with nothing quarantined;
//                             far: one page elsewhere, around: pages on both sides of the blocks;
//                             thousand: 1,000 pages quarantined across the heap
//                             (BM_MallocFreeThousandQuarantined)
//   BM_PoisonCheck            tieralloc_poison_check of a clean range vs memcpy of its bytes
//   BM_RecoveryRead           tieralloc_recovery_read of a clean range, and of one with a
//                             quarantined page, vs memcpy of the same bytes
//   BM_ReportRepairCycle      tieralloc_poison_report + tieralloc_repair_write of one line
//   BM_MachineCheck           a forged SIGBUS BUS_MCEERR_AR/AO up to quarantine (and to the
//                             application's handler) vs a plain signal delivered the same way
//
// bench/microbench.py runs it with TIERALLOC_QUARANTINE_FILE=off: the pages it quarantines are
// healthy and must not enter the user's quarantine journal, and the journal's writer thread would
// share the pinned CPU with the timed paths. Run by hand, set the same.
//
// Linked with libtieralloc.so: malloc is tieralloc's, and only memory tieralloc manages can be
// quarantined. Every page this program quarantines is a whole page it owns, because quarantine
// takes access away from the whole page.
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/paired_memcpy.h"
#include "tests/support/fault.h"
#include "tieralloc/tieralloc.h"

namespace {

using tieralloc::testing::send_fault;
using tieralloc_bench::Clock;
using tieralloc_bench::PairedMemcpy;
using tieralloc_bench::seconds_since;

constexpr size_t kPage = 4096, kLine = 64;
// The line reported bad in a quarantined page: mid-page, so a recovery read of the page has good
// lines on both sides of it (two reads through /proc/self/mem, the usual case).
constexpr size_t kBadLine = 17;

// Whole pages of tieralloc's memory, filled (so they are resident and hold data worth recovering).
char* own_pages(size_t n) {
  auto* p = static_cast<char*>(tieralloc_mallocx(n * kPage, TIERALLOC_ALIGN(kPage)));
  if (p == nullptr) std::abort();
  for (size_t i = 0; i < n * kPage; ++i) p[i] = static_cast<char>(i * 131 + 7);
  return p;
}

// Takes one line of `page` out of service, and puts it back with a repair write. Both must work,
// or the benchmark would measure something other than the path it names.
bool quarantine_line(char* page) { return tieralloc_poison_report(page + kBadLine * kLine, kLine) == 0; }
bool repair_line(char* page) {
  static const std::vector<char> fix(kLine, 'R');
  return tieralloc_repair_write(page + kBadLine * kLine, fix.data(), kLine) == 0;
}

// Repetitions of the path per timed stretch: enough that a stretch lasts microseconds, so the
// clock's own cost does not count.
int reps_for(size_t bytes) { return static_cast<int>(std::clamp<size_t>((size_t{4} << 20) / bytes, 1, 1024)); }

// Times `op` in stretches of reps calls, with memcpy of the same bytes from src interleaved
// (bench/paired_memcpy.h). An iteration is one stretch (its manual time); per-call figures and
// the ratio are counters. moves_bytes: the op copies the bytes (bytes/s is meaningful).
template <typename Op>
void paired_with_memcpy(benchmark::State& state, size_t bytes, int reps, const void* src, Op op, bool moves_bytes = true) {
  PairedMemcpy baseline(bytes);
  double op_s = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) {
      if (!op()) {
        state.SkipWithError("the poison path under test failed");
        return;
      }
    }
    const double s = seconds_since(t0);
    op_s += s;
    state.SetIterationTime(s);
    baseline.pace(src, s);
  }
  const double ops = static_cast<double>(state.iterations()) * reps;
  state.SetItemsProcessed(static_cast<int64_t>(ops));
  if (moves_bytes) state.SetBytesProcessed(static_cast<int64_t>(ops) * static_cast<int64_t>(bytes));
  state.counters["ns_per_op"] = op_s * 1e9 / ops;
  if (!baseline.measured()) return;
  state.counters["memcpy_ns"] = baseline.seconds_per_copy() * 1e9;
  // Above 1: the path is slower than copying the bytes.
  state.counters["time_vs_memcpy"] = (op_s / ops) / baseline.seconds_per_copy();
}

// ---- allocation fast path vs the *_avoiding slow path -------------------------------------------

void* alloc_touched(size_t n) {
  void* p = std::malloc(n);
  if (p == nullptr) std::abort();
  static_cast<volatile char*>(p)[0] = 1;  // keeps the pair from being elided, costs what a user pays
  benchmark::DoNotOptimize(p);
  return p;
}

double malloc_free_batch(size_t n, int ops) {
  auto t0 = Clock::now();
  for (int i = 0; i < ops; ++i) std::free(alloc_touched(n));
  return seconds_since(t0);
}

// What is quarantined while a path runs. Each variant is a benchmark of its own (names like
// BM_RecoveryRead/page_quarantined/65536).
enum class Quarantine {
  kNothing,  // nothing in the process: the one-load fast path
  kFar,      // one page elsewhere: overlap checks end at the address-bounds test
  kAround,   // pages below and above: within the bounds, so the table is looked up page by page
  kInside,   // one page inside the range read (one bad line in it)
};

const char* describe(Quarantine q) {
  switch (q) {
    case Quarantine::kNothing: return "nothing quarantined";
    case Quarantine::kFar: return "one page quarantined elsewhere";
    case Quarantine::kAround: return "pages quarantined below and above";
    case Quarantine::kInside: return "one page of the range quarantined";
  }
  return "";
}

// Pages of tieralloc's memory whose addresses enclose `block` (one from the tier-0 arena, one from
// the default arena: they come from different mappings), or nothing when the layout does not allow
// it. The pages are the caller's to free.
std::vector<char*> pages_around(const void* block) {
  auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  // Where those land depends on how the heap grew before (which arena's reserve a size class
  // comes from): take more until both sides have one, within a bound.
  std::vector<char*> candidates;
  bool below = false, above = false;
  for (int round = 0; round < 128 && !(below && above); ++round)
    for (size_t size : {kPage, 16 * kPage, round < 4 ? 256 * kPage : kPage})
      for (int flags : {0, TIERALLOC_TIER(0)}) {
        char* c = static_cast<char*>(tieralloc_mallocx(size, TIERALLOC_ALIGN(kPage) | flags));
        candidates.push_back(c);
        below = below || addr(c) < addr(block);
        above = above || addr(c) > addr(block);
      }
  auto [lo, hi] = std::minmax_element(candidates.begin(), candidates.end());
  std::vector<char*> chosen;
  if (addr(*lo) < addr(block) && addr(*hi) > addr(block)) chosen = {*lo, *hi};
  for (char* c : candidates)
    if (std::find(chosen.begin(), chosen.end(), c) == chosen.end()) tieralloc_free(c);
  for (char* c : chosen) std::memset(c, 1, kPage);
  return chosen;
}

// Per iteration: a batch of ops malloc/free pairs of n bytes with nothing quarantined, then the
// pages are quarantined and the same batch runs on the slow path, then they are repaired
// (untimed). Both batches hand out the same block (the thread cache's), so they differ only by
// the path. The pages are freed at the end.
void paired_quarantine_batches(benchmark::State& state, size_t n, int ops_per_batch, const std::vector<char*>& pages) {
  double clean_s = 0, slow_s = 0;
  for (auto _ : state) {
    clean_s += malloc_free_batch(n, ops_per_batch);
    if (!std::all_of(pages.begin(), pages.end(), quarantine_line)) {
      state.SkipWithError("tieralloc_poison_report failed");
      return;
    }
    const double s = malloc_free_batch(n, ops_per_batch);
    if (!std::all_of(pages.begin(), pages.end(), repair_line)) {
      state.SkipWithError("tieralloc_repair_write failed");
      return;
    }
    slow_s += s;
    state.SetIterationTime(s);
  }
  const double ops = static_cast<double>(state.iterations()) * ops_per_batch;
  state.SetItemsProcessed(static_cast<int64_t>(ops));
  state.counters["ns_per_op"] = slow_s * 1e9 / ops;
  state.counters["clean_ns_per_op"] = clean_s * 1e9 / ops;
  // Above 1: the slow path costs more than the fast path.
  state.counters["time_vs_clean"] = slow_s / clean_s;
  for (char* p : pages) tieralloc_free(p);
}

void BM_MallocFreeQuarantined(benchmark::State& state, Quarantine where) {
  const auto n = static_cast<size_t>(state.range(0));
  constexpr int kOps = 1024;
  // The block the batches will get: freed last, it is the thread cache's next.
  void* block = alloc_touched(n);
  std::vector<char*> pages = where == Quarantine::kAround ? pages_around(block) : std::vector<char*>{own_pages(1)};
  std::free(block);
  if (pages.empty()) {
    state.SkipWithError("no tieralloc pages on both sides of the allocations to quarantine");
    return;
  }
  state.SetLabel(describe(where));
  paired_quarantine_batches(state, n, kOps, pages);
}
BENCHMARK_CAPTURE(BM_MallocFreeQuarantined, far, Quarantine::kFar)->Arg(64)->Arg(4096)->UseManualTime();

BENCHMARK_CAPTURE(BM_MallocFreeQuarantined, around, Quarantine::kAround)->Arg(64)->Arg(4096)->UseManualTime();

// The figure: malloc/free with 1,000 pages quarantined, against the clean fast path in the
// same iteration. The pages are single-page blocks of the default arena taken in between ordinary
// allocations, so they are spread through the heap around the benchmark's block: the address
// bounds never rule them out and every allocation looks its pages up in the quarantine table.
// Quarantining and repairing 1,000 pages takes tens of milliseconds (untimed), so an iteration is
// a long batch and the iteration count is fixed. Registered after the others: its 1,000 pages
// and fillers change the heap's layout, which `around` depends on.
void BM_MallocFreeThousandQuarantined(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  constexpr int kPages = 1000, kOps = 1 << 16;
  void* block = alloc_touched(n);
  std::vector<char*> pages;
  std::vector<void*> filler;
  for (int i = 0; i < kPages; ++i) {
    pages.push_back(own_pages(1));
    filler.push_back(std::malloc(static_cast<size_t>(64 << (i % 8))));  // spreads the pages apart
  }
  for (void* f : filler) std::free(f);
  // Only its address is compared below, after the free that makes it the thread cache's next.
  const auto block_at = reinterpret_cast<uintptr_t>(block);
  std::free(block);
  const auto [lo, hi] = std::minmax_element(pages.begin(), pages.end());
  const bool around = reinterpret_cast<uintptr_t>(*lo) < block_at && reinterpret_cast<uintptr_t>(*hi) > block_at;
  state.SetLabel("1000 pages quarantined across the heap" + std::string(around ? "" : " (not around the block: bounds test only)"));
  state.counters["quarantined_pages"] = kPages;
  paired_quarantine_batches(state, n, kOps, pages);
}
BENCHMARK(BM_MallocFreeThousandQuarantined)->Arg(64)->Arg(4096)->Iterations(8)->UseManualTime();

// ---- tieralloc_poison_check and tieralloc_recovery_read -----------------------------------------

// n clean pages between two guard pages; kAround quarantines the guards, kInside the middle page.
struct Region {
  Quarantine kind;
  char* base;
  char* range;
  std::vector<char*> quarantined;

  Region(size_t n, Quarantine q) : kind(q), base(own_pages(n + 2)), range(base + kPage) {
    if (q == Quarantine::kAround) quarantined = {base, range + n * kPage};
    if (q == Quarantine::kInside) quarantined = {range + n / 2 * kPage};
  }
  // Quarantines the region's lines and labels the benchmark; false (the benchmark skipped) when a
  // report fails.
  bool quarantine(benchmark::State& state) {
    if (!std::all_of(quarantined.begin(), quarantined.end(), quarantine_line)) {
      state.SkipWithError("tieralloc_poison_report failed");
      return false;
    }
    state.SetLabel(describe(kind));
    return true;
  }
  ~Region() {
    for (char* p : quarantined) repair_line(p);
    tieralloc_free(base);
  }
};

void BM_PoisonCheck(benchmark::State& state, Quarantine q) {
  const auto bytes = static_cast<size_t>(state.range(0));
  Region region(bytes / kPage, q);
  if (!region.quarantine(state)) return;
  // A check copies nothing (no bytes/s); the memcpy says what reading the range would cost instead.
  paired_with_memcpy(
      state, bytes, 256, region.range, [&] { return tieralloc_poison_check(region.range, bytes) == 0; }, false);
}
// 16 pages are looked up one by one; from 64 pages on, the whole quarantine table is scanned.
BENCHMARK_CAPTURE(BM_PoisonCheck, nothing_quarantined, Quarantine::kNothing)
    ->Arg(16 * kPage)->Arg(256 * kPage)->UseManualTime();
BENCHMARK_CAPTURE(BM_PoisonCheck, quarantined_around, Quarantine::kAround)
    ->Arg(16 * kPage)->Arg(256 * kPage)->UseManualTime();

void BM_RecoveryRead(benchmark::State& state, Quarantine q) {
  const auto bytes = static_cast<size_t>(state.range(0));
  Region region(bytes / kPage, q);
  if (!region.quarantine(state)) return;
  std::vector<char> out(bytes);
  // A clean range must come back whole; one quarantined line must come back as exactly that.
  const bool inside = q == Quarantine::kInside;
  const ssize_t want_good = static_cast<ssize_t>(inside ? bytes - kLine : bytes);
  const size_t want_bad = inside ? 1 : 0;
  // memcpy cannot read a quarantined page (no access: it would fault); it copies as many bytes
  // of clean tieralloc memory instead.
  char* clean = inside ? own_pages(bytes / kPage) : region.range;
  paired_with_memcpy(state, bytes, reps_for(bytes), clean, [&] {
    tieralloc_range bad[4];
    size_t nbad = 4;
    return tieralloc_recovery_read(out.data(), region.range, bytes, bad, &nbad) == want_good && nbad == want_bad;
  });
  if (clean != region.range) tieralloc_free(clean);
}
BENCHMARK_CAPTURE(BM_RecoveryRead, clean, Quarantine::kNothing)
    ->Arg(kPage)->Arg(16 * kPage)->Arg(256 * kPage)->UseManualTime();
BENCHMARK_CAPTURE(BM_RecoveryRead, page_quarantined, Quarantine::kInside)
    ->Arg(kPage)->Arg(16 * kPage)->Arg(256 * kPage)->UseManualTime();

// ---- report + repair ----------------------------------------------------------------------------

// One line reported bad, then rewritten: quarantine (protection taken away, event queued), then
// the rebuild (fresh page bound like the old one, good lines copied through /proc/self/mem,
// swapped in with mremap). Per cycle, against a memcpy of one page for scale.
void BM_ReportRepairCycle(benchmark::State& state) {
  char* page = own_pages(1);
  state.SetLabel("one line reported, then rewritten: quarantine and rebuild");
  paired_with_memcpy(
      state, kPage, 16, page, [&] { return quarantine_line(page) && repair_line(page); }, false);
  // Every rebuild must keep the page's good lines.
  for (size_t i = 0; i < kPage; ++i) {
    const bool repaired = i / kLine == kBadLine;
    if (page[i] != (repaired ? 'R' : static_cast<char>(i * 131 + 7))) {
      state.SkipWithError("a repaired page lost its good lines");
      break;
    }
  }
  tieralloc_free(page);
}
BENCHMARK(BM_ReportRepairCycle)->UseManualTime();

// ---- machine-check SIGBUS delivery up to quarantine ---------------------------------------------

std::atomic<unsigned> g_app_bus{0}, g_app_usr{0};
void app_bus_handler(int, siginfo_t*, void*) { g_app_bus.fetch_add(1, std::memory_order_relaxed); }
void app_usr_handler(int, siginfo_t*, void*) { g_app_usr.fetch_add(1, std::memory_order_relaxed); }

bool install(int signo, void (*fn)(int, siginfo_t*, void*)) {
  struct sigaction sa = {};
  sa.sa_sigaction = fn;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  return sigaction(signo, &sa, nullptr) == 0;
}

// The thread sends itself what the kernel sends on a machine check (rt_tgsigqueueinfo with
// BUS_MCEERR_AR/AO, si_addr, si_addr_lsb = 6: one line), as tests/poison does; the real
// hardware path adds the kernel's memory-failure handling, which no process can time. Timed:
// delivery, tieralloc's filter, the quarantine (mprotect, event) and, for AR, the chain to the
// application's SIGBUS handler. Untimed: the repair that resets the page for the next iteration.
// Paired baseline: SIGUSR1 sent the same way to a handler that only counts, i.e. what signal
// delivery itself costs.
void BM_MachineCheck(benchmark::State& state, int code) {
  if (!install(SIGBUS, app_bus_handler) || !install(SIGUSR1, app_usr_handler)) {
    state.SkipWithError("sigaction failed");
    return;
  }
  state.SetLabel(code == BUS_MCEERR_AR ? "BUS_MCEERR_AR (consumed): quarantine, then the application's handler"
                                       : "BUS_MCEERR_AO (found by a scrubber): quarantine only");
  char* page = own_pages(1);
  const size_t q0 = tieralloc_quarantined_bytes();
  double mce_s = 0, plain_s = 0;
  for (auto _ : state) {
    const unsigned bus_before = g_app_bus.load(), usr_before = g_app_usr.load();
    auto t0 = Clock::now();
    const int rc = send_fault(SIGBUS, code, page + kBadLine * kLine + 5, 6);
    const double s = seconds_since(t0);
    // What tieralloc must have done: quarantined the line, and handed AR on (only AR).
    if (rc != 0 || tieralloc_quarantined_bytes() != q0 + kPage ||
        g_app_bus.load() != bus_before + (code == BUS_MCEERR_AR ? 1 : 0)) {
      state.SkipWithError("the machine-check signal was not handled as a machine check");
      break;
    }
    if (!repair_line(page)) {
      state.SkipWithError("tieralloc_repair_write failed");
      break;
    }
    t0 = Clock::now();
    siginfo_t si = {};
    si.si_signo = SIGUSR1;
    si.si_code = SI_QUEUE;
    syscall(SYS_rt_tgsigqueueinfo, getpid(), static_cast<pid_t>(syscall(SYS_gettid)), SIGUSR1, &si);
    plain_s += seconds_since(t0);
    if (g_app_usr.load() != usr_before + 1) {
      state.SkipWithError("SIGUSR1 was not delivered");
      break;
    }
    mce_s += s;
    state.SetIterationTime(s);
  }
  const double n = static_cast<double>(state.iterations());
  if (n > 0 && plain_s > 0) {
    state.counters["plain_signal_ns"] = plain_s * 1e9 / n;
    // Above 1: what tieralloc's handling adds on top of delivering a signal.
    state.counters["time_vs_plain_signal"] = mce_s / plain_s;
  }
  signal(SIGBUS, SIG_DFL);
  signal(SIGUSR1, SIG_DFL);
  tieralloc_free(page);
}
BENCHMARK_CAPTURE(BM_MachineCheck, action_required, BUS_MCEERR_AR)->UseManualTime();
BENCHMARK_CAPTURE(BM_MachineCheck, action_optional, BUS_MCEERR_AO)->UseManualTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const char* poison = std::getenv("TIERALLOC_POISON");
  benchmark::AddCustomContext("tieralloc_poison", poison ? poison : "on (default)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
