// The page map: for every 4 KiB page tieralloc manages, which tier and node it was placed on and
// which arena policy owns it. Later layers add heat and poison state beside it.
//
// Layout: a two-level radix over the 47-bit user address space. The root (128 Ki pointers, 1 MiB
// of zero-fill BSS, resident only where touched) covers 1 GiB per entry; a leaf holds 256 Ki
// 4-byte entries (1 MiB of address space, mapped on first use, resident only where touched).
// Metadata is 4 bytes per 4 KiB page: 0.1% of managed memory.
//
// Reads are lock-free and safe from signal handlers; writers own disjoint page ranges (jemalloc
// hands an extent to one hook call at a time), so entries need no locking, only relaxed atomics.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tieralloc::alloc {

struct PageEntry {
  static constexpr uint8_t kUnmanaged = 0xff;
  uint8_t tier = kUnmanaged;  // rank, or kUnmanaged
  uint8_t owner = 0;          // policy slot of the arena that mapped it
  uint16_t node = 0;          // node bound at placement (or moved to)
};
static_assert(sizeof(PageEntry) == 4);

class PageMap {
 public:
  static constexpr unsigned kPageShift = 12;
  static constexpr unsigned kLeafShift = 30;  // address bits covered by one leaf
  static constexpr size_t kLeafEntries = size_t{1} << (kLeafShift - kPageShift);
  static constexpr size_t kRootEntries = size_t{1} << (47 - kLeafShift);

  // Records [addr, addr+len) as placed on tier/node by owner. False if metadata could not be
  // mapped (the caller then refuses the extent).
  bool set(uintptr_t addr, size_t len, uint8_t tier, uint16_t node, uint8_t owner);
  // Updates tier/node of the managed pages in the range, leaving owner; returns bytes updated.
  size_t retier(uintptr_t addr, size_t len, uint8_t tier, uint16_t node);
  void clear(uintptr_t addr, size_t len);
  PageEntry get(uintptr_t addr) const;
  bool managed(uintptr_t addr) const { return get(addr).tier != PageEntry::kUnmanaged; }

  size_t metadata_bytes() const { return leaves_.load(std::memory_order_relaxed) * kLeafEntries * sizeof(PageEntry); }

 private:
  std::atomic<uint32_t>* leaf(uintptr_t addr, bool create);
  std::atomic<std::atomic<uint32_t>*> root_[kRootEntries] = {};
  std::atomic<size_t> leaves_{0};
};

PageMap& page_map();

}  // namespace tieralloc::alloc
