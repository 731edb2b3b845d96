#include "alloc/heap.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>

#define JEMALLOC_NO_DEMANGLE
#include <jemalloc/jemalloc.h>

#include "alloc/large_cache.h"
#include "alloc/options.h"
#include "alloc/pagemap.h"
#include "alloc/process_topology.h"
#include "alloc/tcache_direct.h"
#include "os/fs.h"
#include "os/memory.h"


// jemalloc reads this at start-up, before MALLOC_CONF (which still overrides it). Thread caches up
// to 1 MiB instead of jemalloc's 32 KiB: a malloc/free of 64 KiB-1 MiB otherwise takes the arena
// path every time (measured ~240 ns of CPU against ~40 ns cached and glibc's ~27 ns). At most 8
// blocks per large size class per thread, and jemalloc's incremental tcache GC returns idle ones.
// That GC runs every 4 MiB a thread allocates instead of every 64 KiB: at 64 KiB-1 MiB it otherwise
// runs on nearly every call (34 ns per malloc/free pair against 25 ns, alloc_bench on one CPU).
extern "C" __attribute__((visibility("default"))) const char* malloc_conf;
const char* malloc_conf = "tcache_max:1048576,tcache_nslots_large:8,tcache_gc_incr_bytes:4194304";

namespace tieralloc::alloc {
namespace {

// jemalloc's name for "every arena" is a number spliced into the mallctl path.
static_assert(MALLCTL_ARENAS_ALL == 4096);
constexpr const char* kPurgeAllArenas = "arena.4096.purge";

using numa::Topology;

// Policy slots: 0 = automatic arenas (fill fast first); 1 + 2*tier + strict = explicit arenas.
constexpr int kAutoSlot = 0;
constexpr int kMaxSlots = 1 + 2 * kMaxTiers;
// Page-map owner of jemalloc's own metadata (base blocks), which no policy places.
constexpr int kMetadataSlot = kMaxSlots;
static_assert(kMetadataSlot <= PageEntry::kMaxOwner);
constexpr unsigned kNoArena = ~0u;

struct TierState {
  int nnodes = 0;
  int nodes[kMaxNodesPerTier] = {};
  bool emulated = false;
  uint64_t capacity = 0;
  uint64_t limit = kNoLimit;
  std::atomic<uint64_t> used{0};
  std::atomic<uint64_t> peak{0};
  std::atomic<uint64_t> extents{0};
  std::atomic<uint64_t> fallbacks{0};
  std::atomic<uint64_t> over_budget{0};
};

// The extent-hook table comes first so a hook can recover its policy from the pointer jemalloc
// passes back: one table of functions, many policies.
struct Policy {
  extent_hooks_t hooks = {};
  int slot = 0;
  int tier = -1;        // preferred tier; -1 = fill fast first
  bool strict = false;  // no fallback to other tiers
  std::atomic<unsigned> arena{kNoArena};
};

struct Heap {
  std::atomic<int> state{0};  // 0 = not started, 1 = initialising, 2 = ready
  std::atomic<int> ntiers{0};  // 0 during bootstrap
  bool emulated = false;
  TierState tiers[kMaxTiers];
  Policy policies[kMaxSlots];
  std::mutex arena_lock;  // creation of explicit arenas
  pthread_key_t tcache_key = 0;
  std::atomic<uint64_t> bind_failures{0};
  std::atomic<uint64_t> metadata_bytes{0};
  std::atomic<uint64_t> move_calls{0}, moved_bytes{0}, move_failed_pages{0};
  std::atomic<bool> huge_pages{false};  // heap_use_huge_pages()
  // Node id -> distance row, for picking the nearest node of a tier to the running CPU.
  int cpu_node[1024] = {};
  int ncpu_node = 0;
};

constinit Heap g_heap;

// Per-thread tcache per explicit slot (id + 1; 0 = none yet). initial-exec: no __tls_get_addr,
// which may itself call malloc, on the allocation path.
__attribute__((tls_model("initial-exec"))) thread_local unsigned t_tcache[kMaxSlots];
__attribute__((tls_model("initial-exec"))) thread_local bool t_tcache_key_set;

uint64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Free memory per node, cached for 50 ms: reading sysfs for every extent would cost more than
// the mapping itself, and a tier does not fill up in 50 ms of extents at jemalloc's sizes.
struct FreeCache {
  std::atomic<long long> bytes{-1};
  std::atomic<uint64_t> stamp{0};
};
FreeCache g_free[1024];

long long node_free(int node) {
  if (node < 0 || node >= 1024) return -1;
  FreeCache& c = g_free[node];
  uint64_t t = now_ns();
  if (t - c.stamp.load(std::memory_order_relaxed) > 50'000'000ull) {
    c.bytes.store(os::node_free_bytes(node), std::memory_order_relaxed);
    c.stamp.store(t, std::memory_order_relaxed);
  }
  return c.bytes.load(std::memory_order_relaxed);
}

// The node of tier t nearest to the CPU this thread runs on (the kernel's NUMA distance).
int nearest_node(const TierState& t) {
  if (t.nnodes == 1) return t.nodes[0];
  int cpu = os::current_cpu();
  int home = cpu >= 0 && cpu < g_heap.ncpu_node ? g_heap.cpu_node[cpu] : -1;
  if (home < 0) return t.nodes[0];
  const Topology& topo = process_topology();
  const numa::Node* h = topo.node(home);
  int best = t.nodes[0], best_d = 1 << 30;
  for (int i = 0; i < t.nnodes; ++i) {
    int d = h ? h->distance_to(t.nodes[i]) : -1;
    if (d >= 0 && d < best_d) best = t.nodes[i], best_d = d;
  }
  return best;
}

// Reserves `size` bytes of tier t's budget. Real tiers also need the memory to exist: a tier
// whose nearest node has less free memory than the request is full.
bool reserve(int t, size_t size, int node) {
  TierState& ts = g_heap.tiers[t];
  uint64_t used = ts.used.load(std::memory_order_relaxed);
  do {
    if (ts.limit != kNoLimit && used + size > ts.limit) return false;
  } while (!ts.used.compare_exchange_weak(used, used + size, std::memory_order_relaxed));
  if (!ts.emulated) {
    long long free = node_free(node);
    if (free >= 0 && static_cast<unsigned long long>(free) < size) {
      ts.used.fetch_sub(size, std::memory_order_relaxed);
      return false;
    }
  }
  return true;
}

// Chooses the tier for a new extent and reserves it; -1 when the policy allows none.
int place(const Policy& p, size_t size, int* node) {
  int n = g_heap.ntiers.load(std::memory_order_acquire);
  if (n == 0) {
    // Bootstrap: the hooks are installed before the topology is read (reading it allocates).
    // These few extents take the default NUMA policy, the node of the initialising CPU, and are
    // counted on tier 0.
    *node = -1;
    g_heap.tiers[0].used.fetch_add(size, std::memory_order_relaxed);
    return 0;
  }
  int order[kMaxTiers] = {}, count = 0;
  if (p.tier < 0) {
    for (int t = 0; t < n; ++t) order[count++] = t;
  } else if (p.strict) {
    order[count++] = p.tier;
  } else {
    // The requested tier, then slower ones, then faster ones: a cold request should not take
    // the fast tier while slower memory is left.
    for (int t = p.tier; t < n; ++t) order[count++] = t;
    for (int t = p.tier - 1; t >= 0; --t) order[count++] = t;
  }
  int wanted = order[0];
  for (int i = 0; i < count; ++i) {
    int t = order[i];
    *node = nearest_node(g_heap.tiers[t]);
    if (reserve(t, size, *node)) {
      if (t != wanted) g_heap.tiers[wanted].fallbacks.fetch_add(1, std::memory_order_relaxed);
      return t;
    }
  }
  if (p.strict) return -1;
  // Budgets are ours, not the machine's: a plain allocation never fails because of them. It goes
  // to the slowest tier, counted, and fails only if the kernel has no memory at all.
  int t = n - 1;
  *node = nearest_node(g_heap.tiers[t]);
  g_heap.tiers[t].used.fetch_add(size, std::memory_order_relaxed);
  g_heap.tiers[t].over_budget.fetch_add(size, std::memory_order_relaxed);
  g_heap.tiers[wanted].fallbacks.fetch_add(1, std::memory_order_relaxed);
  return t;
}

// The ranges mapped for jemalloc, for the tiering engine to walk. Changes come from extent hooks
// (jemalloc locks held, so no malloc here) and are rare: jemalloc grows its address space in
// geometrically larger steps and retains it. A spin lock guards a fixed table.
class RangeRegistry {
 public:
  void add(uintptr_t addr, size_t len) {
    Guard g(lock_);
    // Past the table's end a range is still placed and usable, just never sampled for heat.
    if (count_ < kCapacity) ranges_[count_++] = MappedRange{addr, len};
  }
  // Removes [addr, addr+len) from whichever ranges overlap it (destroy may unmap part of one).
  void remove(uintptr_t addr, size_t len) {
    Guard g(lock_);
    uintptr_t end = addr + len;
    for (size_t i = 0; i < count_;) {
      MappedRange r = ranges_[i];
      uintptr_t r_end = r.addr + r.len;
      if (r_end <= addr || r.addr >= end) {
        ++i;
        continue;
      }
      ranges_[i] = ranges_[--count_];
      if (r.addr < addr) push(MappedRange{r.addr, addr - r.addr});
      if (r_end > end) push(MappedRange{end, r_end - end});
    }
  }
  size_t copy(MappedRange* out, size_t max) {
    Guard g(lock_);
    for (size_t i = 0; i < count_ && i < max; ++i) out[i] = ranges_[i];
    return count_;
  }

