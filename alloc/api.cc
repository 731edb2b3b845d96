// The C API (include/tieralloc/tieralloc.h): argument checking and errno, over alloc/heap.
#include <errno.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "alloc/heap.h"
#include "alloc/process_topology.h"
#include "alloc/sites.h"
#include "tieralloc/tieralloc.h"
#include "tiering/engine.h"

namespace tieralloc::alloc {
namespace {

constexpr int kKnownFlags = TIERALLOC_ZERO | TIERALLOC_HOT | TIERALLOC_COLD | TIERALLOC_STRICT | (0x3f << 4) |
                            (0x7fff << 16);

// Decodes flags into a Request; false (errno EINVAL) for flags that make no sense.
bool decode(int flags, Request* r) {
  heap_init();
  int ntiers = heap_tier_count();
  unsigned lg_align = (static_cast<unsigned>(flags) >> 4) & 0x3f;
  unsigned tier_field = (static_cast<unsigned>(flags) >> 16) & 0x7fff;
  bool hot = flags & TIERALLOC_HOT, cold = flags & TIERALLOC_COLD;
  if ((flags & ~kKnownFlags) || lg_align == 63 || tier_field == 0x7fff || (hot && cold) ||
      (tier_field && static_cast<int>(tier_field) - 1 >= ntiers) ||
      ((flags & TIERALLOC_STRICT) && !tier_field && !hot && !cold)) {
    errno = EINVAL;
    return false;
  }
  r->zero = flags & TIERALLOC_ZERO;
  r->alignment = lg_align ? size_t{1} << lg_align : 0;
  r->strict = flags & TIERALLOC_STRICT;
  if (tier_field) r->tier = static_cast<int>(tier_field) - 1;
  else if (hot) r->tier = 0;
  else if (cold) r->tier = ntiers - 1;
  return true;
}

void report_foreign(const char* fn, const void* ptr) {
  // Reported, not acted on: handing jemalloc a pointer it does not own would corrupt its heap.
  static std::atomic<int> reports{0};
  if (reports.fetch_add(1, std::memory_order_relaxed) < 16) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s(%p): not memory allocated by tieralloc; ignored", fn, ptr);
    warn(buf);
  }
}

// A request without a placement, with allocation sites on (alloc/sites.h): placed by its site's
// class like a plain malloc. Flags that name a tier, hot or cold override the site.
__attribute__((noinline)) void* mallocx_by_site(size_t size, const Request& r, uintptr_t site) {
  bool sampled;
  int tier = site_decide(size, site, &sampled);
  void* p = tier >= 0 ? site_alloc(size, tier, r.zero, r.alignment) : nullptr;
  if (!p) p = heap_alloc(size, r);
  if (sampled) site_record(site, p, size);
  return p;
}

}  // namespace
}  // namespace tieralloc::alloc

using namespace tieralloc::alloc;

extern "C" void* tieralloc_mallocx(size_t size, int flags) {
  Request r;
  if (!decode(flags, &r)) return nullptr;
  if (r.tier < 0 && __builtin_expect(site_mode() != 0, 0))
    return mallocx_by_site(size, r, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
  return heap_alloc(size, r);
}

extern "C" void* tieralloc_reallocx(void* ptr, size_t size, int flags) {
  Request r;
  if (!decode(flags, &r)) return nullptr;
  if (site_mode() && ptr) site_forget(ptr);  // as realloc does (alloc/preload.cc)
  void* q = heap_realloc(ptr, size, r);
  if (!q && errno == EINVAL) report_foreign("tieralloc_reallocx", ptr);
  return q;
}

extern "C" void tieralloc_free(void* ptr) {
  if (!ptr) return;
  heap_init();
  if (site_mode()) site_forget(ptr);  // a freed sample is no longer its site's (alloc/sites.h)
  if (!heap_free(ptr)) {
    report_foreign("tieralloc_free", ptr);
    errno = EINVAL;
  }
}

extern "C" size_t tieralloc_usable_size(const void* ptr) {
  heap_init();
  size_t n = ptr ? heap_usable_size(ptr) : 0;
  if (!n) errno = EINVAL;
  return n;
}

extern "C" int tieralloc_tier_count(void) {
  heap_init();
  return heap_tier_count();
}

extern "C" int tieralloc_tier_info(int tier, struct tieralloc_tier_info* out) {
  heap_init();
  const auto& topo = process_topology();
  if (!out || tier < 0 || tier >= heap_tier_count()) {
    errno = EINVAL;
    return -1;
  }
  const auto& t = topo.tiers[static_cast<size_t>(tier)];
  std::memset(out, 0, sizeof *out);
  out->rank = t.rank;
  std::strncpy(out->kind, tieralloc::numa::kind_name(t.kind), sizeof out->kind - 1);
  for (int id : t.nodes)
    if (out->nnodes < TIERALLOC_MAX_NODES_PER_TIER) out->nodes[out->nnodes++] = id;
  out->capacity_bytes = t.capacity_bytes;
  out->emulated = t.emulated;
  TierCounters c = heap_tier_counters(tier);
  out->used_bytes = c.used_bytes;
  out->limit_bytes = c.limit_bytes;
  return 0;
}

extern "C" int tieralloc_tier_of(const void* addr) {
  heap_init();
  if (!addr) {
    errno = EINVAL;
    return -1;
  }
  int t = heap_tier_of(addr);
  if (t < 0) {
    errno = -t;
    return -1;
  }
  return t;
}

extern "C" int tieralloc_move(void* addr, size_t len, int tier) {
  heap_init();
  if (!addr || tier < 0 || tier >= heap_tier_count()) {
    errno = EINVAL;
    return -1;
  }
  if (len == 0) return 0;
  int rc = heap_move(addr, len, tier);
  if (rc < 0) {
    errno = -rc;
    return -1;
  }
  return 0;
}

extern "C" int tieralloc_hint(void* addr, size_t len, int hint) {
  heap_init();
  int rc = tieralloc::tiering::engine_hint(addr, len, hint);
  if (rc < 0) {
    errno = -rc;
    return -1;
  }
  return 0;
}

extern "C" int tieralloc_stats_json(char* buf, size_t len) {
  heap_init();
  if (!buf && len) {
    errno = EINVAL;
    return -1;
  }
  std::string doc = heap_stats_json();
  if (len) {
    size_t n = std::min(doc.size(), len - 1);
    std::memcpy(buf, doc.data(), n);
    buf[n] = 0;
  }
  return static_cast<int>(doc.size());
}
