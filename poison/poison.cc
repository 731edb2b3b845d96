// Quarantine state, the fault filters, recovery reads, repair writes and poison events.
#include "poison/poison.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "alloc/detours.h"
#include "alloc/heap.h"
#include "alloc/pagemap.h"
#include "alloc/process_topology.h"
#include "os/fs.h"
#include "os/memory.h"
#include "os/signals.h"
#include "poison/allocations_in_range.h"
#include "poison/badblocks.h"
#include "poison/journal.h"
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
  // Physical address of the page's frame when it was quarantined (0: unknown), for the journal:
  // read then, because a rebuild puts another frame under the address.
  std::atomic<uint64_t> frame{0};
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

// The journal (TIERALLOC_QUARANTINE_FILE): physical ranges found bad, and rebuilds of pages on
// them, queued here under g_lock by the quarantine paths (signal handlers among them) and written
// by the worker thread (flush_journal), never in a handler.
struct JournalRecord {
  uint64_t phys, len;
  int source;
  bool repaired;  // a page on [phys, phys+len) was rebuilt onto a fresh frame
};
constexpr size_t kRecords = 1024;
constinit JournalRecord g_records[kRecords];
constinit size_t g_record_count = 0;  // under g_lock
// Records ever queued, and queued-and-written (the futex word a consumed machine check waits on
// before the program's SIGBUS disposition, which may end the process, runs).
constinit std::atomic<uint32_t> g_records_queued{0}, g_records_written{0};
constinit char g_journal_path[4096] = "";  // "" = no journal; set once, at start-up
constinit std::atomic<bool> g_journal_on{false};
constinit std::atomic<uint64_t> g_records_lost{0}, g_unjournaled{0};
// Pagemap reads of present pages that gave a frame number, and that gave 0 (no CAP_SYS_ADMIN).
constinit std::atomic<uint64_t> g_frames_seen{0}, g_frames_hidden{0};
// Pages moved off known-bad frames (start-up, tieralloc_poison_scan), and what became of those
// frames: parked (kept mapped, inaccessible, so that nobody else is given them while this
// process lives) or released when the parking area is full.
constinit std::atomic<uint64_t> g_relocated{0}, g_released_frames{0};
constinit std::atomic<uintptr_t> g_relocating{0};  // the page being moved now (under g_lock)
constexpr size_t kMaxParked = 4096;
constinit uintptr_t g_park_area = 0;
constinit std::atomic<size_t> g_parked{0};  // changed under g_lock
constinit std::atomic<bool> g_filters_installed{false};

constinit std::atomic<pid_t> g_worker_pid{0};  // process that runs the worker thread (set under g_lock)
constinit std::atomic<pid_t> g_worker_tid{0};

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

// The physical address of the frame under `page` now, or 0 (not resident, or frame numbers
// hidden). Async-signal-safe (open, pread, close).
uint64_t frame_of(uintptr_t page) {
  uint64_t entry = 0;
  if (os::read_pagemap(page, &entry, 1) != 1) return 0;
  const uint64_t pfn = os::pagemap_frame(entry);
  if (entry >> 63) (pfn ? g_frames_seen : g_frames_hidden).fetch_add(1, std::memory_order_relaxed);
  return pfn * kPage;
}

void futex_wake(std::atomic<uint32_t>* word);