 private:
  static constexpr size_t kCapacity = 16384;
  struct Guard {
    explicit Guard(std::atomic_flag& f) : f_(f) {
      while (f_.test_and_set(std::memory_order_acquire)) sched_yield();
    }
    ~Guard() { f_.clear(std::memory_order_release); }
    std::atomic_flag& f_;
  };
  void push(MappedRange r) {
    if (count_ < kCapacity) ranges_[count_++] = r;
  }
  std::atomic_flag lock_ = ATOMIC_FLAG_INIT;
  size_t count_ = 0;
  MappedRange ranges_[kCapacity] = {};
};
constinit RangeRegistry g_ranges;

// Usage never wraps below zero: a page the engine re-tiers while jemalloc decommits it may be
// subtracted twice, and a wrapped counter would read as a full tier forever.
void sub_used(TierState& ts, uint64_t bytes) {
  uint64_t used = ts.used.load(std::memory_order_relaxed);
  while (!ts.used.compare_exchange_weak(used, used > bytes ? used - bytes : 0, std::memory_order_relaxed)) {
  }
}

void note_peak(TierState& ts) {
  uint64_t used = ts.used.load(std::memory_order_relaxed), peak = ts.peak.load(std::memory_order_relaxed);
  while (used > peak && !ts.peak.compare_exchange_weak(peak, used, std::memory_order_relaxed)) {
  }
}

// Subtracts the committed pages of [addr, addr+size) from their tiers' usage.
void uncharge(uintptr_t addr, size_t size) {
  uint64_t per_tier[kMaxTiers] = {};
  page_map().for_each_run(addr, size, [&](PageEntry e, size_t bytes) {
    if (e.committed && e.tier < kMaxTiers) per_tier[e.tier] += bytes;
  });
  for (int t = 0; t < kMaxTiers; ++t)
    if (per_tier[t]) sub_used(g_heap.tiers[t], per_tier[t]);
}

// Binds [addr, addr+size) to node for policy p. Emulated tiers share real nodes: binding to the
// tier's nodes is still right. A bind failure (a node named by a TIERALLOC_FSROOT tree that this
// machine lacks) leaves the memory usable under the default policy; it is counted, not fatal.
void bind_for(const Policy& p, void* addr, size_t size, int node) {
  if (node < 0) return;
  int rc = os::bind(addr, size, &node, 1, p.strict ? os::BindMode::kBind : os::BindMode::kPreferred);
  if (rc != 0) g_heap.bind_failures.fetch_add(1, std::memory_order_relaxed);
}

PageEntry entry_for(const Policy& p, int tier, int node, bool committed) {
  return PageEntry{static_cast<uint8_t>(tier), static_cast<uint8_t>(p.slot), static_cast<uint16_t>(node), committed};
}

// Maps an extent for policy p: the one path every tieralloc-owned mapping takes. A tier's usage
// counts committed memory, not address space. jemalloc grows its address space in geometric steps
// and retains what it mapped, so charging mappings would make budgets coarse and let a strict
// request fail far below its tier's limit. Mappings jemalloc asks for uncommitted (the reserve it
// grows) are only bound to the policy's first tier; commit_range charges and places each piece
// as jemalloc takes it into use.
void* map_extent(const Policy& p, void* new_addr, size_t size, size_t alignment, bool commit) {
  int node = -1, t;
  if (commit) {
    t = place(p, size, &node);
  } else {
    int n = g_heap.ntiers.load(std::memory_order_acquire);
    t = p.tier < 0 ? 0 : p.tier;
    if (n > 0) node = nearest_node(g_heap.tiers[t]);
    // A strict tier with no room left would only grow address space nothing can commit.
    const TierState& ts = g_heap.tiers[t];
    if (p.strict && ts.limit != kNoLimit && ts.used.load(std::memory_order_relaxed) >= ts.limit) t = -1;
  }
  if (t < 0) return nullptr;
  TierState& ts = g_heap.tiers[t];
  void* addr = os::map_anonymous(size, alignment, new_addr);
  if (!addr) {
    if (commit) sub_used(ts, size);
    return nullptr;
  }
  bind_for(p, addr, size, node);
  if (!page_map().set(reinterpret_cast<uintptr_t>(addr), size, entry_for(p, t, node, commit))) {
    os::unmap(addr, size);
    if (commit) sub_used(ts, size);
    return nullptr;
  }
  if (commit) ts.extents.fetch_add(1, std::memory_order_relaxed);
  g_ranges.add(reinterpret_cast<uintptr_t>(addr), size);
  // After the range is registered: heap_use_huge_pages sets the flag, then walks the registry, so
  // a range mapped meanwhile is advised by one or the other.
  if (g_heap.huge_pages.load(std::memory_order_seq_cst)) os::advise_huge_pages(addr, size);
  note_peak(ts);
  return addr;
}

// jemalloc takes [addr, addr+size) of its reserve into use: it goes where policy p places new
// memory now (the fill-fast-first order for plain allocations), charged to that tier. False
// (jemalloc then grows elsewhere or fails the request) when p allows no tier with room.
//
// The range was bound for the policy's first tier when mapped, or for another tier when last
// committed, and pages the engine moved keep their old binding: on real tiers it is bound again
// every time. Pages of it may be resident although jemalloc never used them -- a transparent huge
// page faulted in by a neighbouring extent of the same mapping covers them -- and rebinding does
// not move resident pages, while moving them (MPOL_MF_MOVE) would move the whole huge page with
// the neighbour's live data (Linux 6.1 migrates a huge page whole). They hold only zeros, so they
// are discarded first, which splits the huge page at the range's edges.
bool commit_range(const Policy& p, uintptr_t addr, size_t size) {
  uncharge(addr, size);  // normally nothing: jemalloc commits decommitted extents only
  int node = -1;
  int t = place(p, size, &node);
  if (t < 0) return false;
  bool rebind = !g_heap.emulated;
  if (!rebind)  // emulated tiers share nodes: only a thread nearer another node changes the binding
    page_map().for_each_run(addr, size, [&](PageEntry e, size_t) { rebind = rebind || e.node != static_cast<uint16_t>(node); });
  if (rebind && node >= 0) {
    os::discard(reinterpret_cast<void*>(addr), size);
    bind_for(p, reinterpret_cast<void*>(addr), size, node);
  }
  TierState& ts = g_heap.tiers[t];
  if (!page_map().set(addr, size, entry_for(p, t, node, true))) {
    sub_used(ts, size);
    return false;
  }
  ts.extents.fetch_add(1, std::memory_order_relaxed);
  note_peak(ts);
  return true;
}

// jemalloc retains [addr, addr+size) without using it: the memory goes back to the kernel (the
// binding stays, so a later commit on the same tier needs no system call) and leaves its tier's
// usage. False if the kernel refused the discard; jemalloc then keeps the pages committed.
bool decommit_range(uintptr_t addr, size_t size) {
  if (!os::discard(reinterpret_cast<void*>(addr), size)) return false;
  uncharge(addr, size);
  page_map().set_committed(addr, size, false);
  return true;
}

// jemalloc's metadata (base blocks: its radix tree's leaves, arena and tcache structures) lives
// on the fastest tier, where every free's lookup reads it. It is not charged to budgets: jemalloc
// maps it in blocks of 2 MiB and more that stay mostly untouched (each radix leaf covers 1 GiB of
// address space), so charging it would cost a small fast-tier budget several MiB the program
// never uses. Reported as metadata_bytes; never sampled or migrated.
void* map_metadata(void* new_addr, size_t size, size_t alignment) {
  int node = g_heap.ntiers.load(std::memory_order_acquire) > 0 ? nearest_node(g_heap.tiers[0]) : -1;
  void* addr = os::map_anonymous(size, alignment, new_addr);
  if (!addr) return nullptr;
  if (node >= 0 && os::bind(addr, size, &node, 1, os::BindMode::kPreferred) != 0)
    g_heap.bind_failures.fetch_add(1, std::memory_order_relaxed);
  PageEntry e{0, static_cast<uint8_t>(kMetadataSlot), static_cast<uint16_t>(node), false};
  if (!page_map().set(reinterpret_cast<uintptr_t>(addr), size, e)) {
    os::unmap(addr, size);
    return nullptr;
  }
  g_heap.metadata_bytes.fetch_add(size, std::memory_order_relaxed);
  return addr;
}

void unmap_extent(void* addr, size_t size) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (page_map().get(a).owner == kMetadataSlot) g_heap.metadata_bytes.fetch_sub(size, std::memory_order_relaxed);
  g_ranges.remove(a, size);
  uncharge(a, size);
  page_map().clear(a, size);
  os::unmap(addr, size);
}

bool tiers_differ(const void* a, const void* b) {
  PageEntry ea = page_map().get(reinterpret_cast<uintptr_t>(a));
  PageEntry eb = page_map().get(reinterpret_cast<uintptr_t>(b));
  return ea.tier != eb.tier || ea.owner != eb.owner || ea.node != eb.node;
}

const Policy& policy_of(extent_hooks_t* hooks) { return *reinterpret_cast<Policy*>(hooks); }

void* hook_alloc(extent_hooks_t* hooks, void* new_addr, size_t size, size_t alignment, bool* zero, bool* commit,
                 unsigned /*arena_ind*/) {
  void* addr = map_extent(policy_of(hooks), new_addr, size, alignment, *commit);
  if (addr) *zero = true;
  return addr;
}

bool hook_commit(extent_hooks_t* hooks, void* addr, size_t, size_t offset, size_t length, unsigned) {
  return !commit_range(policy_of(hooks), reinterpret_cast<uintptr_t>(addr) + offset, length);
}

bool hook_decommit(extent_hooks_t*, void* addr, size_t, size_t offset, size_t length, unsigned) {
  return !decommit_range(reinterpret_cast<uintptr_t>(addr) + offset, length);
}

// Declined, as jemalloc's own default layer declines it while retaining: with opt.retain jemalloc
// marks the first extent of every mapping as a "head" and relies on that to never coalesce across
// mappings. Unmapping a piece leaves a hole the kernel may hand to another arena's next mapping,
// and jemalloc's coalescing then corrupts its extent heaps (seen as a crash in eset_remove under
// the multi-arena stress test). jemalloc then decommits the extent (decommit_range).
bool hook_dalloc(extent_hooks_t*, void*, size_t, bool, unsigned) { return true; }

// Destroy (arena destruction) must give the memory back, unlike dalloc: nothing retains it after.
void hook_destroy(extent_hooks_t*, void* addr, size_t size, bool, unsigned) { unmap_extent(addr, size); }

bool hook_purge_forced(extent_hooks_t*, void* addr, size_t, size_t offset, size_t length, unsigned) {
  // The range keeps its NUMA policy: the next touch faults in on the same tier.
  return !os::discard(static_cast<char*>(addr) + offset, length);
}

bool hook_split(extent_hooks_t*, void*, size_t, size_t, size_t, bool, unsigned) { return false; }

// Extents of different tiers or policies stay apart, so one extent is one tier.
bool hook_merge(extent_hooks_t*, void* a, size_t, void* b, size_t, bool, unsigned) { return tiers_differ(a, b); }

void init_policy(Policy& p, int slot, int tier, bool strict) {
  p.hooks = extent_hooks_t{hook_alloc, hook_dalloc,       hook_destroy, hook_commit, hook_decommit,
                           nullptr,    hook_purge_forced, hook_split,   hook_merge};
  p.slot = slot;
  p.tier = tier;
  p.strict = strict;
}

int slot_for(int tier, bool strict) { return 1 + 2 * tier + (strict ? 1 : 0); }

void destroy_thread_tcaches(void*) {
  for (int s = 0; s < kMaxSlots; ++s)
    if (unsigned id = t_tcache[s]) {
      unsigned tc = id - 1;
      mallctl("tcache.destroy", nullptr, nullptr, &tc, sizeof tc);
      t_tcache[s] = 0;
    }
}

// Arena of an explicit slot, created on first use.
unsigned arena_for(int slot) {
  Policy& p = g_heap.policies[slot];
  unsigned a = p.arena.load(std::memory_order_acquire);
  if (a != kNoArena) return a;
  std::lock_guard<std::mutex> g(g_heap.arena_lock);
  a = p.arena.load(std::memory_order_relaxed);
  if (a != kNoArena) return a;
  // Created with jemalloc's default hooks, which it also uses for the arena's own metadata for
  // good (see map_metadata); the tier's hooks then take over every extent.
  size_t sz = sizeof a;
  if (mallctl("arenas.create", &a, &sz, nullptr, 0) != 0) return kNoArena;
  char name[64];
  snprintf(name, sizeof name, "arena.%u.extent_hooks", a);
  extent_hooks_t* hooks = &p.hooks;
  if (mallctl(name, nullptr, nullptr, &hooks, sizeof hooks) != 0) return kNoArena;
  p.arena.store(a, std::memory_order_release);
  return a;
}

int tcache_flag(int slot) {
  unsigned id = t_tcache[slot];
  if (!id) {
    unsigned tc;
    size_t sz = sizeof tc;
    // jemalloc allows a few thousand explicit tcaches in all; past that, no cache (slower,
    // still correct).
    if (mallctl("tcache.create", &tc, &sz, nullptr, 0) != 0) return MALLOCX_TCACHE_NONE;
    t_tcache[slot] = id = tc + 1;
    if (!t_tcache_key_set) {
      pthread_setspecific(g_heap.tcache_key, reinterpret_cast<void*>(1));
      t_tcache_key_set = true;
    }
  }
  return MALLOCX_TCACHE(id - 1);
}

int jemalloc_flags(const Request& r, int* slot_out) {
  int flags = 0;
  if (r.zero) flags |= MALLOCX_ZERO;
  if (r.alignment) flags |= MALLOCX_ALIGN(r.alignment);
  *slot_out = kAutoSlot;
  if (r.tier >= 0) {
    int slot = slot_for(r.tier, r.strict);
    unsigned arena = arena_for(slot);
    if (arena == kNoArena) return -1;
    flags |= MALLOCX_ARENA(arena) | tcache_flag(slot);
    *slot_out = slot;
  }
  return flags;
}

void atfork_prepare() { g_heap.arena_lock.lock(); }
void atfork_parent() { g_heap.arena_lock.unlock(); }
void atfork_child() {
  // The child has one thread; the lock may have been held by another thread of the parent.
  new (&g_heap.arena_lock) std::mutex();
}

void do_init() {
  const Topology& topo = process_topology();
  std::vector<std::string> warnings;
  Options opts = options_from_env(warnings);
  for (const auto& w : warnings) warn(w);

  Heap& h = g_heap;
  h.emulated = topo.emulated;
  int ntiers = std::min<int>(static_cast<int>(topo.tiers.size()), kMaxTiers);
  if (static_cast<int>(topo.tiers.size()) > kMaxTiers)
    warn("more than " + std::to_string(kMaxTiers) + " tiers; the slowest are not used");
  for (int t = 0; t < ntiers; ++t) {
    const numa::Tier& src = topo.tiers[static_cast<size_t>(t)];
    TierState& ts = h.tiers[t];
    ts.emulated = src.emulated;
    ts.capacity = src.capacity_bytes;
    for (int id : src.nodes)
      if (ts.nnodes < kMaxNodesPerTier) ts.nodes[ts.nnodes++] = id;
    // Emulated tiers have no memory of their own to run out of: their size is their budget.
    ts.limit = src.emulated ? src.capacity_bytes : kNoLimit;
  }
  if (ntiers > 0 && (opts.fast_limit_bytes || opts.fast_limit_percent > 0)) {
    uint64_t lim = opts.fast_limit_bytes
                       ? opts.fast_limit_bytes
                       : static_cast<uint64_t>(static_cast<double>(h.tiers[0].capacity) * opts.fast_limit_percent / 100.0);
    h.tiers[0].limit = std::min(h.tiers[0].limit, lim);
  }
  for (const auto& n : topo.nodes)
    for (int cpu : n.cpus)
      if (cpu >= 0 && cpu < 1024) h.cpu_node[cpu] = n.id, h.ncpu_node = std::max(h.ncpu_node, cpu + 1);

  for (int t = 0; t < ntiers; ++t)
    for (bool strict : {false, true}) init_policy(h.policies[slot_for(t, strict)], slot_for(t, strict), t, strict);
  pthread_key_create(&h.tcache_key, destroy_thread_tcaches);
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  h.ntiers.store(ntiers, std::memory_order_release);  // ends bootstrap placement
  // Discovery's own garbage (opendir buffers of 32 KiB and more) would otherwise stay as a dirty
  // extent that every later large allocation splits and merges back: 4232 instead of 2547
  // instructions per 64 KiB malloc/free (callgrind) until jemalloc's decay clears it seconds later.
  mallctl(kPurgeAllArenas, nullptr, nullptr, nullptr, 0);
  large_cache_init();
}

}  // namespace

