/* tieralloc: a memory-tiering allocator. C API.
 *
 * Conventions: functions return 0 (or a count) on success and -1 with errno on failure; pointer
 * functions return NULL with errno. Tier 0 is the fastest tier. */
#ifndef TIERALLOC_TIERALLOC_H
#define TIERALLOC_TIERALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIERALLOC_MAX_NODES_PER_TIER 64

/* Flags for tieralloc_mallocx / tieralloc_reallocx, combined with |. */
#define TIERALLOC_ZERO 0x1   /* zero the memory */
#define TIERALLOC_HOT 0x2    /* hint: expected to be hot (placed on the fastest tier, falling back) */
#define TIERALLOC_COLD 0x4   /* hint: expected to be cold (placed on the slowest tier, falling back) */
#define TIERALLOC_STRICT 0x8 /* with TIERALLOC_TIER/HOT/COLD: fail with ENOMEM rather than use another tier */
/* Power-of-two alignment; anything else makes the call fail with EINVAL. */
#define TIERALLOC_ALIGN(a)                                                                      \
  ((int)(((unsigned long long)(a) != 0 && ((unsigned long long)(a) & ((unsigned long long)(a) - 1)) == 0 && \
          (unsigned long long)(a) <= (1ull << 40))                                              \
             ? (unsigned)__builtin_ctzll((unsigned long long)(a)) << 4                          \
             : 63u << 4))
/* Place in tier t (0 = fastest); a tier out of range makes the call fail with EINVAL. */
#define TIERALLOC_TIER(t) ((int)((((unsigned)(t)) < 0x7ffeu ? ((unsigned)(t) + 1u) : 0x7fffu) << 16))

void *tieralloc_mallocx(size_t size, int flags);
/* Resizes; with a tier (or hint) in flags the object moves to that tier if it is elsewhere.
 * ptr == NULL acts as tieralloc_mallocx. A pointer tieralloc does not own: NULL, EINVAL. */
void *tieralloc_reallocx(void *ptr, size_t size, int flags);
/* NULL is a no-op. A pointer tieralloc does not own is reported on stderr and not freed. */
void tieralloc_free(void *ptr);
/* 0 (errno EINVAL) for NULL or a pointer tieralloc does not own. */
size_t tieralloc_usable_size(const void *ptr);

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
/* Tier of the page holding addr now: the node it is on (real tiers) or the tier it was placed on
 * (emulated tiers, or a page not touched yet). -1 + errno: EINVAL (NULL), ENOENT (not memory
 * tieralloc manages and not resident), EFAULT (not mapped). */
int tieralloc_tier_of(const void *addr);
/* Migrates the pages covering [addr, addr+len) to tier; virtual addresses do not change. Pages
 * tieralloc manages keep the new tier when refaulted. 0, or -1 + errno: EINVAL (bad tier or
 * NULL), EBUSY (some pages could not move now; counted in stats), EFAULT. */
int tieralloc_move(void *addr, size_t len, int tier);
/* Pins the pages covering [addr, addr+len) to where the hint says and moves them there now:
 * TIERALLOC_HOT = the fastest tier, TIERALLOC_COLD = the slowest; the tiering engine then leaves
 * them there whatever their measured heat. hint 0 removes the pin (the pages stay where they are
 * until heat moves them). 0, or -1 + errno: EINVAL (NULL, len 0, another hint value), EBUSY (some
 * pages could not move now), EFAULT. */
int tieralloc_hint(void *addr, size_t len, int hint);
/* Statistics as JSON (per-tier bytes, budgets, fallbacks, moves) with snprintf semantics:
 * returns the length of the whole document; writes at most len bytes including the NUL. */
int tieralloc_stats_json(char *buf, size_t len);

/* Poison: pages reported bad are quarantined (never handed out, no access), their good
 * cachelines stay readable through tieralloc_recovery_read, and repair writes that cover every bad
 * cacheline return them to service. Granularity: the cacheline (64 bytes) where the report says
 * so, else the page. Only memory tieralloc manages can be quarantined. */
struct tieralloc_range {
  size_t offset; /* from the start of the range read */
  size_t len;
};

/* Where a poison report came from (tieralloc_poison_event.source). */
#define TIERALLOC_POISON_CONSUMED 1 /* SIGBUS BUS_MCEERR_AR: the program read poisoned memory */
#define TIERALLOC_POISON_FOUND 2    /* SIGBUS BUS_MCEERR_AO: a scrubber found it first */
#define TIERALLOC_POISON_REPORTED 3 /* tieralloc_poison_report */
#define TIERALLOC_POISON_PHYSICAL 4 /* tieralloc_poison_report_phys */
#define TIERALLOC_POISON_KNOWN 5    /* a frame the quarantine journal or an nvdimm badblocks list names,
                                       found unreadable while moving a page off it */

