// The C API (include/tieralloc/tieralloc.h).
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "alloc/process_topology.h"
#include "tieralloc/tieralloc.h"

using tieralloc::alloc::process_topology;

extern "C" int tieralloc_tier_count(void) { return static_cast<int>(process_topology().tiers.size()); }

extern "C" int tieralloc_tier_info(int tier, struct tieralloc_tier_info* out) {
  const auto& topo = process_topology();
  if (!out || tier < 0 || tier >= static_cast<int>(topo.tiers.size())) {
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
  out->used_bytes = 0;
  out->limit_bytes = UINT64_MAX;
  return 0;
}