void heap_init() {
  if (g_heap.state.load(std::memory_order_acquire) == 2) return;
  int expected = 0;
  if (g_heap.state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    do_init();
    g_heap.state.store(2, std::memory_order_release);
    return;
  }
  // Another thread is initialising: wait for it (the constructor runs before threads exist, so
  // this only happens when two threads race to a lazy first call).
  while (g_heap.state.load(std::memory_order_acquire) != 2) sched_yield();
}

bool heap_ready() { return g_heap.state.load(std::memory_order_acquire) == 2; }

void* heap_alloc(size_t size, const Request& req) {
  int slot;
  int flags = jemalloc_flags(req, &slot);
  if (flags < 0) {
    errno = ENOMEM;
    return nullptr;
  }
  // mallocx(0) is undefined in jemalloc; malloc(0) semantics (a unique pointer) are wanted.
  void* p = mallocx(size ? size : 1, flags);
  if (!p && req.strict) {
    // The tier's budget may be held by memory the process freed but jemalloc keeps cached (dirty
    // extents of any arena, returned only when its decay runs), or this thread's cache of large
    // blocks keeps. Give that back and try once more.
    large_cache_flush();
    mallctl(kPurgeAllArenas, nullptr, nullptr, nullptr, 0);
    p = mallocx(size ? size : 1, flags);
  }
  if (!p) errno = ENOMEM;
  return p;
}

