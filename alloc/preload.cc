// What the malloc family needs beyond what jemalloc exports itself (pvalloc, reallocarray), and the
// library's start-up and exit work (TIERALLOC_STATS).
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "alloc/heap.h"
#include "alloc/options.h"
#include "alloc/process_topology.h"
#include "os/fs.h"
#include "tiering/engine.h"

extern "C" {
void* valloc(size_t size);
void* tl_je_realloc(void* ptr, size_t size);
void* tl_je_memalign(size_t alignment, size_t size);
void* tl_je_aligned_alloc(size_t alignment, size_t size);

// jemalloc 5.3.0 returns NULL from a failed realloc without setting errno (fixed upstream after
// 5.3.0); glibc and POSIX say ENOMEM. The original block is untouched either way.
__attribute__((visibility("default"))) void* realloc(void* ptr, size_t size) {
  void* q = tl_je_realloc(ptr, size);
  if (__builtin_expect(!q && size, 0)) errno = ENOMEM;
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
  void* p = tl_je_memalign(glibc_alignment(alignment), size);
  if (!p) errno = ENOMEM;
  return p;
}

__attribute__((visibility("default"))) void* aligned_alloc(size_t alignment, size_t size) {
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
    write_all(g_stats_fd >= 0 ? g_stats_fd : STDERR_FILENO, stats_table() + "tieralloc: " + heap_stats_json() + "\n");
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
  heap_init();
  std::vector<std::string> ignored;  // heap_init already warned about bad options
  Options o = options_from_env(ignored);
  heap_add_stats_section("tiering", tiering::engine_stats_json);
  tiering::EngineConfig ec;
  ec.migrate = o.migrate;
  ec.sampler_cpu_percent = o.sampler_cpu_percent;
  ec.migrate_rate = o.migrate_rate;
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
