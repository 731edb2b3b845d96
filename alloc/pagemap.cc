#include "alloc/pagemap.h"

#include "os/memory.h"

namespace tieralloc::alloc {

using namespace pagemap_detail;

namespace {

// Tables come from 1 MiB slabs carved with a bump pointer: extent hooks may not call malloc, and
// a mapping per 2 KiB leaf would cost a VMA each.
std::atomic_flag g_slab_lock = ATOMIC_FLAG_INIT;
char* g_slab_next = nullptr;
char* g_slab_end = nullptr;
constexpr size_t kSlabBytes = size_t{1} << 20;

}  // namespace

void* PageMap::alloc_node(size_t bytes) {
  while (g_slab_lock.test_and_set(std::memory_order_acquire)) {
  }
  if (!g_slab_next || g_slab_next + bytes > g_slab_end) {
    void* slab = os::map_anonymous(kSlabBytes, os::kPageSize);
    if (!slab) {
      g_slab_lock.clear(std::memory_order_release);
      return nullptr;
    }
    g_slab_next = static_cast<char*>(slab);
    g_slab_end = g_slab_next + kSlabBytes;
  }
  void* p = g_slab_next;
  g_slab_next += bytes;
  g_slab_lock.clear(std::memory_order_release);
  nodes_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  return p;  // fresh anonymous memory: zero
}

std::atomic<uint64_t>* PageMap::mid_of(size_t ri, bool create) {
  uint64_t w = root_[ri].load(std::memory_order_acquire);
  if (is_table(w) || !create) return is_table(w) ? reinterpret_cast<std::atomic<uint64_t>*>(w) : nullptr;
  auto* mid = static_cast<std::atomic<uint64_t>*>(alloc_node(kSlots * sizeof(uint64_t)));
  if (!mid) return nullptr;
  for (size_t i = 0; i < kSlots; ++i) mid[i].store(w, std::memory_order_relaxed);  // inherit the uniform value
  if (root_[ri].compare_exchange_strong(w, reinterpret_cast<uint64_t>(mid), std::memory_order_acq_rel)) return mid;
  // Another writer split this block first; ours is wasted (4 KiB, rare) since readers never saw it.
  return reinterpret_cast<std::atomic<uint64_t>*>(w);
}

std::atomic<uint32_t>* PageMap::leaf_of(std::atomic<uint64_t>& slot, bool create) {
  uint64_t w = slot.load(std::memory_order_acquire);
  if (is_table(w) || !create) return is_table(w) ? reinterpret_cast<std::atomic<uint32_t>*>(w) : nullptr;
  auto* leaf = static_cast<std::atomic<uint32_t>*>(alloc_node(kSlots * sizeof(uint32_t)));
  if (!leaf) return nullptr;
  uint32_t inherited = leaf_word(from_uniform(w));
  for (size_t i = 0; i < kSlots; ++i) leaf[i].store(inherited, std::memory_order_relaxed);
  if (slot.compare_exchange_strong(w, reinterpret_cast<uint64_t>(leaf), std::memory_order_acq_rel)) return leaf;
  return reinterpret_cast<std::atomic<uint32_t>*>(w);
}

// Applies fn (PageEntry -> PageEntry) to every page of the range, at the coarsest level that the
// range covers whole.
template <typename Fn>
bool PageMap::update(uintptr_t addr, size_t len, Fn fn) {
  uintptr_t end = addr + len;
  for (uintptr_t p = addr; p < end;) {
    size_t ri = p >> kRootShift;
    if (ri >= kRootEntries) return false;
    uintptr_t root_start = uintptr_t{ri} << kRootShift, root_end = root_start + (uintptr_t{1} << kRootShift);
    uint64_t rw = root_[ri].load(std::memory_order_acquire);
    if (!is_table(rw) && p == root_start && end >= root_end) {
      root_[ri].store(uniform_word(fn(from_uniform(rw))), std::memory_order_release);
      p = root_end;
      continue;
    }
    std::atomic<uint64_t>* mid = mid_of(ri, true);
    if (!mid) return false;
    for (; p < end && p < root_end;) {
      uintptr_t mid_start = (p >> kMidShift) << kMidShift, mid_end = mid_start + (uintptr_t{1} << kMidShift);
      std::atomic<uint64_t>& slot = mid[(p >> kMidShift) & (kSlots - 1)];
      uint64_t mw = slot.load(std::memory_order_acquire);
      if (!is_table(mw) && p == mid_start && end >= mid_end) {
        slot.store(uniform_word(fn(from_uniform(mw))), std::memory_order_release);
        p = mid_end;
        continue;
      }
      std::atomic<uint32_t>* leaf = leaf_of(slot, true);
      if (!leaf) return false;
      uintptr_t stop = mid_end < end ? mid_end : end;
      for (; p < stop; p += uintptr_t{1} << kPageShift) {
        auto& e = leaf[(p >> kPageShift) & (kSlots - 1)];
        e.store(leaf_word(fn(from_leaf(e.load(std::memory_order_relaxed)))), std::memory_order_relaxed);
      }
    }
  }
  return true;
}

bool PageMap::set(uintptr_t addr, size_t len, PageEntry e) {
  return update(addr, len, [e](PageEntry) { return e; });
}

bool PageMap::retier(uintptr_t addr, size_t len, uint8_t tier, uint16_t node) {
  return update(addr, len, [tier, node](PageEntry e) {
    if (e.managed()) e.tier = tier, e.node = node;
    return e;
  });
}

bool PageMap::set_committed(uintptr_t addr, size_t len, bool committed) {
  return update(addr, len, [committed](PageEntry e) {
    if (e.managed()) e.committed = committed;
    return e;
  });
}

PageEntry PageMap::get(uintptr_t addr) const {
  size_t ri = addr >> kRootShift;
  if (ri >= kRootEntries) return PageEntry{};
  uint64_t rw = root_[ri].load(std::memory_order_acquire);
  if (!is_table(rw)) return from_uniform(rw);
  uint64_t mw = reinterpret_cast<std::atomic<uint64_t>*>(rw)[(addr >> kMidShift) & (kSlots - 1)].load(std::memory_order_acquire);
  if (!is_table(mw)) return from_uniform(mw);
  return from_leaf(reinterpret_cast<std::atomic<uint32_t>*>(mw)[(addr >> kPageShift) & (kSlots - 1)].load(std::memory_order_relaxed));
}

PageMap& page_map() {
  // Constant-initialised storage: usable from jemalloc's first mapping, before any constructor runs.
  static constinit PageMap map;
  return map;
}

}  // namespace tieralloc::alloc