void* heap_realloc(void* ptr, size_t size, const Request& req) {
  if (!ptr) return heap_alloc(size, req);
  PageEntry e = page_map().get(reinterpret_cast<uintptr_t>(ptr));
  if (!e.managed()) {
    errno = EINVAL;
    return nullptr;
  }
  int slot;
  int flags = jemalloc_flags(req, &slot);
  if (flags < 0) {
    errno = ENOMEM;
    return nullptr;
  }
  size = size ? size : 1;
  // rallocx may resize in place, which keeps the old arena and so the old tier: when the caller
  // names a tier the object is not on, move it by copy.
  if (req.tier >= 0 && (e.tier != req.tier || e.owner != slot)) {
    void* q = mallocx(size, flags);
    if (!q) {
      errno = ENOMEM;
      return nullptr;
    }
    size_t old = sallocx(ptr, 0);
    std::memcpy(q, ptr, std::min(old, size));
    heap_free(ptr);
    return q;
  }
  void* q = rallocx(ptr, size, flags);
  if (!q) errno = ENOMEM;
  return q;
}

bool heap_free(void* ptr) {
  PageEntry e = page_map().get(reinterpret_cast<uintptr_t>(ptr));
  if (e.tier == PageEntry::kUnmanaged || e.owner == kMetadataSlot) return false;
  // Back to the cache of the arena it came from, so explicit-tier memory is not recycled into
  // plain allocations by the thread's default cache.
  if (e.owner != kAutoSlot && e.owner < kMaxSlots && t_tcache[e.owner]) dallocx(ptr, MALLOCX_TCACHE(t_tcache[e.owner] - 1));
  else if (e.owner != kAutoSlot) dallocx(ptr, MALLOCX_TCACHE_NONE);
  else if (!tcache_direct_free(ptr)) dallocx(ptr, 0);  // (allocation sites' steering, alloc/sites.cc)
  return true;
}

