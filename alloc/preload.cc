// The exported malloc family (jemalloc's entry points behind the poison subsystem's branch, and
// what jemalloc lacks: pvalloc, reallocarray), and the library's start-up and exit work
// (poison filters, TIERALLOC_STATS).
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <string>

#include "alloc/heap.h"
#include "alloc/jemalloc_abi.h"
#include "alloc/large_cache.h"
#include "alloc/new_handler.h"
#include "alloc/options.h"
#include "alloc/process_topology.h"
#include "alloc/sites.h"
#include "alloc/tcache_direct.h"
#include "os/fs.h"
#include "os/signals.h"
#include "poison/poison.h"
#include "tiering/engine.h"

// malloc, free and operator delete are jemalloc's own: their fast paths run with nothing of
// tieralloc's in front, and fall back to je_malloc_default / je_free_default / je_sdallocx_default
// (alloc/jemalloc_weak.h), defined here. The fallbacks run for what jemalloc's fast paths do not
// serve (sizes above 4 KiB, an empty or full thread cache, a thread's first call, jemalloc's
// periodic events), and for every call while the detour word (alloc/detours.h) is nonzero: the
// poison subsystem keeps quarantined pages from being handed out, allocation sites sample and
// steer. operator new takes the same fallback (alloc/new.cc). The entry points without a fast path
// in jemalloc (calloc, realloc, the aligned ones, mallocx, ...) are jemalloc's renamed
// (alloc/jemalloc_renames.txt) behind a test of the word.
#define TIERALLOC_DETOURS(d) __builtin_expect((d) != 0, 0)
#define TIERALLOC_QUARANTINE_ACTIVE() __builtin_expect(tieralloc::poison::anything_quarantined(), 0)
#define TIERALLOC_SITES_ACTIVE(d) __builtin_expect(((d) & tieralloc::alloc::kSiteBits) != 0, 0)
#define TIERALLOC_CALLER() reinterpret_cast<uintptr_t>(__builtin_return_address(0))

using tieralloc::alloc::raw_free;
using tieralloc::alloc::raw_malloc;

namespace {

using tieralloc::alloc::default_malloc;
using tieralloc::alloc::site_alloc;
using tieralloc::alloc::site_decide;
using tieralloc::alloc::site_record;

__attribute__((noinline)) void* malloc_by_site(size_t size, uintptr_t site) {
  bool sampled;
  int tier = site_decide(size, site, &sampled);
  void* p = tier >= 0 ? site_alloc(size, tier, false) : nullptr;
  if (!p) p = default_malloc(size);
  if (sampled) site_record(site, p, size);
  return p;
}

__attribute__((noinline)) void* calloc_by_site(size_t n, size_t size, uintptr_t site) {
  size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) return tl_je_calloc(n, size);  // its ENOMEM
  bool sampled;
  int tier = site_decide(bytes, site, &sampled);
  void* p = tier >= 0 ? site_alloc(bytes, tier, true) : nullptr;
  if (!p) p = tl_je_calloc(n, size);
  if (sampled) site_record(site, p, bytes);
  return p;
}

}  // namespace

