// The allocations over an address range, read from jemalloc's own records: its page map (the
// "emap", a radix tree from page address to extent descriptor) and, for slabs of small objects,
// the descriptor's bitmap of regions in use.
//
// jemalloc offers no public way to ask this. Its experimental utilization query wants a pointer
// into a live block, which is exactly what is unknown here; keeping tieralloc's own record of
// every block would put a table update on every malloc and free. So this file reads jemalloc 5.3's
// internal layout (x86-64, 48-bit virtual addresses, as Debian builds it), and checks it before
// trusting it: the first call compares what it reads against blocks of known place and size, and
// when anything differs -- another jemalloc -- it says so once and the answer is "unknown" (-1)
// from then on, never a wrong list. Reading happens on a normal thread (the poison worker) with no
// jemalloc lock held, so it is a snapshot: descriptors live in jemalloc's metadata, which is never
// unmapped, so a block changing meanwhile can give a stale answer for that block, not a crash.
#include "poison/allocations_in_range.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "alloc/jemalloc_abi.h"
#include "alloc/process_topology.h"
#include "os/memory.h"
#include "poison/poison.h"

extern "C" {
// jemalloc's internals (hidden in the archive, linked into the same library).
extern char je_arena_emap_global[];           // emap_t, whose first member is the radix tree
extern const size_t je_sz_index2size_tab[];  // size class index -> usable size
void* je_rtree_leaf_elm_lookup_hard(void* tsdn, void* rtree, void* ctx, uintptr_t key, bool dependent, bool init_missing);
void je_rtree_ctx_data_init(void* ctx);
// The public entry points are in alloc/jemalloc_abi.h.
int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen);
}

namespace tieralloc::poison {

namespace {

constexpr uintptr_t kPage = os::kPageSize;
constexpr int kMallocxTcacheNone = 0x100;

// jemalloc 5.3's radix tree leaf word: size class index above the 48 address bits, the
// descriptor's address (128-byte aligned), the extent's state in bits 2-4, slab in bit 0.
constexpr unsigned kVaddrBits = 48;
constexpr uintptr_t kDescriptorAlign = 128;
constexpr unsigned kStateShift = 2;
constexpr uintptr_t kStateMask = 7;
constexpr uintptr_t kStateActive = 0;  // handed out (as a large block or a slab)
// The descriptor (edata_t): the extent's address (for a large block, the block's own address,
// which jemalloc offsets within the first page), its size in the page bits of the next word, and
// from byte 64 a slab's region bitmap, a clear bit marking a region in use.
constexpr size_t kDescriptorAddr = 8, kDescriptorSize = 16, kSlabBitmap = 64;
constexpr size_t kMaxSlabRegions = 512;
// rtree_ctx_t is 384 bytes in 5.3; the lookup only ever touches that much.
constexpr size_t kLookupCacheBytes = 1024;
// How far back to look for the head of a large block from one of its inner pages (jemalloc
// records only a large block's first and last page).
constexpr size_t kMaxScanPages = size_t{1} << 24;

struct Extent {
  uintptr_t base;   // first page
  size_t size;      // bytes, whole pages
  uintptr_t block;  // a large block's address
  size_t usable;    // size class: a large block's, or a slab's regions'
  bool slab;
  bool active;
  const unsigned char* descriptor;
};

class Reader {
 public:
  explicit Reader(unsigned size_classes) : size_classes_(size_classes) { je_rtree_ctx_data_init(cache_); }

  // The extent jemalloc records over `page`, if any. Pages from `floor` down are known to name
  // none that reaches `page`, so the search for a large block's head stops there.
  bool extent_at(uintptr_t page, uintptr_t floor, Extent* out) {
    uintptr_t word;
    if (!leaf_word(page, &word)) return false;
    uintptr_t head = page;
    for (size_t back = 0; descriptor_of(word) == 0; ++back) {
      // An inner page of a large block, or memory jemalloc holds no record of.
      if (back == kMaxScanPages || head <= floor || head < kPage) return false;
      head -= kPage;
      if (!leaf_word(head, &word)) return false;
    }
    const auto* d = reinterpret_cast<const unsigned char*>(descriptor_of(word));
    if (overlaps_quarantine(d, kSlabBitmap + kMaxSlabRegions / 8)) return false;
    const unsigned index = static_cast<unsigned>(word >> kVaddrBits);
    if (index >= size_classes_) return false;
    Extent e;
    memcpy(&e.block, d + kDescriptorAddr, sizeof e.block);
    memcpy(&e.size, d + kDescriptorSize, sizeof e.size);
    e.base = e.block & ~(kPage - 1);
    e.size &= ~(kPage - 1);
    e.usable = je_sz_index2size_tab[index];
    e.slab = word & 1;
    e.active = ((word >> kStateShift) & kStateMask) == kStateActive;
    e.descriptor = d;
    // The record may have changed under us (another thread freed or split the extent).
    if (page < e.base || page - e.base >= e.size || e.usable == 0) return false;
    if (e.slab && (e.size % e.usable || e.size / e.usable > kMaxSlabRegions)) return false;
    *out = e;
    return true;
  }

 private:
  static uintptr_t descriptor_of(uintptr_t word) {
    // The address bits, sign-extended as x86-64 addresses are, without the metadata bits.
    const auto addr = static_cast<uintptr_t>(static_cast<intptr_t>(word << (64 - kVaddrBits)) >> (64 - kVaddrBits));
    return addr & ~(kDescriptorAlign - 1);
  }