size_t heap_usable_size(const void* ptr) {
  if (!page_map().managed(reinterpret_cast<uintptr_t>(ptr))) return 0;
  return sallocx(const_cast<void*>(ptr), 0);
}

int heap_tier_count() { return g_heap.ntiers.load(std::memory_order_acquire); }

TierCounters heap_tier_counters(int t) {
  const TierState& ts = g_heap.tiers[t];
  return TierCounters{ts.used.load(std::memory_order_relaxed), ts.peak.load(std::memory_order_relaxed), ts.limit, ts.extents.load(std::memory_order_relaxed),
                      ts.fallbacks.load(std::memory_order_relaxed), ts.over_budget.load(std::memory_order_relaxed)};
}

MoveCounters heap_move_counters() {
  return MoveCounters{g_heap.move_calls.load(std::memory_order_relaxed), g_heap.moved_bytes.load(std::memory_order_relaxed),
                      g_heap.move_failed_pages.load(std::memory_order_relaxed)};
}

int heap_tier_of(const void* addr) {
  PageEntry e = page_map().get(reinterpret_cast<uintptr_t>(addr));
  if (g_heap.emulated) return e.tier == PageEntry::kUnmanaged ? -ENOENT : e.tier;
  int node = os::node_of(addr);
  if (node >= 0) {
    int t = process_topology().tier_of_node(node);
    if (t >= 0 && t < heap_tier_count()) return t;
  } else if (!e.managed()) {
    return node;  // not ours: nothing there, or not mapped at all
  }
  // Not faulted in yet, out of reach for a moment, or on a node outside the tiers: the tier the
  // page map records.
  return e.tier == PageEntry::kUnmanaged ? -ENOENT : e.tier;
}

