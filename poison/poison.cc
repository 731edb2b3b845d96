// Quarantine state, the fault filters, recovery reads, repair writes and poison events.
#include "poison/poison.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "alloc/heap.h"
#include "alloc/pagemap.h"
#include "os/memory.h"
#include "os/signals.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::poison {

std::atomic<size_t> g_quarantined_pages{0};

namespace {

constexpr size_t kPage = os::kPageSize;
constexpr uintptr_t kEmpty = 0, kTombstone = 1;

// One quarantined page. `bad` is never zero while `page` names it; `written` marks the lines whose
// repair data waits in `shadow` (a private page) for the rebuild.
struct Slot {
  std::atomic<uintptr_t> page{kEmpty};
  std::atomic<uint64_t> bad{0};
  std::atomic<uint64_t> written{0};
  std::atomic<char*> shadow{nullptr};
};

// Open addressing over page addresses, read lock-free (signal handlers, the allocation slow
// path), written under g_lock. 16384 slots (512 KiB of zero pages until used), at most 3/4 full.
constexpr size_t kSlots = size_t{1} << 14;
constexpr size_t kMaxPages = kSlots / 4 * 3;
constinit Slot g_slots[kSlots];
// Address bounds of everything quarantined since the count was last zero: a quick miss for
// allocations far from any quarantined page.
constinit std::atomic<uintptr_t> g_low{UINTPTR_MAX}, g_high{0};
constinit std::atomic<pid_t> g_lock{0};

struct Event {
  uintptr_t addr;
  size_t len;
  int source;
};
constexpr size_t kEvents = 256;
constinit Event g_events[kEvents];
constinit size_t g_event_head = 0, g_event_count = 0, g_events_lost = 0;  // under g_lock
constinit std::atomic<uint32_t> g_event_seq{0};                               // futex word
using PoisonHandler = void (*)(const tieralloc_poison_event*, void*);
constinit PoisonHandler g_handler = nullptr;  // under g_lock
constinit void* g_handler_arg = nullptr;
constinit pid_t g_handler_thread_pid = 0;  // process that runs the delivery thread

constinit std::atomic<bool> g_initialised{false};
constinit std::atomic<uint64_t> g_stray_accesses{0}, g_ignored_action_optional{0};
// Pages given a fresh frame because what was lost on them was nobody's: consumed inside the
// allocator's own zeroing, or absorbed by free blocks.
constinit std::atomic<uint64_t> g_zeroing_replaced{0}, g_free_absorbed{0};

// This thread's ZeroingScope (empty when start == end). initial-exec: the fault filters read it,
// and __tls_get_addr may allocate.
struct ZeroingRange {
  uintptr_t start, end;
};
__attribute__((tls_model("initial-exec"))) constinit thread_local ZeroingRange t_zeroing{0, 0};

bool inside_zeroing(uintptr_t start, uintptr_t end) {
  const ZeroingRange z = t_zeroing;
  return z.start < z.end && start >= z.start && end <= z.end;
}

size_t slot_index(uintptr_t page) { return static_cast<size_t>((page >> 12) * 0x9E3779B97F4A7C15ull >> 50) & (kSlots - 1); }

Slot* find(uintptr_t page) {
  size_t i = slot_index(page);
  for (size_t n = 0; n < kSlots; ++n, i = (i + 1) & (kSlots - 1)) {
    uintptr_t k = g_slots[i].page.load(std::memory_order_acquire);
    if (k == page) return &g_slots[i];
    if (k == kEmpty) return nullptr;
  }
  return nullptr;
}

uint64_t bad_lines(uintptr_t page) {
  Slot* s = find(page);
  return s ? s->bad.load(std::memory_order_acquire) : 0;
}

uint64_t lines_of(uintptr_t page, uintptr_t start, uintptr_t end) {
  uintptr_t a = std::max(start, page), b = std::min(end, page + kPage);
  unsigned first = static_cast<unsigned>((a - page) / kLineSize), last = static_cast<unsigned>((b - 1 - page) / kLineSize);
  uint64_t upto = last == 63 ? ~0ull : (1ull << (last + 1)) - 1;
  return upto & ~((1ull << first) - 1);
}

// Under g_lock. 1: newly quarantined; 0: lines added to a quarantined page; -ENOSPC.
int insert(uintptr_t page, uint64_t lines) {
  if (Slot* s = find(page)) {
    s->bad.fetch_or(lines, std::memory_order_release);
    return 0;
  }
  if (g_quarantined_pages.load(std::memory_order_relaxed) >= kMaxPages) return -ENOSPC;
  size_t i = slot_index(page);
  while (g_slots[i].page.load(std::memory_order_relaxed) > kTombstone) i = (i + 1) & (kSlots - 1);
  g_slots[i].bad.store(lines, std::memory_order_relaxed);
  g_slots[i].written.store(0, std::memory_order_relaxed);
  g_slots[i].page.store(page, std::memory_order_release);
  // Counted before access is taken away: the allocation path must already avoid the page when a
  // fault on it can happen.
  g_quarantined_pages.fetch_add(1, std::memory_order_seq_cst);
  uintptr_t lo = g_low.load(std::memory_order_relaxed);
  if (page < lo) g_low.store(page, std::memory_order_relaxed);
  if (page + kPage > g_high.load(std::memory_order_relaxed)) g_high.store(page + kPage, std::memory_order_relaxed);
  os::protect(reinterpret_cast<void*>(page), kPage, os::Access::kNone);
  return 1;
}

// Under g_lock: the slot's page is back in service.
void remove(Slot* s) {
  s->bad.store(0, std::memory_order_relaxed);
  s->written.store(0, std::memory_order_relaxed);
  if (char* shadow = s->shadow.exchange(nullptr, std::memory_order_relaxed)) os::unmap(shadow, kPage);
  s->page.store(kTombstone, std::memory_order_release);
  // Tombstones just before an empty slot end no probe chain: empty them, so the table does not
  // silt up over many quarantine/repair cycles.
  size_t i = static_cast<size_t>(s - g_slots);
  if (g_slots[(i + 1) & (kSlots - 1)].page.load(std::memory_order_relaxed) == kEmpty) {
    while (g_slots[i].page.load(std::memory_order_relaxed) == kTombstone) {
      g_slots[i].page.store(kEmpty, std::memory_order_release);
      i = (i + kSlots - 1) & (kSlots - 1);
    }
  }
  if (g_quarantined_pages.fetch_sub(1, std::memory_order_seq_cst) == 1) {
    g_low.store(UINTPTR_MAX, std::memory_order_relaxed);
    g_high.store(0, std::memory_order_relaxed);
  }
}

// A fresh page placed like the managed page at `like` (its tier's node, its arena's policy),
// mapped elsewhere: what replaces a page whose frame is lost. Null when out of memory.
char* fresh_page_like(uintptr_t like) {
  char* fresh = static_cast<char*>(os::map_anonymous(kPage, kPage));
  if (fresh) alloc::heap_bind_like(fresh, kPage, reinterpret_cast<void*>(like));
  return fresh;
}

// Under g_lock: a fresh zeroed page takes the place of `page` in one step (the kernel keeps the
// poisoned frame), and a quarantine the page had ends. For pages that hold nothing anyone needs.
bool replace_with_zero_page(uintptr_t page) {
  char* fresh = fresh_page_like(page);
  if (!fresh) return false;
  if (!os::move_mapping(fresh, reinterpret_cast<void*>(page), kPage)) {
    os::unmap(fresh, kPage);
    return false;
  }
  if (Slot* s = find(page)) remove(s);
  return true;
}

void futex_wake(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

// Under g_lock.
void push_event(uintptr_t addr, size_t len, int source) {
  if (g_event_count == kEvents) {
    ++g_events_lost;
    return;
  }
  g_events[(g_event_head + g_event_count) % kEvents] = Event{addr, len, source};
  ++g_event_count;
  g_event_seq.fetch_add(1, std::memory_order_release);
  futex_wake(&g_event_seq);
}

bool managed_range(uintptr_t start, uintptr_t end) {
  bool all = true;
  alloc::page_map().for_each_run(start & ~(kPage - 1), ((end + kPage - 1) & ~(kPage - 1)) - (start & ~(kPage - 1)),
                                 [&](alloc::PageEntry e, size_t) { all = all && e.managed(); });
  return all;
}

// SIGBUS with BUS_MCEERR_AR (the program consumed poison) or BUS_MCEERR_AO (a scrubber found
// it). si_addr_lsb gives the extent: 6 = one cacheline, 12 = a page, more = a huge page.
bool machine_check_filter(int, siginfo_t* info, void* ucontext) {
  const int code = info->si_code;
  if (code != BUS_MCEERR_AR && code != BUS_MCEERR_AO) return false;
  unsigned lsb = static_cast<unsigned>(info->si_addr_lsb);
  if (lsb < 6 || lsb > 30) lsb = 12;  // unknown extent: the page
  const uintptr_t size = uintptr_t{1} << lsb;
  const uintptr_t start = reinterpret_cast<uintptr_t>(info->si_addr) & ~(size - 1);
  // Consumed by the allocator's own zeroing of a block it holds alone: nothing was lost, and the
  // store can go on on fresh frames. The kernel has already retired the bad one.
  if (code == BUS_MCEERR_AR) {
    const uintptr_t first = start & ~(kPage - 1), end = (start + size + kPage - 1) & ~(kPage - 1);
    if (inside_zeroing(first, end) && managed_range(first, end)) {
      os::SignalSafeLock lock(g_lock);
      bool all = true;
      for (uintptr_t page = first; page < end && all; page += kPage) all = replace_with_zero_page(page);
      if (all) {
        g_zeroing_replaced.fetch_add((end - first) / kPage, std::memory_order_relaxed);
        return true;
      }
    }
  }
  const int rc = quarantine(start, size, code == BUS_MCEERR_AR ? TIERALLOC_POISON_CONSUMED : TIERALLOC_POISON_FOUND);
  if (rc != 0) {
    // Not tieralloc's memory (or no room to record it). An action-optional report is survivable:
    // it never becomes a crash through the default action.
    if (code == BUS_MCEERR_AO && !os::application_handles(SIGBUS)) {
      g_ignored_action_optional.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    return false;
  }
  if (code == BUS_MCEERR_AO) return true;
  // Consumed inside a recovery read: the read reports the line as bad.
  if (os::redirect_guarded_copy(ucontext)) return true;
  // Consumed by the program itself: the data is gone. The application's SIGBUS handler (or the
  // default action) decides, as it would without tieralloc; the page is quarantined either way.
  return false;
}

// A fault on a quarantined page: a recovery read racing a new quarantine (redirected), or a
// stray access by the program (counted, then the application's SIGSEGV disposition).
bool quarantined_access_filter(int, siginfo_t* info, void* ucontext) {
  if (!anything_quarantined()) return false;
  uintptr_t page = reinterpret_cast<uintptr_t>(info->si_addr) & ~(kPage - 1);
  if (!bad_lines(page)) return false;
  if (os::redirect_guarded_copy(ucontext)) return true;
  // Quarantined (a scrubber's report, say) while this thread zeroes it for a block it holds.
  if (inside_zeroing(page, page + kPage)) {
    os::SignalSafeLock lock(g_lock);
    if (!bad_lines(page)) return true;  // repaired meanwhile: the store can go on
    if (replace_with_zero_page(page)) {
      g_zeroing_replaced.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  g_stray_accesses.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void* delivery_thread(void*) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  for (;;) {
    uint32_t seen = g_event_seq.load(std::memory_order_acquire);
    for (;;) {
      tieralloc_poison_event ev = {};
      void (*fn)(const tieralloc_poison_event*, void*) = nullptr;
      void* arg = nullptr;
      {
        os::SignalSafeLock lock(g_lock);
        if (!g_event_count || !g_handler) break;
        const Event& e = g_events[g_event_head];
        ev.addr = reinterpret_cast<void*>(e.addr);
        ev.len = e.len;
        ev.source = e.source;
        ev.lost = g_events_lost;
        g_events_lost = 0;
        g_event_head = (g_event_head + 1) % kEvents;
        --g_event_count;
        fn = g_handler;
        arg = g_handler_arg;
      }
      ev.quarantined = tieralloc_poison_check(ev.addr, ev.len) == 1;
      fn(&ev, arg);
    }
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_event_seq), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
  }
  return nullptr;
}

bool valid_range(const void* p, size_t len) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return p && len && a + len > a;
}

// The bad ranges found so far: the first `cap` are listed, all are counted, adjacent ones merge.
struct BadList {
  tieralloc_range* out;
  size_t cap;
  size_t count = 0;
  size_t last_end = SIZE_MAX;

  void add(size_t offset, size_t len) {
    if (count && offset == last_end) {
      if (count <= cap) out[count - 1].len += len;
    } else {
      if (count < cap) out[count] = tieralloc_range{offset, len};
      ++count;
    }
    last_end = offset + len;
  }
};

// Reads [src, src+len) of quarantined page `page` (len within the page) under g_lock: written
// lines from the repair shadow, bad lines zero-filled and listed, good lines through the
// kernel. A good line the kernel cannot read is poisoned too: it joins the bad lines.
size_t read_quarantined(Slot* s, uintptr_t page, char* dst, uintptr_t src, size_t len, size_t offset, BadList& bad) {
  size_t good = 0;
  const char* shadow = s->shadow.load(std::memory_order_relaxed);
  for (uintptr_t at = src, end = src + len; at < end;) {
    const unsigned line = static_cast<unsigned>((at - page) / kLineSize);
    const uint64_t bit = 1ull << line;
    const uint64_t written = s->written.load(std::memory_order_relaxed), badl = s->bad.load(std::memory_order_relaxed);
    // A run of lines of one kind.
    auto kind = [&](uint64_t b) { return (written & b) ? 1 : (badl & b) ? 2 : 0; };
    const int k = kind(bit);
    uintptr_t run_end = std::min(end, page + (line + 1) * kLineSize);
    while (run_end < end && kind(1ull << ((run_end - page) / kLineSize)) == k)
      run_end = std::min(end, run_end + kLineSize);
    const size_t n = run_end - at;
    char* out = dst + (at - src);
    if (k == 1) {
      std::memcpy(out, shadow + (at - page), n);
      good += n;
    } else if (k == 2) {
      std::memset(out, 0, n);
      bad.add(offset + (at - src), n);
    } else if (os::read_own_memory(out, reinterpret_cast<const void*>(at), n) == static_cast<long>(n)) {
      good += n;
    } else {
      std::memset(out, 0, n);
      s->bad.fetch_or(lines_of(page, at, run_end), std::memory_order_release);
      bad.add(offset + (at - src), n);
    }
    at = run_end;
  }
  return good;
}

// Under g_lock: replaces a quarantined page whose bad lines are all rewritten with a fresh page
// (placed like the old one) holding its good lines and the repair data, then takes it out of
// quarantine. False (page stays quarantined) when a good line turns out unreadable.
bool rebuild(Slot* s, uintptr_t page) {
  char* fresh = fresh_page_like(page);
  if (!fresh) return false;
  const uint64_t written = s->written.load(std::memory_order_relaxed);
  const char* shadow = s->shadow.load(std::memory_order_relaxed);
  for (unsigned line = 0; line < kLinesPerPage;) {
    unsigned end = line + 1;
    const bool from_shadow = written >> line & 1;
    while (end < kLinesPerPage && (written >> end & 1) == from_shadow) ++end;
    const size_t off = line * kLineSize, n = (end - line) * kLineSize;
    if (from_shadow) {
      std::memcpy(fresh + off, shadow + off, n);
    } else if (os::read_own_memory(fresh + off, reinterpret_cast<const void*>(page + off), n) != static_cast<long>(n)) {
      for (unsigned l = line; l < end; ++l)  // find the unreadable lines, keep the rest
        if (os::read_own_memory(fresh + l * kLineSize, reinterpret_cast<const void*>(page + l * kLineSize), kLineSize) !=
            static_cast<long>(kLineSize))
          s->bad.fetch_or(1ull << l, std::memory_order_release);
      os::unmap(fresh, kPage);
      return false;
    }
    line = end;
  }
  // One step: no thread ever sees the page half rebuilt, and it is read-write from then on.
  if (!os::move_mapping(fresh, reinterpret_cast<void*>(page), kPage)) {
    os::unmap(fresh, kPage);
    return false;
  }
  remove(s);
  return true;
}

}  // namespace

void init(bool enabled) {
  bool expected = false;
  if (!g_initialised.compare_exchange_strong(expected, true)) return;
  if (!enabled) return;
  os::add_fault_filter(SIGBUS, machine_check_filter);
  os::add_fault_filter(SIGSEGV, quarantined_access_filter);
}

bool overlaps_quarantine(const void* addr, size_t len) {
  if (!anything_quarantined() || !len) return false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr), end = a + len;
  if (end <= g_low.load(std::memory_order_relaxed) || a >= g_high.load(std::memory_order_relaxed)) return false;
  const uintptr_t first = a & ~(kPage - 1), last = (end - 1) & ~(kPage - 1);
  if ((last - first) / kPage < 64) {
    for (uintptr_t p = first; p <= last; p += kPage)
      if (bad_lines(p)) return true;
    return false;
  }
  for (const Slot& s : g_slots) {
    uintptr_t k = s.page.load(std::memory_order_acquire);
    if (k > kTombstone && k >= first && k <= last && s.bad.load(std::memory_order_acquire)) return true;
  }
  return false;
}

bool absorb_free_block(const void* block, size_t len) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(block), end = a + len;
  // Only whole lines are the block's: a line it shares with a neighbour may hold live data.
  const uintptr_t lo = (a + kLineSize - 1) & ~(kLineSize - 1), hi = end & ~(kLineSize - 1);
  bool rebuilt = false;
  if (lo < hi) {
    os::SignalSafeLock lock(g_lock);
    for (uintptr_t page = lo & ~(kPage - 1); page < hi; page += kPage) {
      Slot* s = find(page);
      if (!s) continue;
      const uint64_t absorbed = lines_of(page, lo, hi) & s->bad.load(std::memory_order_relaxed) &
                                ~s->written.load(std::memory_order_relaxed);
      if (!absorbed) continue;
      char* shadow = s->shadow.load(std::memory_order_relaxed);
      if (!shadow) {
        shadow = static_cast<char*>(os::map_anonymous(kPage, kPage));  // zero-filled
        if (!shadow) continue;
        s->shadow.store(shadow, std::memory_order_relaxed);
      }
      for (unsigned line = 0; line < kLinesPerPage; ++line)
        if (absorbed >> line & 1) std::memset(shadow + line * kLineSize, 0, kLineSize);
      s->written.fetch_or(absorbed, std::memory_order_release);
      if (!(s->bad.load(std::memory_order_relaxed) & ~s->written.load(std::memory_order_relaxed)) && rebuild(s, page)) {
        rebuilt = true;
        g_free_absorbed.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  if (rebuilt) release_held_blocks();
  return !overlaps_quarantine(block, len);
}

ZeroingScope::ZeroingScope(void* addr, size_t len) {
  t_zeroing = ZeroingRange{reinterpret_cast<uintptr_t>(addr), reinterpret_cast<uintptr_t>(addr) + len};
  std::atomic_signal_fence(std::memory_order_seq_cst);  // published before the first store
}

ZeroingScope::~ZeroingScope() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_zeroing = ZeroingRange{0, 0};
}

std::string stats_json() {
  char buf[384];
  snprintf(buf, sizeof buf,
           "{\"quarantined_bytes\": %zu, \"held_blocks\": %zu, \"zeroing_replaced_pages\": %llu, "
           "\"free_absorbed_pages\": %llu, \"stray_accesses\": %llu, \"ignored_action_optional\": %llu}",
           g_quarantined_pages.load(std::memory_order_relaxed) * kPage, held_blocks(),
           static_cast<unsigned long long>(g_zeroing_replaced.load(std::memory_order_relaxed)),
           static_cast<unsigned long long>(g_free_absorbed.load(std::memory_order_relaxed)),
           static_cast<unsigned long long>(g_stray_accesses.load(std::memory_order_relaxed)),
           static_cast<unsigned long long>(g_ignored_action_optional.load(std::memory_order_relaxed)));
  return buf;
}

int quarantine(uintptr_t addr, size_t len, int source) {
  const uintptr_t end = addr + len;
  if (!len || end < addr || !managed_range(addr, end)) return -EINVAL;
  os::SignalSafeLock lock(g_lock);
  for (uintptr_t page = addr & ~(kPage - 1); page < end; page += kPage)
    if (int rc = insert(page, lines_of(page, addr & ~(kLineSize - 1), end)); rc < 0) return rc;
  push_event(addr & ~(kLineSize - 1), ((end + kLineSize - 1) & ~(kLineSize - 1)) - (addr & ~(kLineSize - 1)), source);
  return 0;
}

}  // namespace tieralloc::poison

using namespace tieralloc;
using namespace tieralloc::poison;

extern "C" int tieralloc_poison_report(void* addr, size_t len) {
  if (!valid_range(addr, len)) {
    errno = EINVAL;
    return -1;
  }
  alloc::heap_init();
  int rc = quarantine(reinterpret_cast<uintptr_t>(addr), len, TIERALLOC_POISON_REPORTED);
  if (rc < 0) {
    errno = -rc;
    return -1;
  }
  return 0;
}

// Physical to virtual through the frame numbers of /proc/self/pagemap, over the memory tieralloc
// manages (resident pages only: a page never touched has no frame, and cannot hold poison yet).
// Scans at most kMaxPhysScan of address space, so a huge untouched reservation cannot stall it.
extern "C" int tieralloc_poison_report_phys(uint64_t phys, size_t len) {
  if (!len || phys + len < phys) {
    errno = EINVAL;
    return -1;
  }
  alloc::heap_init();
  constexpr uint64_t kPfnMask = (uint64_t{1} << 55) - 1;
  constexpr size_t kMaxPhysScan = size_t{256} << 30;
  constexpr size_t kBatch = 512;
  const uint64_t phys_end = phys + len;
  bool frames_visible = false;
  int found = 0, failed = 0;
  size_t scanned = 0;
  uintptr_t at = 0;
  uint64_t entries[kBatch];
  alloc::page_map().for_each_run(0, uintptr_t{1} << 47, [&](alloc::PageEntry e, size_t bytes) {
    const uintptr_t run = at;
    at += bytes;
    if (!e.managed() || scanned >= kMaxPhysScan) return;
    scanned += bytes;
    for (uintptr_t v = run; v < run + bytes;) {
      size_t n = std::min(kBatch, (run + bytes - v) / kPage);
      long got = os::read_pagemap(v, entries, n);
      if (got <= 0) return;
      for (long i = 0; i < got; ++i) {
        if (!(entries[i] >> 63)) continue;
        const uint64_t pfn = entries[i] & kPfnMask;
        if (!pfn) continue;
        frames_visible = true;
        const uint64_t frame = pfn * kPage, lo = std::max(frame, phys), hi = std::min(frame + kPage, phys_end);
        if (lo >= hi) continue;
        const uintptr_t va = v + static_cast<uintptr_t>(i) * kPage + (lo - frame);
        if (quarantine(va, hi - lo, TIERALLOC_POISON_PHYSICAL) == 0) ++found;
        else ++failed;
      }
      v += static_cast<uintptr_t>(got) * kPage;
    }
  });
  if (found) return 0;
  errno = failed ? ENOSPC : frames_visible ? ENOENT : EPERM;
  return -1;
}

extern "C" int tieralloc_poison_check(const void* addr, size_t len) {
  if (!valid_range(addr, len)) {
    errno = EINVAL;
    return -1;
  }
  return overlaps_quarantine(addr, len) ? 1 : 0;
}

extern "C" size_t tieralloc_quarantined_bytes(void) { return g_quarantined_pages.load(std::memory_order_relaxed) * kPage; }

extern "C" ssize_t tieralloc_recovery_read(void* dst, const void* src, size_t len, struct tieralloc_range* bad, size_t* nbad) {
  if (len && (!dst || !src || reinterpret_cast<uintptr_t>(src) + len < reinterpret_cast<uintptr_t>(src))) {
    errno = EINVAL;
    return -1;
  }
  if (bad && !nbad) {
    errno = EINVAL;
    return -1;
  }
  BadList list{bad, bad ? *nbad : 0};
  size_t good = 0;
  char* out = static_cast<char*>(dst);
  const uintptr_t base = reinterpret_cast<uintptr_t>(src);
  for (size_t pos = 0; pos < len;) {
    const uintptr_t at = base + pos, page = at & ~(kPage - 1);
    const size_t chunk = std::min(len - pos, page + kPage - at);
    if (!bad_lines(page)) {
      const size_t copied = os::guarded_copy(out + pos, reinterpret_cast<const void*>(at), chunk);
      good += copied;
      pos += copied;
      if (copied == chunk) continue;
      // The copy faulted: on poison the filter has quarantined the line (the loop goes on with the
      // page's lines); anything else is not memory to read.
      if (!bad_lines(page)) {
        errno = EFAULT;
        return -1;
      }
      continue;
    }
    os::SignalSafeLock lock(g_lock);
    Slot* s = find(page);
    if (!s) continue;  // repaired meanwhile: read it plainly
    good += read_quarantined(s, page, out + pos, at, chunk, pos, list);
    pos += chunk;
  }
  if (nbad) *nbad = list.count;
  return static_cast<ssize_t>(good);
}

extern "C" int tieralloc_repair_write(void* dst, const void* src, size_t len) {
  if (!valid_range(dst, len) || !src) {
    errno = EINVAL;
    return -1;
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(dst), end = start + len;
  if (!managed_range(start, end)) {
    errno = EINVAL;
    return -1;
  }
  const char* in = static_cast<const char*>(src);
  bool rebuilt = false, all_clean = true;
  {
    os::SignalSafeLock lock(g_lock);
    // Check everything before writing anything: every bad line touched must be wholly covered,
    // and a good line partly covered must still be readable (its other bytes are kept).
    char edge[2][kLineSize];
    for (uintptr_t page = start & ~(kPage - 1); page < end; page += kPage) {
      Slot* s = find(page);
      if (!s) continue;
      const uint64_t touched = lines_of(page, start, end);
      const uint64_t bad = s->bad.load(std::memory_order_relaxed) & ~s->written.load(std::memory_order_relaxed);
      for (unsigned line = 0; line < kLinesPerPage; ++line) {
        if (!(touched >> line & 1)) continue;
        const uintptr_t ls = page + line * kLineSize, le = ls + kLineSize;
        if (ls >= start && le <= end) continue;
        if (bad >> line & 1) {
          errno = EINVAL;
          return -1;
        }
        if (s->written.load(std::memory_order_relaxed) >> line & 1) continue;
        char* keep = edge[ls < start ? 0 : 1];
        if (os::read_own_memory(keep, reinterpret_cast<const void*>(ls), kLineSize) != static_cast<long>(kLineSize)) {
          s->bad.fetch_or(1ull << line, std::memory_order_release);
          errno = EINVAL;
          return -1;
        }
        if (ls < start && le > end) std::memcpy(edge[1], keep, kLineSize);  // one line, cut at both ends
      }
      if (!s->shadow.load(std::memory_order_relaxed)) {
        char* shadow = static_cast<char*>(os::map_anonymous(kPage, kPage));
        if (!shadow) {
          errno = ENOMEM;
          return -1;
        }
        s->shadow.store(shadow, std::memory_order_relaxed);
      }
    }
    for (uintptr_t page = start & ~(kPage - 1); page < end; page += kPage) {
      const uintptr_t a = std::max(start, page), b = std::min(end, page + kPage);
      Slot* s = find(page);
      if (!s) {
        std::memcpy(reinterpret_cast<void*>(a), in + (a - start), b - a);
        continue;
      }
      char* shadow = s->shadow.load(std::memory_order_relaxed);
      const uint64_t touched = lines_of(page, start, end);
      const uint64_t written = s->written.load(std::memory_order_relaxed);
      // Partly covered lines not yet in the shadow start from the memory's current contents.
      const uintptr_t first_line = a & ~(kLineSize - 1), last_line = (b - 1) & ~(kLineSize - 1);
      if (first_line < start && !(written >> ((first_line - page) / kLineSize) & 1))
        std::memcpy(shadow + (first_line - page), edge[0], kLineSize);
      if (last_line + kLineSize > end && !(written >> ((last_line - page) / kLineSize) & 1))
        std::memcpy(shadow + (last_line - page), edge[1], kLineSize);
      std::memcpy(shadow + (a - page), in + (a - start), b - a);
      s->written.fetch_or(touched, std::memory_order_release);
      if (s->bad.load(std::memory_order_relaxed) & ~s->written.load(std::memory_order_relaxed)) {
        all_clean = false;
      } else if (rebuild(s, page)) {
        rebuilt = true;
      } else {
        all_clean = false;
      }
    }
  }
  if (rebuilt) release_held_blocks();
  return all_clean ? 0 : 1;
}

extern "C" int tieralloc_set_poison_handler(void (*fn)(const struct tieralloc_poison_event*, void*), void* arg) {
  alloc::heap_init();
  const pid_t me = getpid();
  bool start = false;
  {
    os::SignalSafeLock lock(g_lock);
    g_handler = fn;
    g_handler_arg = arg;
    if (fn && g_handler_thread_pid != me) {
      g_handler_thread_pid = me;
      start = true;
    }
  }
  if (start) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, delivery_thread, nullptr);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      os::SignalSafeLock lock(g_lock);
      g_handler_thread_pid = 0;
      g_handler = nullptr;
      errno = rc;
      return -1;
    }
  }
  // Events queued before the handler existed are delivered now.
  g_event_seq.fetch_add(1, std::memory_order_release);
  futex_wake(&g_event_seq);
  return 0;
}
