// The portable heat sampler, in the style of the kernel's NUMA-balancing hinting faults: access is
// removed from a random sample of runs of pages, the first fault in a run records that it was
// touched and how soon, and access is restored at once -- by the fault handler for a touched run,
// by the engine for the rest when the window closes.
//
// Heat is per run of 16 pages (64 KiB), not per page: one fault per touched run instead of up to
// sixteen, and a sixteenth of the VMA splits. In this VM a hinting fault costs about 5 us and an
// mprotect under contention tens of microseconds, so page granularity would spend the whole CPU
// budget on a small fraction of a large heap. Hot and cold objects are separated at allocation
// (sites, hints); migration corrects at run granularity, much as HeMem and Memtis use huge pages.
//
// Spans of whole runs are armed and disarmed with one mprotect each (a syscall and a TLB flush
// cost far more than the pages they cover); a run is 16 pages (64 KiB, aligned), so the handler
// finds a page's slot from the fault address alone. Slots live in two fixed tables (this window's and the
// previous one's), so a fault racing with the engine's disarm still finds its slot and resumes.
// The handler is async-signal-safe and allocation-free: a table lookup, a CAS, an mprotect.
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

constexpr size_t kRunPages = 16;
constexpr uintptr_t kRunBytes = kRunPages * 4096;

struct RunResult {
  uintptr_t run;        // run address (kRunBytes-aligned)
  uint32_t fault_us;    // microseconds from arming to the first touch; 0 = untouched
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
  // Arms the spans, up to kMaxRuns runs in all.
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
};

}  // namespace tieralloc::tiering