namespace {
// Records [addr, addr+bytes), found as `was`, on tier/node in the page map and moves its bytes
// between the tiers' usage: the bookkeeping of every move, by range or by page.
void retier(uintptr_t addr, size_t bytes, PageEntry was, int tier, int node) {
  page_map().retier(addr, bytes, static_cast<uint8_t>(tier), static_cast<uint16_t>(node));
  if (was.committed && was.tier < kMaxTiers && was.tier != tier) {
    sub_used(g_heap.tiers[was.tier], bytes);
    g_heap.tiers[tier].used.fetch_add(bytes, std::memory_order_relaxed);
    note_peak(g_heap.tiers[tier]);
  }
}
}  // namespace

int heap_move(void* addr, size_t len, int tier) {
  uintptr_t start = reinterpret_cast<uintptr_t>(addr) & ~(os::kPageSize - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(addr) + len + os::kPageSize - 1) & ~(os::kPageSize - 1);
  g_heap.move_calls.fetch_add(1, std::memory_order_relaxed);
  TierState& dst = g_heap.tiers[tier];
  int node = nearest_node(dst);
  PageMap& map = page_map();
  size_t failed = 0, moved = 0;
  constexpr size_t kBatch = 256;
  void* pages[kBatch];
  int nodes[kBatch], status[kBatch];
  // Runs of managed pages are rebound (mbind + MOVE), so memory jemalloc purges and refaults
  // later stays on the new tier; pages tieralloc does not manage are only migrated. The range is
  // walked in 2 MiB windows whose runs are collected first, since rebinding rewrites the map.
  constexpr uintptr_t kWindow = uintptr_t{1} << PageMap::kMidShift;
  struct Run {
    uintptr_t addr;
    size_t bytes;
    PageEntry e;
  };
  Run runs[PageMap::kSlots];
  for (uintptr_t w = start; w < end;) {
    uintptr_t w_end = std::min<uintptr_t>(end, (w & ~(kWindow - 1)) + kWindow);
    size_t nruns = 0;
    uintptr_t at = w;
    map.for_each_run(w, w_end - w, [&](PageEntry e, size_t bytes) {
      runs[nruns++] = Run{at, bytes, e};
      at += bytes;
    });
    for (size_t r = 0; r < nruns; ++r) {
      const Run& run = runs[r];
      bool managed = run.e.managed();
      if (managed) {
        if (!g_heap.emulated) {
          int rc = os::bind(reinterpret_cast<void*>(run.addr), run.bytes, &node, 1, os::BindMode::kPreferred, true);
          if (rc == -EFAULT) return -EFAULT;
        }
        retier(run.addr, run.bytes, run.e, tier, node);
      }
      // Check (or, for unmanaged pages, perform) the move page by page with move_pages.
      if (!g_heap.emulated) {
        uintptr_t run_end = run.addr + run.bytes;
        for (uintptr_t q = run.addr; q < run_end;) {
          size_t n = 0;
          for (; n < kBatch && q < run_end; ++n, q += os::kPageSize) pages[n] = reinterpret_cast<void*>(q), nodes[n] = node;
          long rc = os::move_pages(n, pages, managed ? nullptr : nodes, status);
          if (rc < 0 && rc != -ENOENT) return static_cast<int>(rc);
          for (size_t i = 0; i < n; ++i) {
            if (status[i] == node) moved += os::kPageSize;
            // Not faulted in (nothing to move, the policy is set), or out of reach a moment.
            else if (managed ? !os::absent_status(status[i]) : status[i] != -ENOENT) ++failed;
          }
        }
      } else if (managed) {
        moved += run.bytes;
      }
    }
    w = w_end;
  }
  g_heap.moved_bytes.fetch_add(moved, std::memory_order_relaxed);
  g_heap.move_failed_pages.fetch_add(failed, std::memory_order_relaxed);
  return failed ? -EBUSY : 0;
}

