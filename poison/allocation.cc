// Allocation while something is quarantined: jemalloc does not know about quarantined pages, so
// every block it returns is checked, and one overlapping a quarantined page is held aside (kept
// allocated, so jemalloc hands out another) until a repair brings the page back.
#include <errno.h>
#include <string.h>

#include <cstdint>

#include "alloc/jemalloc_abi.h"
#include "alloc/tcache_direct.h"
#include "os/memory.h"
#include "os/signals.h"
#include "poison/poison.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::poison {
namespace {

// jemalloc's flag layout (jemalloc.h stays private to alloc/heap.cc).
constexpr int kMallocxZero = 0x40;
constexpr int kMallocxTcacheMask = 0x000fff00;
constexpr int kMallocxTcacheNone = 0x100;
constexpr int kMaxTries = 1 << 16;

// Held-aside blocks; beyond the array's room they are simply never freed (counted).
constexpr size_t kMaxHeld = 1 << 16;
constinit void* g_held[kMaxHeld];
constinit size_t g_nheld = 0;
constinit std::atomic<size_t> g_leaked{0};
constinit std::atomic<pid_t> g_held_lock{0};

void hold(void* p) {
  os::SignalSafeLock lock(g_held_lock);
  if (g_nheld < kMaxHeld) g_held[g_nheld++] = p;
  else g_leaked.fetch_add(1, std::memory_order_relaxed);
}

template <typename Attempt>
void* avoiding(Attempt attempt) {
  for (int tries = 0; tries < kMaxTries; ++tries) {
    void* p = attempt();
    if (!p) return nullptr;
    const size_t n = sallocx(p, 0);
    if (!overlaps_quarantine(p, n) || absorb_free_block(p, n)) return p;
    hold(p);
  }
  errno = ENOMEM;
  return nullptr;
}

int lg(size_t alignment) { return alignment > 1 ? 63 - __builtin_clzll(alignment) : 0; }

// Zeroes [p, p+n) of a block this thread holds alone, so that poison consumed there is repaired
// on the spot (ZeroingScope) rather than reaching the program.
void zero_own(void* p, size_t n) {
  ZeroingScope scope(p, n);
  memset(p, 0, n);
}

// Copies the old block's first n bytes into q; false (EIO) when some of them are poisoned: a
// resize never passes lost data off as good.
bool copy_old(void* q, const void* ptr, size_t n) {
  if (!overlaps_quarantine(ptr, n)) {
    memcpy(q, ptr, n);
    return true;
  }
  size_t nbad = 0;
  ssize_t good = tieralloc_recovery_read(q, ptr, n, nullptr, &nbad);
  if (good == static_cast<ssize_t>(n)) return true;
  errno = EIO;
  return false;
}

}  // namespace

// jemalloc's fast paths are put aside while anything is quarantined: the thread cache serves as
// they would have, and every block is checked all the same.
void* malloc_avoiding(size_t size) { return avoiding([&] { return alloc::default_malloc(size); }); }

void* calloc_avoiding(size_t n, size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = malloc_avoiding(bytes);
  if (p) zero_own(p, bytes);
  return p;
}

void* realloc_avoiding(void* ptr, size_t size) {
  if (!ptr) return malloc_avoiding(size);
  const size_t old = sallocx(ptr, 0);
  if (size && size <= old) return ptr;  // fits: nothing new is handed out
  void* q = malloc_avoiding(size ? size : 1);
  if (!q) {
    errno = ENOMEM;
    return nullptr;
  }
  if (!copy_old(q, ptr, size < old ? size : old)) {
    dallocx(q, 0);
    return nullptr;
  }
  dallocx(ptr, 0);
  return q;
}

int posix_memalign_avoiding(void** out, size_t alignment, size_t size) {
  int rc = 0;
  void* p = avoiding([&]() -> void* {
    void* q = nullptr;
    rc = tl_je_posix_memalign(&q, alignment, size);
    return rc ? nullptr : q;
  });
  if (p) *out = p;
  return rc ? rc : p ? 0 : ENOMEM;
}

void* aligned_alloc_avoiding(size_t alignment, size_t size) {
  void* p = avoiding([&] { return tl_je_mallocx(size ? size : 1, lg(alignment)); });
  if (!p) errno = ENOMEM;
  return p;
}

void* mallocx_avoiding(size_t size, int flags) {
  void* p = avoiding([&] { return tl_je_mallocx(size, flags & ~kMallocxZero); });
  if (p && (flags & kMallocxZero)) zero_own(p, sallocx(p, 0));
  return p;
}

void* rallocx_avoiding(void* ptr, size_t size, int flags) {
  const size_t old = sallocx(ptr, 0);
  void* q = mallocx_avoiding(size, flags & ~kMallocxZero);
  if (!q) return nullptr;
  if (!copy_old(q, ptr, size < old ? size : old)) {
    dallocx(q, kMallocxTcacheNone);
    return nullptr;
  }
  const size_t now = sallocx(q, 0);
  if ((flags & kMallocxZero) && now > old) zero_own(static_cast<char*>(q) + old, now - old);
  dallocx(ptr, flags & kMallocxTcacheMask);
  return q;
}

size_t xallocx_avoiding(void* ptr, size_t size, size_t extra, int flags) {
  const size_t old = sallocx(ptr, 0);
  size_t now = tl_je_xallocx(ptr, size, extra, flags & ~kMallocxZero);
  if (now > old && overlaps_quarantine(static_cast<char*>(ptr) + old, now - old)) now = tl_je_xallocx(ptr, old, 0, 0);
  else if (now > old && (flags & kMallocxZero)) zero_own(static_cast<char*>(ptr) + old, now - old);
  return now;
}

void* new_avoiding(size_t size, size_t alignment) {
  return alignment ? aligned_alloc_avoiding(alignment, size) : malloc_avoiding(size ? size : 1);
}

void release_held_blocks() {
  // Collected under the lock, freed after it: dallocx may take jemalloc's locks.
  constexpr size_t kBatch = 256;
  void* free_now[kBatch];
  for (;;) {
    size_t n = 0;
    {
      os::SignalSafeLock lock(g_held_lock);
      for (size_t i = 0; i < g_nheld && n < kBatch;) {
        if (!overlaps_quarantine(g_held[i], sallocx(g_held[i], 0))) {
          free_now[n++] = g_held[i];
          g_held[i] = g_held[--g_nheld];
        } else {
          ++i;
        }
      }
    }
    for (size_t i = 0; i < n; ++i) dallocx(free_now[i], kMallocxTcacheNone);
    if (n < kBatch) return;
  }
}

bool held_aside(uintptr_t block) {
  os::SignalSafeLock lock(g_held_lock);
  for (size_t i = 0; i < g_nheld; ++i)
    if (reinterpret_cast<uintptr_t>(g_held[i]) == block) return true;
  return false;
}

size_t held_blocks() {
  os::SignalSafeLock lock(g_held_lock);
  return g_nheld;
}

}  // namespace tieralloc::poison