/* A block of the heap: its address and usable size (tieralloc_usable_size). */
struct tieralloc_allocation {
  void *addr;
  size_t size;
};

struct tieralloc_poison_event {
  void *addr;      /* the poisoned range, cacheline-aligned */
  size_t len;
  int source;      /* TIERALLOC_POISON_* */
  int quarantined; /* 1 while the range is still quarantined when the handler runs */
  size_t lost;     /* events dropped just before this one (the queue holds 256) */
  /* The allocations overlapping [addr, addr+len) when the handler runs, in address order: every
   * block handed out and not freed is listed. Valid until the handler returns. A block freed into
   * a thread's cache may still be listed (the allocator has not taken it back yet), and a block
   * allocated or freed while the list is made may be missed or listed. */
  const struct tieralloc_allocation *allocations;
  size_t nallocations;
  size_t allocations_unlisted; /* overlapping allocations beyond the list's room (4096) */
  int allocations_known;       /* 0: the allocator's records could not be read (a jemalloc other than
                                  5.3); the list is empty, not complete */
};

/* Quarantines the cachelines covering [addr, addr+len). 0, or -1 + errno: EINVAL (NULL, empty,
 * or memory tieralloc does not manage), ENOSPC (quarantine full: 12288 pages). */
int tieralloc_poison_report(void *addr, size_t len);
/* The same for a physical range (from ARS or rasdaemon), through /proc/self/pagemap: the pages
 * of this process that tieralloc manages and that lie in it. 0, or -1 + errno: EPERM (frame
 * numbers are hidden from this process), ENOENT (no such page here), EINVAL. */
int tieralloc_poison_report_phys(uint64_t phys, size_t len);
/* 1 when [addr, addr+len) touches a quarantined page (plain loads there fault: read it with
 * tieralloc_recovery_read), 0 when clean, -1 + EINVAL for NULL or an empty range. */
int tieralloc_poison_check(const void *addr, size_t len);
/* Copies [src, src+len) to dst, surviving poison: bad ranges (offsets from src) are zero-filled in
 * dst and listed in bad[] up to *nbad entries; *nbad returns how many there are (adjacent bad
 * lines merged). Returns the number of good bytes copied, or -1 + errno: EINVAL, EFAULT (memory
 * that is not mapped). bad may be NULL (then nbad may be too). */
ssize_t tieralloc_recovery_read(void *dst, const void *src, size_t len, struct tieralloc_range *bad, size_t *nbad);
/* Writes [src, src+len) to dst, repairing the poisoned cachelines it covers. Every poisoned
 * cacheline the range touches must be wholly covered, else nothing is written: -1 + EINVAL (also
 * for memory tieralloc does not manage). A page whose bad lines have all been rewritten is
 * rebuilt (good lines kept, fresh memory on the same tier) and back in service. Returns 0 when
 * dst's range is clean afterwards, 1 when the data is stored but a page of the range still has
 * bad lines outside it (it stays quarantined until they are repaired). */
int tieralloc_repair_write(void *dst, const void *src, size_t len);
/* Bytes of memory taken out of service (whole pages). */
size_t tieralloc_quarantined_bytes(void);
/* Known-bad memory: the quarantine journal (TIERALLOC_QUARANTINE_FILE) and the nvdimm badblocks
 * lists name physical ranges. At start-up, and again on this call, every resident page tieralloc
 * manages whose frame lies in one is moved to a fresh frame at the same address (its data
 * kept; lines that cannot be read are quarantined instead), and the bad frame is held by the
 * process, inaccessible, so that nothing else is given it while the process lives. Returns the
 * number of pages moved or quarantined, or -1 + errno: EPERM (frame numbers are hidden from this
 * process: /proc/self/pagemap needs CAP_SYS_ADMIN), ENOTSUP (TIERALLOC_POISON=off: pages are
 * then moved at start-up only, before other threads can touch them). */
int tieralloc_poison_scan(void);
/* Calls fn(event, arg) for every poison report, on a thread of tieralloc's (never inside a signal
 * handler); reports made before a handler was set are queued and delivered then. NULL stops
 * delivery. After fork, the child sets its handler again. 0, or -1 + errno. */
int tieralloc_set_poison_handler(void (*fn)(const struct tieralloc_poison_event *, void *), void *arg);

#ifdef __cplusplus
}
#endif
#endif
