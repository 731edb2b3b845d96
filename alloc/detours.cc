#include "alloc/detours.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace tieralloc::alloc {

constinit std::atomic<uint32_t> g_detours{0};
constinit std::atomic<bool> g_jemalloc_slow{false};

}  // namespace tieralloc::alloc

// jemalloc's switch for every thread's fast paths (tsd.c): a global count, and each live thread's
// fast-path thresholds set to zero or recomputed. Internal, but the same build as the rest
// (alloc/CMakeLists.txt); a null tsdn is allowed outside jemalloc's debug builds.
extern "C" void je_tsd_global_slow_inc(void* tsdn);
extern "C" void je_tsd_global_slow_dec(void* tsdn);

namespace tieralloc::alloc {
namespace {

// One switch at a time, so that g_jemalloc_slow always says what jemalloc's count holds. Held
// across fork by the atfork handlers, so a child never inherits it taken. They are registered at
// the first switch, after jemalloc registered its own: prepare handlers run in reverse order, so
// this lock is taken before jemalloc's, the order a switch takes them in.
constinit pthread_mutex_t g_sync_mu = PTHREAD_MUTEX_INITIALIZER;
constinit pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
// Bumped after every sync: the futex word jemalloc_slow_await waits on.
constinit std::atomic<uint32_t> g_syncs{0};

void lock_for_fork() { pthread_mutex_lock(&g_sync_mu); }
void unlock_after_fork() { pthread_mutex_unlock(&g_sync_mu); }
void register_atfork() { pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork); }

}  // namespace

void jemalloc_slow_sync() {
  pthread_once(&g_atfork_once, register_atfork);
  pthread_mutex_lock(&g_sync_mu);
  const bool want = detours() != 0;
  if (want != g_jemalloc_slow.load(std::memory_order_relaxed)) {
    if (want) je_tsd_global_slow_inc(nullptr);
    else je_tsd_global_slow_dec(nullptr);
    g_jemalloc_slow.store(want, std::memory_order_release);
  }
  pthread_mutex_unlock(&g_sync_mu);
  g_syncs.fetch_add(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_syncs), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

void detours_add(uint32_t bits) {
  g_detours.fetch_or(bits, std::memory_order_seq_cst);
  jemalloc_slow_sync();
}

void detours_remove(uint32_t bits) {
  g_detours.fetch_and(~bits, std::memory_order_seq_cst);
  jemalloc_slow_sync();
}

void jemalloc_slow_await(int ms) {
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (!jemalloc_slow_matches()) {
    const uint32_t seen = g_syncs.load(std::memory_order_acquire);
    if (jemalloc_slow_matches()) return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const long waited_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (waited_ms >= ms) return;
    struct timespec wait = {0, 1000 * 1000};
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&g_syncs), FUTEX_WAIT_PRIVATE, seen, &wait, nullptr, 0);
  }
}

}  // namespace tieralloc::alloc
