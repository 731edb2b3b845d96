#include "alloc/pagemap.h"

#include <cstring>

#include "os/memory.h"

namespace tieralloc::alloc {
namespace {

uint32_t pack(PageEntry e) { return e.tier | uint32_t{e.owner} << 8 | uint32_t{e.node} << 16; }

PageEntry unpack(uint32_t v) {
  return PageEntry{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint16_t>(v >> 16)};
}

// Zero means "never written", which must read as unmanaged: entries are stored complemented.
constexpr uint32_t kUnmanagedWord = 0;
uint32_t encode(PageEntry e) { return ~pack(e); }
PageEntry decode(uint32_t w) { return w == kUnmanagedWord ? PageEntry{} : unpack(~w); }

}  // namespace

std::atomic<uint32_t>* PageMap::leaf(uintptr_t addr, bool create) {
  size_t i = addr >> kLeafShift;
  if (i >= kRootEntries) return nullptr;
  std::atomic<uint32_t>* l = root_[i].load(std::memory_order_acquire);
  if (l || !create) return l;
  void* fresh = os::map_anonymous(kLeafEntries * sizeof(uint32_t), os::kPageSize);
  if (!fresh) return nullptr;
  auto* mine = static_cast<std::atomic<uint32_t>*>(fresh);
  if (root_[i].compare_exchange_strong(l, mine, std::memory_order_acq_rel)) {
    leaves_.fetch_add(1, std::memory_order_relaxed);
    return mine;
  }
  os::unmap(fresh, kLeafEntries * sizeof(uint32_t));  // another thread won the race
  return l;
}

bool PageMap::set(uintptr_t addr, size_t len, uint8_t tier, uint16_t node, uint8_t owner) {
  uint32_t w = encode(PageEntry{tier, owner, node});
  for (uintptr_t p = addr; p < addr + len;) {
    std::atomic<uint32_t>* l = leaf(p, true);
    if (!l) return false;
    uintptr_t leaf_end = ((p >> kLeafShift) + 1) << kLeafShift;
    uintptr_t end = leaf_end < addr + len ? leaf_end : addr + len;
    for (size_t i = (p >> kPageShift) & (kLeafEntries - 1); p < end; p += size_t{1} << kPageShift, ++i)
      l[i].store(w, std::memory_order_relaxed);
  }
  return true;
}

size_t PageMap::retier(uintptr_t addr, size_t len, uint8_t tier, uint16_t node) {
  size_t bytes = 0;
  for (uintptr_t p = addr; p < addr + len; p += size_t{1} << kPageShift) {
    std::atomic<uint32_t>* l = leaf(p, false);
    if (!l) continue;
    auto& slot = l[(p >> kPageShift) & (kLeafEntries - 1)];
    PageEntry e = decode(slot.load(std::memory_order_relaxed));
    if (e.tier == PageEntry::kUnmanaged) continue;
    e.tier = tier;
    e.node = node;
    slot.store(encode(e), std::memory_order_relaxed);
    bytes += size_t{1} << kPageShift;
  }
  return bytes;
}

void PageMap::clear(uintptr_t addr, size_t len) {
  for (uintptr_t p = addr; p < addr + len; p += size_t{1} << kPageShift)
    if (std::atomic<uint32_t>* l = leaf(p, false)) l[(p >> kPageShift) & (kLeafEntries - 1)].store(kUnmanagedWord, std::memory_order_relaxed);
}

PageEntry PageMap::get(uintptr_t addr) const {
  size_t i = addr >> kLeafShift;
  if (i >= kRootEntries) return PageEntry{};
  std::atomic<uint32_t>* l = root_[i].load(std::memory_order_acquire);
  if (!l) return PageEntry{};
  return decode(l[(addr >> kPageShift) & (kLeafEntries - 1)].load(std::memory_order_relaxed));
}

PageMap& page_map() {
  // Constant-initialised storage: usable from the first extent hook, before any constructor runs.
  static constinit PageMap map;
  return map;
}

}  // namespace tieralloc::alloc
