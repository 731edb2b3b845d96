// The portable heat sampler, in the style of the kernel's NUMA-balancing hinting faults: access is
// removed from a random sample of runs of pages, the first fault in a run records that it was
// touched and how soon, and access is restored at once -- by the fault handler for a touched run,
// by the engine for the rest when the window closes.
//
// Heat is per run of 2 MiB, the size of a transparent huge page, as HeMem and Memtis keep it. Taking
// access away is a page-table update per page mapped: on this VM about 90 ns per 4 KiB page, so a
// 64 KiB run cost 3 us to arm and disarm and the 1% CPU budget covered a few hundred MiB a second
// -- seconds for a heap of a few hundred MiB, too slow to follow a moving hot set. On a huge page
// the whole run is one entry: arming and disarming 2 MiB costs about 4.5 us (30 us while the
// application runs on the other CPU: the TLB shootdown, once per mprotect). In gups the 1% budget
// now samples about 800 runs (1.6 GiB) a second, against 750 runs of 64 KiB (47 MiB) a second
// before; the rest of the budget goes to the faults. The engine therefore asks for huge pages on the heap
// (alloc::heap_use_huge_pages) and keeps runs aligned with them: the fault handler restores the
// whole run (restoring part of one would split the huge page), and migration moves whole runs
// (moving part of a huge page moves all of it, so smaller units would lose track of where pages
// are). Objects of different heat within a run are separated at allocation (sites, hints).
//
// Spans of whole runs are armed and disarmed with one mprotect each; a run is 2 MiB-aligned, so
// the handler finds a page's slot from the fault address alone. Slots live in two fixed tables
// (this window's and the previous one's), so a fault racing with the engine's disarm still finds
// its slot and resumes. The handler is async-signal-safe and allocation-free: a table lookup, a
// CAS, an mprotect.
//
// What the portable sampler cannot handle: the kernel's own accesses. A system call that writes
// into an armed page (read(2) into a heap buffer) fails with EFAULT instead of faulting -- `sort`
// under emulated tiers failed with "read failed: Bad address" -- and glibc's internal read calls
// cannot be interposed to retry. So the sampler is opt-in (TIERALLOC_SAMPLER=on), for programs
// that do not hand heap memory to the kernel while it runs or that retry EFAULT; kernel heat
// sources (DAMON, PAGEMAP_SCAN) do not have this limit.
#pragma once

#include <signal.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tieralloc::tiering {

constexpr size_t kRunPages = 512;
constexpr uintptr_t kRunBytes = kRunPages * 4096;

struct RunResult {
  uintptr_t run;        // run address (kRunBytes-aligned)
  uint32_t fault_us;    // microseconds from arming to the first touch (at least 1); 0 = untouched
  uintptr_t fault_addr; // the byte the first touch accessed (0: untouched, or not known), so heat
                        // can be credited to the object that was touched, not only to its run
};

class Sampler {
 public:
  // Installs the fault filter (once per process). False when signals cannot be taken.
  static bool install();
  struct Span {
    uintptr_t addr;  // kRunBytes-aligned, wholly inside memory tieralloc mapped
    size_t runs;
  };
  // Arms the spans, up to kMaxRuns runs (2 GiB) in all.
  static constexpr size_t kMaxRuns = 1024;
  static constexpr size_t kMaxSpans = 256;
  void arm(const Span* spans, size_t n);
  // Disarms every armed run and reports what was touched; returns the number of results.
  size_t disarm(RunResult* out);

  // Cost of the fault handler across the process, in nanoseconds, and faults handled.
  static uint64_t handler_ns();
  static uint64_t faults();

 private:
  size_t nspans_ = 0;
  Span spans_[kMaxSpans] = {};
  uint64_t armed_ns_[kMaxSpans] = {};  // when each span's mprotect returned
};

}  // namespace tieralloc::tiering