// Under g_lock: queues a journal record and wakes the worker.
void push_record(uint64_t phys, uint64_t len, int source, bool repaired) {
  if (!g_journal_on.load(std::memory_order_relaxed)) return;
  if (g_record_count == kRecords) {
    g_records_lost.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  g_records[g_record_count++] = JournalRecord{phys, len, source, repaired};
  g_records_queued.fetch_add(1, std::memory_order_release);
  g_event_seq.fetch_add(1, std::memory_order_release);
  futex_wake(&g_event_seq);
}

// Under g_lock: journals the lines `added` of page (frame `frame`), reported by `source`.
// Reports that came from the journal or from a physical report (journaled whole) add nothing.
void journal_lines(uint64_t frame, uint64_t added, int source) {
  if (!added || source == TIERALLOC_POISON_KNOWN || source == TIERALLOC_POISON_PHYSICAL ||
      !g_journal_on.load(std::memory_order_relaxed))
    return;
  if (!frame) {
    g_unjournaled.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const unsigned first = static_cast<unsigned>(__builtin_ctzll(added)), last = 63u - static_cast<unsigned>(__builtin_clzll(added));
  push_record(frame + first * kLineSize, (last - first + 1) * kLineSize, source, false);
}

// Under g_lock. 1: newly quarantined; 0: lines added to a quarantined page; -ENOSPC.
int insert(uintptr_t page, uint64_t lines, int source) {
  if (Slot* s = find(page)) {
    const uint64_t old = s->bad.fetch_or(lines, std::memory_order_release);
    journal_lines(s->frame.load(std::memory_order_relaxed), lines & ~old, source);
    return 0;
  }
  if (g_quarantined_pages.load(std::memory_order_relaxed) >= kMaxPages) return -ENOSPC;
  size_t i = slot_index(page);
  while (g_slots[i].page.load(std::memory_order_relaxed) > kTombstone) i = (i + 1) & (kSlots - 1);
  g_slots[i].bad.store(lines, std::memory_order_relaxed);
  g_slots[i].written.store(0, std::memory_order_relaxed);
  const uint64_t frame = g_journal_on.load(std::memory_order_relaxed) ? frame_of(page) : 0;
  g_slots[i].frame.store(frame, std::memory_order_relaxed);
  g_slots[i].page.store(page, std::memory_order_release);
  journal_lines(frame, lines, source);
  // Counted before access is taken away: the allocation path must already avoid the page when a
  // fault on it can happen.
  if (g_quarantined_pages.fetch_add(1, std::memory_order_seq_cst) == 0)
    alloc::g_detours.fetch_or(alloc::kQuarantine, std::memory_order_seq_cst);
  uintptr_t lo = g_low.load(std::memory_order_relaxed);
  if (page < lo) g_low.store(page, std::memory_order_relaxed);
  if (page + kPage > g_high.load(std::memory_order_relaxed)) g_high.store(page + kPage, std::memory_order_relaxed);
  os::protect(reinterpret_cast<void*>(page), kPage, os::Access::kNone);
  return 1;
}

// Under g_lock: the slot's page is back in service.
void remove(Slot* s) {
  // The data now lives on a fresh frame; the old one stays in the journal, with one more repair.
  if (uint64_t frame = s->frame.exchange(0, std::memory_order_relaxed)) push_record(frame, kPage, 0, true);
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
    alloc::g_detours.fetch_and(~alloc::kQuarantine, std::memory_order_seq_cst);
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

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

// Called before a consumed machine check goes on to the program's SIGBUS disposition, which may
// end the process: gives the worker up to a second to put the bad frame in the journal first, so
// that the restart does not get it again. Async-signal-safe (futex, clock_gettime); the worker
// never waits for the interrupted thread, except through malloc when the poison was consumed
// inside jemalloc with a lock held, which the time limit covers.
void wait_for_journal() {
  // A worker created but not yet running (its tid still 0) will flush as its first act.
  if (!g_journal_on.load(std::memory_order_relaxed) || g_worker_pid.load(std::memory_order_relaxed) != getpid() ||
      g_worker_tid.load(std::memory_order_relaxed) == static_cast<pid_t>(syscall(SYS_gettid)))
    return;
  const uint32_t target = g_records_queued.load(std::memory_order_acquire);
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    const uint32_t done = g_records_written.load(std::memory_order_acquire);
    if (static_cast<int32_t>(done - target) >= 0) return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const long elapsed_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (elapsed_ms >= 1000) return;
    struct timespec wait = {0, 50 * 1000 * 1000};
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_records_written), FUTEX_WAIT_PRIVATE, done, &wait, nullptr, 0);
  }
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
  // default action) decides, as it would without tieralloc; the page is quarantined either way,
  // and journaled before the decision.
  wait_for_journal();
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

// The journal's two locks are plain pthread mutexes, reset in a forked child: the parent's worker
// may hold one at the fork, and the child's exit flush or statistics would otherwise wait forever.
constinit pthread_mutex_t g_status_mu = PTHREAD_MUTEX_INITIALIZER;  // JournalStatus
constinit pthread_mutex_t g_flush_mu = PTHREAD_MUTEX_INITIALIZER;   // one journal write at a time
void reset_locks_in_child() {
  g_status_mu = PTHREAD_MUTEX_INITIALIZER;
  g_flush_mu = PTHREAD_MUTEX_INITIALIZER;
}
class Guard {
 public:
  explicit Guard(pthread_mutex_t& mu) : mu_(mu) { pthread_mutex_lock(&mu_); }
  ~Guard() { pthread_mutex_unlock(&mu_); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  pthread_mutex_t& mu_;
};

// Journal state for the statistics, written by start-up, tieralloc_poison_scan and the worker,
// under g_status_mu.
struct JournalStatus {
  JournalState state = JournalState::kMissing;
  std::string problem;
  size_t entries = 0;
  size_t badblocks_ranges = 0;
  uint64_t write_errors = 0;
  std::string last_error;
  bool warned_corrupt = false, warned_write = false;
};
JournalStatus& journal_status() {
  static JournalStatus* st = new JournalStatus;  // never destroyed: the worker may outlive exit()
  return *st;
}

// Records the state of a journal just read; a corrupt or newer file is reported once on stderr.
void note_journal_state(const JournalFile& f, bool wrote) {
  JournalStatus& st = journal_status();
  Guard g(g_status_mu);
  st.state = f.state;
  st.problem = f.problem;
  if (f.state == JournalState::kOk || f.state == JournalState::kMissing) st.entries = f.entries.size();
  if ((f.state == JournalState::kCorrupt || f.state == JournalState::kNewer || f.state == JournalState::kUnreadable) &&
      !st.warned_corrupt) {
    st.warned_corrupt = true;
    std::string what = std::string("quarantine journal ") + g_journal_path + " is " + state_name(f.state) + " (" + f.problem + "): ";
    if (f.state == JournalState::kCorrupt)
      what += wrote ? "ignored, and kept as " + std::string(g_journal_path) + ".corrupt beside the new one"
                    : "ignored (it is kept as .corrupt when the journal is next written)";
    else
      what += "ignored, and left as it is";
    alloc::warn(what);
  }
}

// Writes the queued records to the journal. On the worker thread, or at exit; g_flush_mu keeps
// the two from interleaving, and keeps exit from cutting a write in half.
constinit JournalRecord g_batch[kRecords];  // under g_flush_mu

void flush_journal() {
  if (!g_journal_on.load(std::memory_order_relaxed)) return;
  Guard guard(g_flush_mu);
  size_t n;
  uint32_t upto;
  {
    os::SignalSafeLock lock(g_lock);
    n = g_record_count;
    std::memcpy(g_batch, g_records, n * sizeof(JournalRecord));
    g_record_count = 0;
    upto = g_records_queued.load(std::memory_order_relaxed);
  }
  if (n) {
    const int64_t now = static_cast<int64_t>(::time(nullptr));
    JournalFile found;
    size_t entries_after = 0;
    const int rc = update_journal(
        g_journal_path,
        [&](std::vector<JournalEntry>& entries) {
          bool changed = false;
          for (size_t i = 0; i < n; ++i) {
            const JournalRecord& r = g_batch[i];
            if (r.repaired) changed |= note_repair(entries, r.phys, r.len, now);
            else changed |= add_entry(entries, JournalEntry{r.phys, r.len, r.source, now, 0, 0});
          }
          entries_after = entries.size();
          return changed;
        },
        &found);
    note_journal_state(found, rc == 0);
    if (rc < 0) {
      JournalStatus& st = journal_status();
      Guard g(g_status_mu);
      ++st.write_errors;
      st.last_error = rc == -EEXIST ? "a newer tieralloc's journal is in the way" : std::strerror(-rc);
      if (!st.warned_write) {
        st.warned_write = true;
        alloc::warn(std::string("cannot write the quarantine journal ") + g_journal_path + ": " + st.last_error +
                    "; bad memory found now is not remembered after this process");
      }
    } else {
      JournalStatus& st = journal_status();
      Guard g(g_status_mu);
      st.state = JournalState::kOk;
      st.entries = entries_after;
    }
  }
  g_records_written.store(upto, std::memory_order_release);
  futex_wake_all(&g_records_written);
}

// The allocations an event lists; the worker's alone.
constexpr size_t kListed = 4096;
constinit tieralloc_allocation g_listed[kListed];

// The worker thread: writes the journal and delivers events to the application's handler.
void* poison_worker(void*) {
  // Asynchronous signals are the program's threads' business. Faults stay deliverable: this
  // thread touches heap pages (the journal's strings, the application's handler), and a fault
  // there -- a page the sampler armed, a quarantined page -- must reach tieralloc's filters; a
  // blocked synchronous fault kills the process instead.
  sigset_t async;
  sigfillset(&async);
  for (int sync : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP}) sigdelset(&async, sync);
  pthread_sigmask(SIG_BLOCK, &async, nullptr);
  g_worker_tid.store(static_cast<pid_t>(syscall(SYS_gettid)), std::memory_order_release);
  for (;;) {
    uint32_t seen = g_event_seq.load(std::memory_order_acquire);
    // A machine check's handler quarantined something and waits for this (quarantine()).
    alloc::jemalloc_in_step();
    flush_journal();
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
      const long found = allocations_in_range(reinterpret_cast<uintptr_t>(ev.addr), ev.len, g_listed, kListed);
      ev.allocations = g_listed;
      ev.allocations_known = found >= 0;
      ev.nallocations = found < 0 ? 0 : std::min<size_t>(found, kListed);
      ev.allocations_unlisted = found < 0 ? 0 : found - ev.nallocations;
      fn(&ev, arg);
    }
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_event_seq), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
  }
  return nullptr;
}

