/* tieralloc: a memory-tiering allocator. C API.
 *
 * Conventions: functions return 0 (or a count) on success and -1 with errno on failure; pointer
 * functions return NULL with errno. Tier 0 is the fastest tier. */
#ifndef TIERALLOC_TIERALLOC_H
#define TIERALLOC_TIERALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIERALLOC_MAX_NODES_PER_TIER 64

struct tieralloc_tier_info {
  int rank;                 /* 0 = fastest */
  char kind[16];            /* "dram", "hbm", "pmem", "cxl", "unknown" */
  int nnodes;               /* entries used in nodes[] */
  int nodes[TIERALLOC_MAX_NODES_PER_TIER];
  uint64_t capacity_bytes;  /* memory of the tier's nodes, or the emulated size */
  int emulated;             /* 1 when carved out of other memory by TIERALLOC_TIERS=emulate:... */
  uint64_t used_bytes;      /* bytes this process holds on the tier */
  uint64_t limit_bytes;     /* this process's budget on the tier (UINT64_MAX: none) */
};

/* Number of tiers of the topology in use (discovered, or TIERALLOC_TIERS). */
int tieralloc_tier_count(void);
/* Fills *out for tier rank `tier`; -1 + EINVAL for a tier out of range or out == NULL. */
int tieralloc_tier_info(int tier, struct tieralloc_tier_info *out);

#ifdef __cplusplus
}
#endif
#endif