size_t heap_mapped_ranges(MappedRange* out, size_t max) { return g_ranges.copy(out, max); }

bool heap_emulated() { return g_heap.emulated; }

bool heap_use_huge_pages() {
  // Set first: a range mapped while the existing ones are advised is advised by map_extent.
  g_heap.huge_pages.store(true, std::memory_order_seq_cst);
  static MappedRange ranges[4096];
  size_t n = std::min<size_t>(g_ranges.copy(ranges, 4096), 4096);
  bool ok = true;
  for (size_t i = 0; i < n; ++i) ok &= os::advise_huge_pages(reinterpret_cast<void*>(ranges[i].addr), ranges[i].len);
  // Refused (a kernel without THP): later extents need not ask again.
  if (!ok) g_heap.huge_pages.store(false, std::memory_order_seq_cst);
  return ok;
}

size_t heap_migrate_pages(const uintptr_t* pages, size_t n, int tier, int* status) {
  if (tier < 0 || tier >= heap_tier_count()) {
    for (size_t i = 0; i < n; ++i) status[i] = -EINVAL;
    return 0;
  }
  PageMap& map = page_map();
  const int node = nearest_node(g_heap.tiers[tier]);
  size_t moved = 0, failed = 0;
  constexpr size_t kBatch = 256;
  void* batch[kBatch];
  int nodes[kBatch], batch_status[kBatch];
  size_t index[kBatch];
  PageEntry entry[kBatch];
  for (size_t base = 0; base < n; base += kBatch) {
    size_t m = std::min(kBatch, n - base), k = 0;
    for (size_t i = 0; i < m; ++i) {
      PageEntry e = map.get(pages[base + i]);
      // Only committed pages of the arenas hold memory to move: not address space jemalloc
      // retains, nor its metadata.
      if (!e.managed() || e.owner == kMetadataSlot) status[base + i] = -EFAULT;
      else if (!e.committed) status[base + i] = -ENOENT;
      else batch[k] = reinterpret_cast<void*>(pages[base + i]), nodes[k] = node, index[k] = base + i, entry[k++] = e;
    }
    if (!k) continue;
    if (!g_heap.emulated) {
      long rc = os::move_pages(k, batch, nodes, batch_status);
      if (rc < 0)
        for (size_t j = 0; j < k; ++j) batch_status[j] = static_cast<int>(rc);
    }
    for (size_t j = 0; j < k; ++j) {
      int& st = status[index[j]];
      st = g_heap.emulated ? node : batch_status[j];
      if (st != node) {
        if (os::absent_status(st)) {
          st = -ENOENT;  // one answer for "nothing to move", whatever the kernel's
          continue;
        }
        ++failed;
        if (st >= 0) st = -EAGAIN;  // landed elsewhere (target node full): try again later
        continue;
      }
      st = 0;
      retier(pages[index[j]], os::kPageSize, entry[j], tier, node);
      ++moved;
    }
  }
  g_heap.moved_bytes.fetch_add(moved * os::kPageSize, std::memory_order_relaxed);
  g_heap.move_failed_pages.fetch_add(failed, std::memory_order_relaxed);
  return moved;
}

int heap_bind_like(void* dst, size_t len, const void* like) {
  PageEntry e = page_map().get(reinterpret_cast<uintptr_t>(like));
  if (!e.managed()) return -EINVAL;
  if (e.node == 0xffff) return 0;  // bootstrap extents: the default policy
  int node = e.node;
  bool strict = e.owner != kAutoSlot && (e.owner - 1) % 2 == 1;
  return os::bind(dst, len, &node, 1, strict ? os::BindMode::kBind : os::BindMode::kPreferred);
}

void heap_jemalloc_stats(uint64_t* allocated, uint64_t* resident) {
  uint64_t epoch = 1;
  size_t sz = sizeof epoch;
  mallctl("epoch", &epoch, &sz, &epoch, sz);
  size_t a = 0, r = 0;
  sz = sizeof a;
  mallctl("stats.allocated", &a, &sz, nullptr, 0);
  mallctl("stats.resident", &r, &sz, nullptr, 0);
  *allocated = a;
  *resident = r;
}