// Starts the worker in this process unless it runs already (after fork, the child's first call
// here starts its own). 0 or an errno.
int ensure_worker() {
  const pid_t me = getpid();
  {
    os::SignalSafeLock lock(g_lock);
    if (g_worker_pid.load(std::memory_order_relaxed) == me) return 0;
    g_worker_pid.store(me, std::memory_order_relaxed);
    g_worker_tid.store(0, std::memory_order_relaxed);
  }
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int rc = pthread_create(&t, &attr, poison_worker, nullptr);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    os::SignalSafeLock lock(g_lock);
    g_worker_pid.store(0, std::memory_order_relaxed);
  }
  return rc;
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

// Calls fn(page, frame) for every resident page tieralloc manages, frame being the physical
// address of its frame or 0 when frame numbers are hidden. Scans at most 256 GiB of address
// space, so a huge untouched reservation cannot stall it.
template <typename Fn>
void for_each_managed_frame(Fn fn) {
  constexpr size_t kMaxScan = size_t{256} << 30;
  constexpr size_t kBatch = 512;
  size_t scanned = 0;
  uintptr_t at = 0;
  uint64_t entries[kBatch];
  alloc::page_map().for_each_run(0, uintptr_t{1} << 47, [&](alloc::PageEntry e, size_t bytes) {
    const uintptr_t run = at;
    at += bytes;
    if (!e.managed() || scanned >= kMaxScan) return;
    scanned += bytes;
    for (uintptr_t v = run; v < run + bytes;) {
      const size_t n = std::min(kBatch, (run + bytes - v) / kPage);
      const long got = os::read_pagemap(v, entries, n);
      if (got <= 0) return;
      for (long i = 0; i < got; ++i)
        if (entries[i] >> 63) fn(v + static_cast<uintptr_t>(i) * kPage, os::pagemap_frame(entries[i]) * kPage);
      v += static_cast<uintptr_t>(got) * kPage;
    }
  });
}