  bool leaf_word(uintptr_t page, uintptr_t* word) {
    auto* leaf = static_cast<uintptr_t*>(
        je_rtree_leaf_elm_lookup_hard(nullptr, je_arena_emap_global, cache_, page, /*dependent=*/false, /*init_missing=*/false));
    if (!leaf || overlaps_quarantine(leaf, sizeof *leaf)) return false;
    *word = __atomic_load_n(leaf, __ATOMIC_ACQUIRE);
    return true;
  }

  alignas(64) unsigned char cache_[kLookupCacheBytes];
  unsigned size_classes_;
};

bool region_in_use(const Extent& e, size_t region) {
  uint64_t group;
  memcpy(&group, e.descriptor + kSlabBitmap + region / 64 * sizeof group, sizeof group);
  return !(group & (uint64_t{1} << (region % 64)));
}

class Listing {
 public:
  Listing(tieralloc_allocation* out, size_t cap) : out_(out), cap_(cap), any_held_(held_blocks() != 0) {}
  void add(uintptr_t block, size_t size) {
    if (any_held_ && held_aside(block)) return;
    if (count_ < cap_) out_[count_] = tieralloc_allocation{reinterpret_cast<void*>(block), size};
    ++count_;
  }
  long count() const { return static_cast<long>(count_); }

 private:
  tieralloc_allocation* out_;
  size_t cap_;
  size_t count_ = 0;
  bool any_held_;  // held_aside takes a lock and scans: asked only when there is something to find
};

long read_allocations(unsigned size_classes, uintptr_t addr, size_t len, tieralloc_allocation* out, size_t cap) {
  Reader reader(size_classes);
  Listing list(out, cap);
  const uintptr_t end = addr + len;
  uintptr_t floor = 0;
  for (uintptr_t page = addr & ~(kPage - 1); page < end;) {
    Extent e;
    if (!reader.extent_at(page, floor, &e)) {
      // Whatever the search from here found reaches no further: the next page's stops here.
      floor = page;
      page += kPage;
      continue;
    }
    const uintptr_t lo = std::max(addr, e.base), hi = std::min(end, e.base + e.size);
    if (e.active && e.slab) {
      for (size_t r = (lo - e.base) / e.usable; r <= (hi - 1 - e.base) / e.usable; ++r)
        if (region_in_use(e, r)) list.add(e.base + r * e.usable, e.usable);
    } else if (e.active && e.block < end && e.block + e.usable > addr) {
      list.add(e.block, e.usable);
    }
    page = e.base + e.size;
  }
  return list.count();
}

// Compares what read_allocations sees with blocks of known place and size, taken straight from
// jemalloc (no thread cache, so a freed one really goes back).
bool layout_checks_out(unsigned size_classes) {
  tieralloc_allocation seen[4];
  auto sees_only = [&](const void* at, size_t len, const void* block) {
    const long n = read_allocations(size_classes, reinterpret_cast<uintptr_t>(at), len, seen, 4);
    return n == 1 && seen[0].addr == block && seen[0].size == sallocx(block, 0);
  };
  auto sees_nothing = [&](const void* at, size_t len) {
    return read_allocations(size_classes, reinterpret_cast<uintptr_t>(at), len, seen, 4) == 0;
  };
  void* small[3];
  for (auto& p : small) p = tl_je_mallocx(48, kMallocxTcacheNone);
  void* large = tl_je_mallocx(size_t{3} << 20, kMallocxTcacheNone);
  bool ok = small[0] && small[1] && small[2] && large;
  if (ok) {
    for (void* p : small) ok = ok && sees_only(p, 1, p) && sees_only(static_cast<char*>(p) + 47, 1, p);
    ok = ok && sees_only(large, 1, large) && sees_only(static_cast<char*>(large) + (size_t{2} << 20), 64, large);
    void* freed = small[1];
    dallocx(freed, kMallocxTcacheNone);
    small[1] = nullptr;
    ok = ok && sees_nothing(freed, 1);
    dallocx(large, kMallocxTcacheNone);
    ok = ok && sees_nothing(static_cast<char*>(large) + (size_t{2} << 20), 64);
    // The freed region's neighbours are still there, and only they.
    for (void* p : {small[0], small[2]}) ok = ok && sees_only(p, 48, p);
  } else if (large) {
    dallocx(large, kMallocxTcacheNone);
  }
  for (void* p : small)
    if (p) dallocx(p, kMallocxTcacheNone);
  return ok;
}

unsigned readable_size_classes() {
  const char* version = nullptr;
  size_t len = sizeof version;
  if (mallctl("version", &version, &len, nullptr, 0) != 0 || !version || strncmp(version, "5.3.", 4) != 0) return 0;
  unsigned bins = 0, large = 0;
  len = sizeof bins;
  if (mallctl("arenas.nbins", &bins, &len, nullptr, 0) != 0 || mallctl("arenas.nlextents", &large, &len, nullptr, 0) != 0)
    return 0;
  // The check frees blocks and looks where they were: another thread may take a place back
  // meanwhile. A layout that is wrong fails every time; a race, hardly three times running.
  for (int attempt = 0; attempt < 3; ++attempt)
    if (layout_checks_out(bins + large)) return bins + large;
  return 0;
}

}  // namespace

long allocations_in_range(uintptr_t addr, size_t len, tieralloc_allocation* out, size_t cap) {
  static std::once_flag once;
  static unsigned size_classes = 0;
  std::call_once(once, [] {
    size_classes = readable_size_classes();
    if (!size_classes)
      alloc::warn("this jemalloc's records could not be read (tieralloc reads jemalloc 5.3's); "
                  "poison events will not list the allocations they touch");
  });
  if (!size_classes || !len || addr + len < addr) return -1;
  return read_allocations(size_classes, addr, len, out, cap);
}

}  // namespace tieralloc::poison
