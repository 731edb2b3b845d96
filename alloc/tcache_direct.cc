// See tcache_direct.h. jemalloc's own inline functions, composed as imalloc_fastpath and
// free_fastpath compose them, with the thresholds read from the event counters themselves rather
// than from the fast-path copies the global switch zeroes.
#include "alloc/tcache_direct.h"

extern "C" {
#include "jemalloc/internal/jemalloc_preamble.h"
#include "jemalloc/internal/jemalloc_internal_includes.h"
#include "jemalloc/internal/emap.h"
}

namespace tieralloc::alloc {
namespace {

inline bool slow_only_for_the_switch(tsd_t* tsd) {
  return tsd_state_get(tsd) == tsd_state_nominal_slow && !malloc_slow && tsd_tcache_enabled_get(tsd) &&
         tsd_reentrancy_level_get(tsd) == 0;
}

}  // namespace

void* tcache_direct_alloc(size_t size) {
  if (size > SC_LOOKUP_MAXCLASS) return nullptr;
  tsd_t* tsd = tsd_get(false);
  if (!slow_only_for_the_switch(tsd)) return nullptr;
  szind_t ind;
  size_t usize;
  sz_size2index_usize_fastpath(size, &ind, &usize);
  const uint64_t allocated_after = tsd_thread_allocated_get(tsd) + usize;
  if (allocated_after >= tsd_thread_allocated_next_event_get(tsd)) return nullptr;
  cache_bin_t* bin = &tsd_tcachep_get(tsd)->bins[ind];
  bool ok;
  void* p = cache_bin_alloc_easy(bin, &ok);
  if (!ok) {
    p = cache_bin_alloc(bin, &ok);
    if (!ok) return nullptr;
  }
  *tsd_thread_allocatedp_get(tsd) = allocated_after;
  if (config_stats) bin->tstats.nrequests++;
  return p;
}

bool tcache_direct_free(void* ptr) {
  tsd_t* tsd = tsd_get(false);
  if (!slow_only_for_the_switch(tsd)) return false;
  emap_alloc_ctx_t ctx;
  if (emap_alloc_ctx_try_lookup_fast(tsd, &arena_emap_global, ptr, &ctx) || !ctx.slab) return false;
  const uint64_t deallocated_after = tsd_thread_deallocated_get(tsd) + sz_index2size(ctx.szind);
  if (deallocated_after >= tsd_thread_deallocated_next_event_get(tsd)) return false;
  if (!cache_bin_dalloc_easy(&tsd_tcachep_get(tsd)->bins[ctx.szind], ptr)) return false;
  *tsd_thread_deallocatedp_get(tsd) = deallocated_after;
  return true;
}

}  // namespace tieralloc::alloc