// A fault on the page being moved off a bad frame (write-protected, then briefly unmapped):
// waits for the move, which holds g_lock, and retries on the new frame.
bool relocation_filter(int, siginfo_t* info, void*) {
  const uintptr_t page = g_relocating.load(std::memory_order_acquire);
  if (!page) return false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  if (a < page || a >= page + kPage) return false;
  os::SignalSafeLock wait_for_the_move(g_lock);
  return true;
}

// Moves the resident managed page at `page` off its frame, which is known bad: a fresh frame
// placed like it (rebuild's fresh_page_like) takes its contents and, in one mremap, its place;
// the old frame is parked in a private inaccessible area, so that the kernel cannot give it to
// anyone else while this process lives (past kMaxParked it is released). 1: moved; 0: left alone
// (quarantined already, or no memory); -1: the page cannot be read (the frame is poisoned for
// real): the caller quarantines the bad lines instead. Without the fault filters (TIERALLOC_POISON
// =off) other threads must not run: start-up only.
int relocate(uintptr_t page) {
  os::SignalSafeLock lock(g_lock);
  if (find(page)) return 0;
  char* fresh = fresh_page_like(page);
  if (!fresh) return 0;
  void* const p = reinterpret_cast<void*>(page);
  const bool guarded = g_filters_installed.load(std::memory_order_relaxed);
  g_relocating.store(page, std::memory_order_seq_cst);
  // A write after the copy would be lost: writers fault and wait in relocation_filter instead.
  if (guarded) os::protect(p, kPage, os::Access::kRead);
  int result = 1;
  if (os::read_own_memory(fresh, p, kPage) != static_cast<long>(kPage)) {
    if (guarded) os::protect(p, kPage, os::Access::kReadWrite);
    os::unmap(fresh, kPage);
    result = -1;
  } else {
    if (!g_park_area) {
      if (void* area = os::map_anonymous(kMaxParked * kPage, kPage)) {
        os::protect(area, kMaxParked * kPage, os::Access::kNone);
        g_park_area = reinterpret_cast<uintptr_t>(area);
      }
    }
    void* slot = g_park_area && g_parked.load(std::memory_order_relaxed) < kMaxParked
                     ? reinterpret_cast<void*>(g_park_area + g_parked.load(std::memory_order_relaxed) * kPage)
                     : nullptr;
    if (slot && os::move_mapping(p, slot, kPage)) {
      ++g_parked;
      os::protect(slot, kPage, os::Access::kNone);
    } else {
      slot = nullptr;
      g_released_frames.fetch_add(1, std::memory_order_relaxed);
    }
    if (os::move_mapping(fresh, p, kPage)) {
      g_relocated.fetch_add(1, std::memory_order_relaxed);
    } else {
      // Only when the kernel is out of memory for page tables: the old frame goes back.
      if (slot) {
        os::protect(slot, kPage, os::Access::kReadWrite);
        os::move_mapping(slot, p, kPage);
        --g_parked;
      } else {
        g_released_frames.fetch_sub(1, std::memory_order_relaxed);
      }
      if (guarded) os::protect(p, kPage, os::Access::kReadWrite);
      os::unmap(fresh, kPage);
      result = 0;
    }
  }
  g_relocating.store(0, std::memory_order_seq_cst);
  return result;
}

