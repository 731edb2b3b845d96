#include "tiering/sampler.h"

#include <sys/mman.h>
#include <time.h>

#include <algorithm>

#include "os/signals.h"
#include "poison/poison.h"

namespace tieralloc::tiering {
namespace {

struct Slot {
  std::atomic<uintptr_t> run{0};
  std::atomic<uint64_t> fault_ns{0};  // when the first touch arrived; 0 = untouched
  std::atomic<uintptr_t> fault_addr{0};
};

constexpr size_t kSlots = 2 * Sampler::kMaxRuns;  // power of two, at most half full
Slot g_tables[2][kSlots];
std::atomic<int> g_current{0};
std::atomic<uint64_t> g_handler_ns{0}, g_faults{0};

uint64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

size_t home(uintptr_t run) { return (run / kRunBytes * 0x9E3779B97F4A7C15ull >> 32) & (kSlots - 1); }

Slot* find(Slot* table, uintptr_t run) {
  for (size_t i = home(run), probes = 0; probes < kSlots; i = (i + 1) & (kSlots - 1), ++probes) {
    uintptr_t r = table[i].run.load(std::memory_order_acquire);
    if (r == run) return &table[i];
    if (r == 0) return nullptr;
  }
  return nullptr;
}

// Gives [addr, addr+len) back its access, except pages quarantined meanwhile (poison/).
void restore(uintptr_t addr, size_t len) {
  if (!poison::anything_quarantined() || !poison::overlaps_quarantine(reinterpret_cast<void*>(addr), len)) {
    mprotect(reinterpret_cast<void*>(addr), len, PROT_READ | PROT_WRITE);
    return;
  }
  for (uintptr_t p = addr; p < addr + len; p += 4096)
    if (!poison::overlaps_quarantine(reinterpret_cast<void*>(p), 4096)) mprotect(reinterpret_cast<void*>(p), 4096, PROT_READ | PROT_WRITE);
}

bool on_fault(int, siginfo_t* info, void*) {
  if (info->si_code != SEGV_ACCERR) return false;
  uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  uintptr_t run = addr & ~(kRunBytes - 1);
  // A quarantined page stays without access whatever else happens to its run.
  if (poison::anything_quarantined() && poison::overlaps_quarantine(reinterpret_cast<void*>(addr), 1)) return false;
  int cur = g_current.load(std::memory_order_acquire);
  Slot* s = find(g_tables[cur], run);
  if (!s) s = find(g_tables[1 - cur], run);  // armed in the window that just closed
  if (!s) return false;
  uint64_t t = now_ns(), expected = 0;
  // Only the first touch is recorded: the run's time and the address it touched go together.
  if (s->fault_ns.compare_exchange_strong(expected, t, std::memory_order_relaxed))
    s->fault_addr.store(addr, std::memory_order_relaxed);
  // Resumes the access whether or not the engine disarmed the run meanwhile: restoring access
  // twice is harmless, and the run was readable and writable before it was armed.
  restore(run, kRunBytes);
  g_faults.fetch_add(1, std::memory_order_relaxed);
  g_handler_ns.fetch_add(now_ns() - t, std::memory_order_relaxed);
  return true;
}

}  // namespace

bool Sampler::install() {
  static std::atomic<int> installed{0};
  int expected = 0;
  if (installed.compare_exchange_strong(expected, 1)) installed.store(os::add_fault_filter(SIGSEGV, on_fault) ? 2 : 3);
  while (installed.load() == 1) {
  }
  return installed.load() == 2;
}

void Sampler::arm(const Span* spans, size_t n) {
  // The table not in use becomes this window's: cleared, filled, published, then the spans armed,
  // so a fault on an armed page always finds its slot.
  int next = 1 - g_current.load(std::memory_order_relaxed);
  Slot* table = g_tables[next];
  for (size_t i = 0; i < kSlots; ++i) {
    if (table[i].run.load(std::memory_order_relaxed) == 0) continue;
    table[i].run.store(0, std::memory_order_relaxed);
    table[i].fault_ns.store(0, std::memory_order_relaxed);
    table[i].fault_addr.store(0, std::memory_order_relaxed);
  }
  size_t total = 0;
  nspans_ = 0;
  for (size_t k = 0; k < n && nspans_ < kMaxSpans && total + spans[k].runs <= kMaxRuns; ++k) {
    if (poison::anything_quarantined() && poison::overlaps_quarantine(reinterpret_cast<void*>(spans[k].addr), spans[k].runs * kRunBytes))
      continue;
    for (size_t r = 0; r < spans[k].runs; ++r) {
      uintptr_t run = spans[k].addr + r * kRunBytes;
      size_t i = home(run);
      while (table[i].run.load(std::memory_order_relaxed) != 0) i = (i + 1) & (kSlots - 1);
      table[i].run.store(run, std::memory_order_release);
    }
    total += spans[k].runs;
    spans_[nspans_++] = spans[k];
  }
  g_current.store(next, std::memory_order_release);
  for (size_t k = 0; k < nspans_; ++k) {
    if (mprotect(reinterpret_cast<void*>(spans_[k].addr), spans_[k].runs * kRunBytes, PROT_NONE) != 0)
      spans_[k].runs = 0;  // not armed (unmapped meanwhile): reported as nothing
    // A span's clock starts when its mprotect returns. Most of that call is the TLB shootdown
    // (tens of microseconds on a VM), and a hot run faults as soon as the shootdown reaches the
    // application's CPU, before the call returns: its time to first touch counts as the least.
    armed_ns_[k] = now_ns();
  }
}

size_t Sampler::disarm(RunResult* out) {
  Slot* table = g_tables[g_current.load(std::memory_order_relaxed)];
  for (size_t k = 0; k < nspans_; ++k)
    if (spans_[k].runs) restore(spans_[k].addr, spans_[k].runs * kRunBytes);
  size_t n = 0;
  for (size_t k = 0; k < nspans_; ++k) {
    for (size_t r = 0; r < spans_[k].runs; ++r) {
      Slot* s = find(table, spans_[k].addr + r * kRunBytes);
      if (!s) continue;
      RunResult& res = out[n++];
      res.run = spans_[k].addr + r * kRunBytes;
      const uint64_t t = s->fault_ns.load(std::memory_order_relaxed);
      const uint64_t us = t > armed_ns_[k] ? (t - armed_ns_[k]) / 1000 : 0;
      res.fault_us = t ? static_cast<uint32_t>(std::clamp<uint64_t>(us, 1, UINT32_MAX - 1)) : 0;
      res.fault_addr = t ? s->fault_addr.load(std::memory_order_relaxed) : 0;
    }
  }
  nspans_ = 0;
  return n;
}

uint64_t Sampler::handler_ns() { return g_handler_ns.load(std::memory_order_relaxed); }
uint64_t Sampler::faults() { return g_faults.load(std::memory_order_relaxed); }

}  // namespace tieralloc::tiering