extern "C" {

// jemalloc's fast paths declined: see the top of this file. `site` is the caller of malloc (or of
// operator new): jemalloc's malloc reaches its fallback by a tail jump.
__attribute__((visibility("hidden"))) void* tieralloc_malloc_slow(size_t size, uintptr_t site) {
  tieralloc::alloc::jemalloc_in_step();
  const uint32_t d = tieralloc::alloc::detours();
  if (TIERALLOC_DETOURS(d)) {
    tieralloc::alloc::large_cache_flush();
    if (d & tieralloc::alloc::kQuarantine) return tieralloc::poison::malloc_avoiding(size);
    return tieralloc::alloc::site_pass(size, d) ? default_malloc(size) : malloc_by_site(size, site);
  } else if (void* p = tieralloc::alloc::large_cache_take(size)) {
    return p;
  }
  return raw_malloc(size);
}

__attribute__((visibility("hidden"))) void* je_malloc_default(size_t size) {
  return tieralloc_malloc_slow(size, TIERALLOC_CALLER());
}

// While sites are on, free goes through alloc/sites: a freed sample is forgotten (its memory is no
// longer its site's), and while sites steer a block goes back to the thread cache of the arena it
// came from -- jemalloc's free would put a cold site's block in the default cache, for the next
// default allocation of its size class from any site. Otherwise a large block may stay in this
// thread's cache (alloc/large_cache.h). flags: sdallocx's (0 for free).
static inline void free_slow(void* ptr, int flags) {
  tieralloc::alloc::jemalloc_in_step();
  const uint32_t d = tieralloc::alloc::detours();
  if (!TIERALLOC_DETOURS(d)) return tieralloc::alloc::large_cache_free(ptr, flags);
  tieralloc::alloc::large_cache_flush();
  if (TIERALLOC_SITES_ACTIVE(d) && !tieralloc::alloc::site_free_plain(ptr, d)) return tieralloc::alloc::site_free_steered(ptr);
  if (flags != 0) return dallocx(ptr, flags);
  // A small block as jemalloc's free would take it; any other as tieralloc_free routes it, so that
  // a tier's large block goes to its arena's cache whatever the detour word says.
  if (!tieralloc::alloc::tcache_direct_free(ptr) && !tieralloc::alloc::heap_free(ptr)) dallocx(ptr, 0);
}

__attribute__((visibility("hidden"))) void je_free_default(void* ptr) {
  if (ptr) free_slow(ptr, 0);
}

// sdallocx, and the sized operator delete. dallocx rather than sdallocx, whose fast path would
// decline again and come back here.
__attribute__((visibility("hidden"))) void je_sdallocx_default(void* ptr, size_t, int flags) { free_slow(ptr, flags); }

__attribute__((visibility("default"))) void* calloc(size_t n, size_t size) {
  const uint32_t d = tieralloc::alloc::detours();
  if (TIERALLOC_DETOURS(d)) {
    if (d & tieralloc::alloc::kQuarantine) return tieralloc::poison::calloc_avoiding(n, size);
    if (n > 0xffffffffu || size > 0xffffffffu || !tieralloc::alloc::site_pass(n * size, d))
      return calloc_by_site(n, size, TIERALLOC_CALLER());
  }
  return tl_je_calloc(n, size);
}

__attribute__((visibility("default"))) int posix_memalign(void** out, size_t alignment, size_t size) {
  if (TIERALLOC_QUARANTINE_ACTIVE()) return tieralloc::poison::posix_memalign_avoiding(out, alignment, size);
  return tl_je_posix_memalign(out, alignment, size);
}

__attribute__((visibility("default"))) void* valloc(size_t size) {
  if (TIERALLOC_QUARANTINE_ACTIVE()) return tieralloc::poison::aligned_alloc_avoiding(static_cast<size_t>(sysconf(_SC_PAGESIZE)), size);
  return tl_je_valloc(size);
}

__attribute__((visibility("default"))) void* mallocx(size_t size, int flags) {
  if (TIERALLOC_QUARANTINE_ACTIVE()) return tieralloc::poison::mallocx_avoiding(size, flags);
  return tl_je_mallocx(size, flags);
}

__attribute__((visibility("default"))) void* rallocx(void* ptr, size_t size, int flags) {
  if (TIERALLOC_QUARANTINE_ACTIVE()) return tieralloc::poison::rallocx_avoiding(ptr, size, flags);
  return tl_je_rallocx(ptr, size, flags);
}

__attribute__((visibility("default"))) size_t xallocx(void* ptr, size_t size, size_t extra, int flags) {
  if (TIERALLOC_QUARANTINE_ACTIVE()) return tieralloc::poison::xallocx_avoiding(ptr, size, extra, flags);
  return tl_je_xallocx(ptr, size, extra, flags);
}

// jemalloc 5.3.0 returns NULL from a failed realloc without setting errno (fixed upstream after
// 5.3.0); glibc and POSIX say ENOMEM. The original block is untouched either way.
__attribute__((visibility("default"))) void* realloc(void* ptr, size_t size) {
  // A sample may move or be freed (size 0): forgotten either way, as realloc is not sampled.
  const uint32_t d = tieralloc::alloc::detours();
  if (TIERALLOC_SITES_ACTIVE(d) && ptr) tieralloc::alloc::site_forget(ptr);
  void* q = (d & tieralloc::alloc::kQuarantine) ? tieralloc::poison::realloc_avoiding(ptr, size) : tl_je_realloc(ptr, size);
  if (__builtin_expect(!q && size, 0) && errno != EIO) errno = ENOMEM;
  return q;
}

// glibc rounds an alignment that is not a power of two up to the next one; jemalloc fails
// (memalign without setting errno). Programs written against glibc expect a block.
static size_t glibc_alignment(size_t alignment) {
  if (alignment <= 1) return 1;
  if ((alignment & (alignment - 1)) == 0 || alignment > (SIZE_MAX >> 1) + 1) return alignment;
  return size_t{1} << (64 - __builtin_clzll(alignment));
}

__attribute__((visibility("default"))) void* memalign(size_t alignment, size_t size) {
  void* p = TIERALLOC_QUARANTINE_ACTIVE() ? tieralloc::poison::aligned_alloc_avoiding(glibc_alignment(alignment), size)
                                          : tl_je_memalign(glibc_alignment(alignment), size);
  if (!p) errno = ENOMEM;
  return p;
}

__attribute__((visibility("default"))) void* aligned_alloc(size_t alignment, size_t size) {
  if (TIERALLOC_QUARANTINE_ACTIVE()) return tieralloc::poison::aligned_alloc_avoiding(glibc_alignment(alignment), size);
  return tl_je_aligned_alloc(glibc_alignment(alignment), size);
}

// jemalloc does not provide these two; glibc's would hand out glibc heap memory (pvalloc) or
// could bypass the interposed realloc.
__attribute__((visibility("default"))) void* pvalloc(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (size > SIZE_MAX - page) {
    errno = ENOMEM;
    return nullptr;
  }
  return valloc(size ? (size + page - 1) & ~(page - 1) : page);
}

__attribute__((visibility("default"))) void* reallocarray(void* ptr, size_t nmemb, size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(nmemb, size, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(ptr, bytes);
}
}

// The aligned operator new: jemalloc's, renamed, behind the poison subsystem's test (aligned
// allocations are never sampled or steered). The slow path follows the new-handler protocol
// itself, as jemalloc's does.
extern "C" {
void* tl_je_ZnwmSt11align_val_t(size_t, std::align_val_t);
void* tl_je_ZnamSt11align_val_t(size_t, std::align_val_t);
void* tl_je_ZnwmSt11align_val_tRKSt9nothrow_t(size_t, std::align_val_t, const std::nothrow_t&) noexcept;
void* tl_je_ZnamSt11align_val_tRKSt9nothrow_t(size_t, std::align_val_t, const std::nothrow_t&) noexcept;
}

namespace {

__attribute__((noinline)) void* new_avoiding(size_t size, size_t alignment, bool nothrow) {
  auto attempt = [&] { return tieralloc::poison::new_avoiding(size, alignment); };
  if (void* p = attempt()) return p;
  return tieralloc::alloc::retry_with_new_handler(attempt, nothrow);
}

}  // namespace

#define TIERALLOC_NEW(call, size, align, nothrow) \
  if (TIERALLOC_QUARANTINE_ACTIVE()) return new_avoiding(size, align, nothrow); \
  return call

void* operator new(size_t n, std::align_val_t a) {
  TIERALLOC_NEW(tl_je_ZnwmSt11align_val_t(n, a), n, static_cast<size_t>(a), false);
}
void* operator new[](size_t n, std::align_val_t a) {
  TIERALLOC_NEW(tl_je_ZnamSt11align_val_t(n, a), n, static_cast<size_t>(a), false);
}
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
  TIERALLOC_NEW(tl_je_ZnwmSt11align_val_tRKSt9nothrow_t(n, a, t), n, static_cast<size_t>(a), true);
}
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
  TIERALLOC_NEW(tl_je_ZnamSt11align_val_tRKSt9nothrow_t(n, a, t), n, static_cast<size_t>(a), true);
}