struct ApplyResult {
  size_t moved = 0, quarantined = 0;
  bool frames_hidden = false;
};

// Takes every resident managed page on a frame in `bad` (sorted, merged) off it.
ApplyResult apply_known_bad(const std::vector<BadRange>& bad) {
  ApplyResult r;
  if (bad.empty()) return r;
  for_each_managed_frame([&](uintptr_t page, uint64_t frame) {
    if (!frame) {
      r.frames_hidden = true;
      return;
    }
    const uint64_t frame_end = frame + kPage;
    auto it = std::upper_bound(bad.begin(), bad.end(), frame, [](uint64_t f, const BadRange& b) { return f < b.phys; });
    uint64_t lo = UINT64_MAX, hi = 0;
    if (it != bad.begin() && std::prev(it)->phys + std::prev(it)->len > frame) {
      lo = frame;
      hi = std::min(std::prev(it)->phys + std::prev(it)->len, frame_end);
    }
    for (; it != bad.end() && it->phys < frame_end; ++it) {
      lo = std::min(lo, it->phys);
      hi = std::max(hi, std::min(it->phys + it->len, frame_end));
    }
    if (lo >= hi) return;
    const int moved = relocate(page);
    if (moved > 0) ++r.moved;
    else if (moved < 0 && quarantine(page + (lo - frame), hi - lo, TIERALLOC_POISON_KNOWN) == 0) ++r.quarantined;
  });
  return r;
}

