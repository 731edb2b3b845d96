// See large_cache.h. Built on jemalloc's internal headers (like alloc/new.cc): the size classes and
// the lookup of a block's extent are jemalloc's own inline functions, the ones its free runs.
#include "alloc/large_cache.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

extern "C" {
#include "jemalloc/internal/jemalloc_preamble.h"
#include "jemalloc/internal/jemalloc_internal_includes.h"
#include "jemalloc/internal/emap.h"
}

#include "alloc/heap.h"
#include "alloc/jemalloc_abi.h"

namespace tieralloc::alloc {
namespace {

constexpr size_t kMaxBlock = size_t{1} << 20;
// Per size class and per thread: enough for a block that is freed and allocated again, or a few
// alternating; the byte cap bounds what an idle thread holds (jemalloc's own thread cache, and
// glibc's per-thread arenas, hold freed memory the same way).
constexpr uint32_t kSlots = 4;
constexpr size_t kMaxBytes = size_t{4} << 20;
// jemalloc's large classes from its smallest (16 KiB with 4 KiB pages) to kMaxBlock: 25 of them.
constexpr unsigned kMaxClasses = 32;

struct Bin {
  uint32_t count;
  void* slot[kSlots];
};

struct ThreadCache {
  bool exiting;  // flushed by the thread-exit destructor: later frees must not refill it
  bool key_set;
  Bin bins[kMaxClasses];
};

// Zero-initialised and trivially destructible, so no TLS wrapper runs on access.
__attribute__((tls_model("initial-exec"))) constinit thread_local ThreadCache t_cache{};

std::atomic<bool> g_on{false};
unsigned g_nclasses = 0;
pthread_key_t g_exit_key;

void on_thread_exit(void*) {
  t_cache.exiting = true;
  large_cache_flush();
}

[[noreturn]] __attribute__((noinline)) void double_free(const void* ptr) {
  // No allocation here: the heap is what is broken.
  char msg[] = "tieralloc: free(): double free of 0x0000000000000000\n";
  uintptr_t v = reinterpret_cast<uintptr_t>(ptr);
  for (int i = 0; i < 16; ++i) msg[sizeof(msg) - 3 - i] = "0123456789abcdef"[(v >> (4 * i)) & 15];
  ssize_t ignored = write(STDERR_FILENO, msg, sizeof(msg) - 1);
  (void)ignored;
  abort();
}

}  // namespace

constinit thread_local size_t t_large_cache_bytes = 0;

void large_cache_init() {
  if (config_prof && opt_prof) return;
  unsigned n = sz_size2index(kMaxBlock) - SC_NBINS + 1;
  if (n > kMaxClasses || pthread_key_create(&g_exit_key, on_thread_exit) != 0) return;
  g_nclasses = n;
  g_on.store(true, std::memory_order_release);
}

void* large_cache_take(size_t size) {
  // One unsigned compare for SC_SMALL_MAXCLASS < size <= kMaxBlock. While the cache is off, every
  // bin stays empty, so that needs no test here.
  if (size - (SC_SMALL_MAXCLASS + 1) > kMaxBlock - (SC_SMALL_MAXCLASS + 1)) return nullptr;
  const szind_t ind = sz_size2index(size);
  Bin& bin = t_cache.bins[ind - SC_NBINS];
  if (bin.count == 0) return nullptr;
  t_large_cache_bytes -= sz_index2size(ind);
  return bin.slot[--bin.count];
}

namespace {

// Keeps a large block of an automatic arena (class cls, usable size usize); false if there is no room.
bool keep(void* ptr, unsigned cls, size_t usize) {
  Bin& bin = t_cache.bins[cls];
  if (bin.count == kSlots || t_large_cache_bytes + usize > kMaxBytes || t_cache.exiting) return false;
  // Handing one block out twice would corrupt two owners' data; glibc's cache catches this too.
  for (uint32_t i = 0; i < bin.count; ++i)
    if (bin.slot[i] == ptr) double_free(ptr);
  if (!t_cache.key_set) {
    pthread_setspecific(g_exit_key, reinterpret_cast<void*>(1));
    t_cache.key_set = true;
  }
  bin.slot[bin.count++] = ptr;
  t_large_cache_bytes += usize;
  return true;
}

}  // namespace

void large_cache_free(void* ptr, int flags) {
  tsd_t* tsd = tsd_get(false);
  emap_full_alloc_ctx_t ctx;
  // Not nominal: the thread is starting, exiting or reentrant. Not found, or an interior pointer:
  // jemalloc's to report.
  if (!tsd_fast(tsd) || emap_full_alloc_ctx_try_lookup(tsd_tsdn(tsd), &arena_emap_global, ptr, &ctx) ||
      ctx.edata == nullptr || ctx.slab || edata_addr_get(ctx.edata) != ptr)
    return dallocx(ptr, flags);
  // A thread cache or arena in the flags is the caller's choice, for jemalloc to see; an alignment
  // says nothing about where the block may go next.
  const bool plain = (flags & ~MALLOCX_LG_ALIGN_MASK) == 0;
  // A tier's block: routed as tieralloc_free routes it, to its own arena's cache.
  if (edata_arena_ind_get(ctx.edata) >= narenas_auto && plain && heap_free(ptr)) return;
  const unsigned cls = ctx.szind - SC_NBINS;
  if (plain && g_on.load(std::memory_order_relaxed) && cls < g_nclasses && keep(ptr, cls, sz_index2size(ctx.szind)))
    return;
  dallocx(ptr, flags);
}

void large_cache_flush_all() {
  // Past jemalloc's thread cache, which keeps these classes too (tcache_max): a strict retry flushes
  // to give a tier's budget back, which blocks moved into that cache would still hold.
  for (unsigned c = 0; c < g_nclasses; ++c) {
    Bin& bin = t_cache.bins[c];
    while (bin.count > 0) dallocx(bin.slot[--bin.count], MALLOCX_TCACHE_NONE);
  }
  t_large_cache_bytes = 0;
}

}  // namespace tieralloc::alloc