namespace tieralloc::alloc {
namespace {

void write_all(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

std::string stats_table() {
  const auto& topo = process_topology();
  std::string o = "tieralloc: per-tier usage at exit";
  o += topo.emulated ? " (EMULATED tiers)\n" : "\n";
  o += "tieralloc:   tier kind     used         peak         limit        extents  fallbacks\n";
  for (int t = 0; t < heap_tier_count(); ++t) {
    TierCounters c = heap_tier_counters(t);
    char line[256];
    snprintf(line, sizeof line, "tieralloc:   %-4d %-8s %-12s %-12s %-12s %-8llu %llu\n", t,
             numa::kind_name(topo.tiers[static_cast<size_t>(t)].kind), os::format_bytes(c.used_bytes).c_str(),
             os::format_bytes(c.peak_bytes).c_str(),
             c.limit_bytes == kNoLimit ? "none" : os::format_bytes(c.limit_bytes).c_str(),
             static_cast<unsigned long long>(c.extents), static_cast<unsigned long long>(c.fallbacks));
    o += line;
  }
  return o;
}

// Constant-initialised: a std::string here would be constructed after tieralloc_start (which runs
// at priority 101) and wipe what it stored.
constinit char g_stats_dest[4096] = "";
// A private copy of stderr: programs built with gnulib (coreutils: sort, ls, ...) close stderr in
// their own atexit handler, which runs before ours.
constinit int g_stats_fd = -1;

void write_stats_at_exit() {
  if (std::strcmp(g_stats_dest, "stderr") == 0) {
    write_all(g_stats_fd >= 0 ? g_stats_fd : STDERR_FILENO,
              stats_table() + tiering::engine_status_text() + "tieralloc: " + heap_stats_json() + "\n");
    return;
  }
  int fd = ::open(g_stats_dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    warn(std::string("TIERALLOC_STATS=") + g_stats_dest + ": cannot open for writing (" + std::strerror(errno) + ")");
    return;
  }
  write_all(fd, heap_stats_json() + "\n");
  ::close(fd);
}

// Priority 101: before the constructors of the program and of libraries loaded after this one,
// so their first allocations already land on tiers.
__attribute__((constructor(101))) void tieralloc_start() {
  os::note_library_started();
  heap_init();
  std::vector<std::string> ignored;  // heap_init already warned about bad options
  Options o = options_from_env(ignored);
  // Poison's fault filters go first: a fault on a quarantined page is never a sampling fault.
  poison::init(o.poison);
  poison::start(o.quarantine_file);
  heap_add_stats_section("tiering", tiering::engine_stats_json);
  heap_add_stats_section("poison", poison::stats_json);
  tiering::EngineConfig ec;
  ec.migrate = o.migrate;
  ec.sampler_cpu_percent = o.sampler_cpu_percent;
  ec.damon = o.damon;
  ec.migrate_rate = o.migrate_rate;
  ec.site_sample_bytes = o.site_sample_bytes;
  tiering::engine_start(ec);
  if (!o.stats.empty()) {
    if (o.stats.size() >= sizeof g_stats_dest) {
      warn("TIERALLOC_STATS: path too long; no statistics at exit");
      return;
    }
    std::memcpy(g_stats_dest, o.stats.c_str(), o.stats.size() + 1);
    if (o.stats == "stderr") g_stats_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 100);
    atexit(write_stats_at_exit);
  }
}

}  // namespace
}  // namespace tieralloc::alloc