// What the journal and the badblocks lists say is bad now, merged.
std::vector<BadRange> load_known_bad() {
  std::vector<BadRange> all;
  if (g_journal_on.load(std::memory_order_relaxed)) {
    JournalFile f = read_journal(g_journal_path);
    note_journal_state(f, false);
    for (const auto& e : f.entries) all.push_back(BadRange{e.phys, e.len, "journal"});
  }
  BadblocksScan b = read_badblocks(os::FsRoot(alloc::process_topology().fsroot));
  {
    JournalStatus& st = journal_status();
    Guard g(g_status_mu);
    st.badblocks_ranges = b.ranges.size();
  }
  for (auto& r : b.ranges) all.push_back(std::move(r));
  return merge_ranges(std::move(all));
}

// Only a process whose worker runs: a forked child that never started one leaves the records it
// inherited to its parent.
void flush_journal_at_exit() {
  if (g_worker_pid.load(std::memory_order_relaxed) == getpid()) flush_journal();
}

std::string json_string(const std::string& v) {
  std::string out;
  os::append_json_string(out, v);
  return out;
}

}  // namespace

void start(const std::string& journal_path) {
  if (journal_path.size() >= sizeof g_journal_path) {
    alloc::warn("TIERALLOC_QUARANTINE_FILE: path too long; no quarantine journal");
  } else if (!journal_path.empty()) {
    std::memcpy(g_journal_path, journal_path.c_str(), journal_path.size() + 1);
    g_journal_on.store(true, std::memory_order_relaxed);
  }
  // Before other threads exist: a page moved now cannot be written meanwhile.
  apply_known_bad(load_known_bad());
  if (g_journal_on.load(std::memory_order_relaxed)) {
    pthread_atfork(nullptr, nullptr, reset_locks_in_child);
    ensure_worker();
    atexit(flush_journal_at_exit);
  }
}