struct StatsSection {
  const char* name;
  std::string (*fn)();
};
constinit StatsSection g_sections[4] = {};
constinit std::atomic<int> g_nsections{0};

void heap_add_stats_section(const char* name, std::string (*fn)()) {
  int i = g_nsections.load();
  if (i < 4) g_sections[i] = StatsSection{name, fn}, g_nsections.store(i + 1);
}

std::string heap_stats_json() {
  const Topology& topo = process_topology();
  std::string o = "{\"emulated\": ";
  o += g_heap.emulated ? "true" : "false";
  o += ", \"tiers\": [";
  uint64_t fallbacks = 0;
  for (int t = 0; t < heap_tier_count(); ++t) {
    TierCounters c = heap_tier_counters(t);
    fallbacks += c.fallbacks;
    char buf[512];
    snprintf(buf, sizeof buf,
             "%s{\"rank\": %d, \"kind\": \"%s\", \"nodes\": \"%s\", \"used_bytes\": %llu, \"peak_bytes\": %llu, \"limit_bytes\": %s, "
             "\"extents\": %llu, \"fallbacks\": %llu, \"over_budget_bytes\": %llu}",
             t ? ", " : "", t, numa::kind_name(topo.tiers[static_cast<size_t>(t)].kind),
             os::format_list(topo.tiers[static_cast<size_t>(t)].nodes).c_str(), static_cast<unsigned long long>(c.used_bytes),
             static_cast<unsigned long long>(c.peak_bytes), c.limit_bytes == kNoLimit ? "null" : std::to_string(c.limit_bytes).c_str(),
             static_cast<unsigned long long>(c.extents), static_cast<unsigned long long>(c.fallbacks),
             static_cast<unsigned long long>(c.over_budget_bytes));
    o += buf;
  }
  MoveCounters m = heap_move_counters();
  uint64_t allocated, resident;
  heap_jemalloc_stats(&allocated, &resident);
  char buf[512];
  snprintf(buf, sizeof buf,
           "], \"fallbacks\": %llu, \"moves\": {\"calls\": %llu, \"bytes\": %llu, \"pages_failed\": %llu}, "
           "\"bind_failures\": %llu, \"pagemap_bytes\": %zu, \"jemalloc\": {\"allocated\": %llu, \"resident\": %llu, "
           "\"metadata_bytes\": %llu}}",
           static_cast<unsigned long long>(fallbacks), static_cast<unsigned long long>(m.calls),
           static_cast<unsigned long long>(m.bytes_moved), static_cast<unsigned long long>(m.pages_failed),
           static_cast<unsigned long long>(g_heap.bind_failures.load()), page_map().metadata_bytes(),
           static_cast<unsigned long long>(allocated), static_cast<unsigned long long>(resident),
           static_cast<unsigned long long>(g_heap.metadata_bytes.load(std::memory_order_relaxed)));
  o += buf;
  o.pop_back();  // the closing brace, after the sections
  for (int i = 0; i < g_nsections.load(); ++i) o += std::string(", \"") + g_sections[i].name + "\": " + g_sections[i].fn();
  o += "}";
  return o;
}

}  // namespace tieralloc::alloc

// jemalloc's default extent layer, overridden: Debian's archive is linked with these seven
// definitions made weak (alloc/jemalloc_overrides.txt), so every mapping jemalloc makes with its
// default hooks -- arena 0's very first extent during jemalloc's own start-up, every automatic
// arena, the huge arena -- is placed by tieralloc's fill-fast-first policy and recorded in the page
// map, and its metadata is placed as map_metadata says. Explicit tier arenas use their own hook
// tables above. This costs the allocation fast path nothing: it only runs when jemalloc needs new
// address space or changes an extent's commit state.
extern "C" {
// The arenas' extents, for the default hooks (jemalloc's version also tries sbrk, which would
// hand out memory no tier holds).
void* je_ehooks_default_alloc_impl(void* /*tsdn*/, void* new_addr, size_t size, size_t alignment, bool* zero, bool* commit,
                                   unsigned /*arena_ind*/) {
  using namespace tieralloc::alloc;
  void* addr = map_extent(g_heap.policies[kAutoSlot], new_addr, size, std::max<size_t>(alignment, tieralloc::os::kPageSize), *commit);
  if (addr) *zero = true;
  return addr;
}

// Everything else jemalloc maps directly: its metadata.
void* je_extent_alloc_mmap(void* new_addr, size_t size, size_t alignment, bool* zero, bool* commit) {
  void* addr = tieralloc::alloc::map_metadata(new_addr, size, alignment);
  if (addr) *zero = *commit = true;
  return addr;
}

// jemalloc's own versions answer "not supported" on Linux (it overcommits), which would leave
// every retained extent committed and charged to its tier.
bool je_ehooks_default_commit_impl(void* addr, size_t offset, size_t length) {
  using namespace tieralloc::alloc;
  return !commit_range(g_heap.policies[kAutoSlot], reinterpret_cast<uintptr_t>(addr) + offset, length);
}

bool je_ehooks_default_decommit_impl(void* addr, size_t offset, size_t length) {
  return !tieralloc::alloc::decommit_range(reinterpret_cast<uintptr_t>(addr) + offset, length);
}

// jemalloc calls this only when it does not retain virtual memory (opt.retain:false).
bool je_extent_dalloc_mmap(void* addr, size_t size) {
  tieralloc::alloc::unmap_extent(addr, size);
  return false;
}

void je_ehooks_default_destroy_impl(void* addr, size_t size) { tieralloc::alloc::unmap_extent(addr, size); }

bool je_ehooks_default_merge_impl(void* /*tsdn*/, void* addr_a, void* addr_b) {
  return tieralloc::alloc::tiers_differ(addr_a, addr_b);
}
}