void init(bool enabled) {
  bool expected = false;
  if (!g_initialised.compare_exchange_strong(expected, true)) return;
  if (!enabled) return;
  os::add_fault_filter(SIGBUS, machine_check_filter);
  os::add_fault_filter(SIGSEGV, quarantined_access_filter);
  os::add_fault_filter(SIGSEGV, relocation_filter);
  g_filters_installed.store(true, std::memory_order_release);
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

std::string journal_stats_json() {
  JournalStatus& st = journal_status();
  Guard g(g_status_mu);
  const uint64_t seen = g_frames_seen.load(std::memory_order_relaxed), hidden = g_frames_hidden.load(std::memory_order_relaxed);
  // Frame numbers: visible, hidden (pagemap gives 0 without CAP_SYS_ADMIN: known-bad ranges are
  // kept but cannot be matched to pages, and reports cannot be journaled), or not looked at yet.
  const char* frames = seen ? "visible" : hidden ? "hidden" : "unknown";
  char buf[512];
  snprintf(buf, sizeof buf,
           "\"state\": \"%s\", \"entries\": %zu, \"badblocks_ranges\": %zu, \"frame_numbers\": \"%s\", "
           "\"relocated_pages\": %llu, \"parked_frames\": %zu, \"released_frames\": %llu, \"unjournaled_reports\": %llu, "
           "\"records_lost\": %llu, \"write_errors\": %llu",
           g_journal_on.load(std::memory_order_relaxed) ? state_name(st.state) : "off", st.entries, st.badblocks_ranges, frames,
           static_cast<unsigned long long>(g_relocated.load(std::memory_order_relaxed)), g_parked.load(std::memory_order_relaxed),
           static_cast<unsigned long long>(g_released_frames.load(std::memory_order_relaxed)),
           static_cast<unsigned long long>(g_unjournaled.load(std::memory_order_relaxed)),
           static_cast<unsigned long long>(g_records_lost.load(std::memory_order_relaxed)),
           static_cast<unsigned long long>(st.write_errors));
  return "{\"path\": " + json_string(g_journal_path) + ", " + buf + ", \"problem\": " +
         json_string(st.problem.empty() ? st.last_error : st.problem) + "}";
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
  std::string out = buf;
  out.pop_back();  // the closing brace: the journal goes inside
  return out + ", \"journal\": " + journal_stats_json() + "}";
}

// Machine checks come through a signal handler; every other source from a thread in normal context.
bool from_signal_handler(int source) { return source == TIERALLOC_POISON_CONSUMED || source == TIERALLOC_POISON_FOUND; }

int quarantine(uintptr_t addr, size_t len, int source) {
  const uintptr_t end = addr + len;
  if (!len || end < addr || !managed_range(addr, end)) return -EINVAL;
  {
    os::SignalSafeLock lock(g_lock);
    for (uintptr_t page = addr & ~(kPage - 1); page < end; page += kPage)
      if (int rc = insert(page, lines_of(page, addr & ~(kLineSize - 1), end), source); rc < 0) return rc;
    push_event(addr & ~(kLineSize - 1), ((end + kLineSize - 1) & ~(kLineSize - 1)) - (addr & ~(kLineSize - 1)), source);
  }
  // jemalloc's fast paths, which know nothing of quarantine, are put aside before this returns.
  // A handler cannot take jemalloc's lock for that: the worker (woken by push_event) does it, and
  // the interrupted thread goes on once it has, or after 10 ms; meanwhile, and should the worker
  // not run, every fallback call does it first (alloc/detours.h).
  if (from_signal_handler(source)) alloc::jemalloc_slow_await(10);
  else alloc::jemalloc_slow_sync();
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
  if (g_journal_on.load(std::memory_order_relaxed)) ensure_worker();
  int rc = quarantine(reinterpret_cast<uintptr_t>(addr), len, TIERALLOC_POISON_REPORTED);
  if (rc < 0) {
    errno = -rc;
    return -1;
  }
  return 0;
}

// Physical to virtual through the frame numbers of /proc/self/pagemap, over the memory tieralloc
// manages (resident pages only: a page never touched has no frame, and cannot hold poison yet).
// The range itself is journaled whole, whether or not this process has a page on it.
extern "C" int tieralloc_poison_report_phys(uint64_t phys, size_t len) {
  if (!len || phys + len < phys) {
    errno = EINVAL;
    return -1;
  }
  alloc::heap_init();
  if (g_journal_on.load(std::memory_order_relaxed)) {
    ensure_worker();
    os::SignalSafeLock lock(g_lock);
    push_record(phys, len, TIERALLOC_POISON_PHYSICAL, false);
  }
  const uint64_t phys_end = phys + len;
  bool frames_visible = false;
  int found = 0, failed = 0;
  for_each_managed_frame([&](uintptr_t page, uint64_t frame) {
    if (!frame) return;
    frames_visible = true;
    const uint64_t lo = std::max(frame, phys), hi = std::min(frame + kPage, phys_end);
    if (lo >= hi) return;
    if (quarantine(page + (lo - frame), hi - lo, TIERALLOC_POISON_PHYSICAL) == 0) ++found;
    else ++failed;
  });
  if (found) return 0;
  errno = failed ? ENOSPC : frames_visible ? ENOENT : EPERM;
  return -1;
}

extern "C" int tieralloc_poison_scan(void) {
  alloc::heap_init();
  if (!g_filters_installed.load(std::memory_order_acquire)) {
    errno = ENOTSUP;
    return -1;
  }
  if (g_journal_on.load(std::memory_order_relaxed)) ensure_worker();
  const std::vector<BadRange> bad = load_known_bad();
  const ApplyResult r = apply_known_bad(bad);
  if (!r.moved && !r.quarantined && r.frames_hidden) {
    errno = EPERM;
    return -1;
  }
  return static_cast<int>(r.moved + r.quarantined);
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
  if (rebuilt) {
    release_held_blocks();
    alloc::jemalloc_slow_sync();  // the last page back in service gives jemalloc its fast paths back
  }
  return all_clean ? 0 : 1;
}

extern "C" int tieralloc_set_poison_handler(void (*fn)(const struct tieralloc_poison_event*, void*), void* arg) {
  alloc::heap_init();
  {
    os::SignalSafeLock lock(g_lock);
    g_handler = fn;
    g_handler_arg = arg;
  }
  if (fn) {
    if (int rc = ensure_worker(); rc != 0) {
      os::SignalSafeLock lock(g_lock);
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
