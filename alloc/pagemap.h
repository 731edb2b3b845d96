// The page map: for every 4 KiB page tieralloc manages, which tier and node it was placed on, which
// arena policy owns it, and whether jemalloc holds it committed (charged to the tier's budget).
// Later layers add heat and poison state beside it.
//
// Layout: a three-level radix over the 47-bit user address space -- 1 GiB root slots, 2 MiB mid
// slots, 4 KiB page entries -- where a root or mid slot wholly covered by one placement holds that
// placement as a single tagged value. Metadata therefore grows with how finely placements are
// interleaved, never with virtual size: a 64 TiB reservation costs a few root words, not 64 GiB of
// page entries. Per-page leaves (2 KiB) exist only for 2 MiB blocks shared by several extents or
// retiered in part, and are never freed (readers may hold them), only rewritten.
//
// Reads are lock-free and async-signal-safe. Writers own disjoint page ranges (jemalloc hands an
// extent to one hook call at a time); blocks they share are split into leaves with a CAS.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tieralloc::alloc {

struct PageEntry {
  static constexpr uint8_t kUnmanaged = 0xff;
  static constexpr uint8_t kMaxOwner = 0x7f;  // the owner byte's top bit holds `committed`
  uint8_t tier = kUnmanaged;  // rank, or kUnmanaged
  uint8_t owner = 0;          // policy slot of the arena that mapped it
  uint16_t node = 0;          // node bound at placement (or moved to); 0xffff = default policy
  // Committed pages count in their tier's usage; decommitted ones are address space jemalloc
  // retains, with no memory behind them until it commits them again.
  bool committed = false;
  bool managed() const { return tier != kUnmanaged; }
};

class PageMap {
 public:
  static constexpr unsigned kPageShift = 12, kMidShift = 21, kRootShift = 30;
  static constexpr size_t kSlots = 512;  // entries per mid table and per leaf
  static constexpr size_t kRootEntries = size_t{1} << (47 - kRootShift);

  // Records [addr, addr+len) (page-aligned) as placed on tier/node by owner. False if metadata
  // could not be mapped (the caller then refuses the extent).
  bool set(uintptr_t addr, size_t len, PageEntry e);
  void clear(uintptr_t addr, size_t len) { set(addr, len, PageEntry{}); }
  // Sets tier/node of the managed pages in the range, keeping their owner and commit state.
  bool retier(uintptr_t addr, size_t len, uint8_t tier, uint16_t node);
  // Sets the commit state of the managed pages in the range, keeping their placement.
  bool set_committed(uintptr_t addr, size_t len, bool committed);
  PageEntry get(uintptr_t addr) const;
  bool managed(uintptr_t addr) const { return get(addr).managed(); }

  // Calls fn(entry, bytes) over [addr, addr+len) in address order, once per run of pages with the
  // same entry (uniform blocks count as one run).
  template <typename Fn>
  void for_each_run(uintptr_t addr, size_t len, Fn fn) const;

  size_t metadata_bytes() const { return nodes_bytes_.load(std::memory_order_relaxed); }

 private:
  template <typename Fn>
  bool update(uintptr_t addr, size_t len, Fn fn);
  std::atomic<uint64_t>* mid_of(size_t root_index, bool create);
  std::atomic<uint32_t>* leaf_of(std::atomic<uint64_t>& slot, bool create);
  void* alloc_node(size_t bytes);

  std::atomic<uint64_t> root_[kRootEntries] = {};
  std::atomic<size_t> nodes_bytes_{0};
};

PageMap& page_map();

// Word encodings, shared by the header's template and pagemap.cc.
namespace pagemap_detail {
inline uint32_t pack(PageEntry e) {
  return e.tier | uint32_t(e.owner & PageEntry::kMaxOwner) << 8 | uint32_t{e.committed} << 15 | uint32_t{e.node} << 16;
}
inline PageEntry unpack(uint32_t v) {
  return PageEntry{static_cast<uint8_t>(v), static_cast<uint8_t>((v >> 8) & PageEntry::kMaxOwner), static_cast<uint16_t>(v >> 16),
                   ((v >> 15) & 1) != 0};
}
// Leaf words are stored complemented so that zero (never written) reads as unmanaged.
inline uint32_t leaf_word(PageEntry e) { return e.managed() ? ~pack(e) : 0; }
inline PageEntry from_leaf(uint32_t w) { return w ? unpack(~w) : PageEntry{}; }
// Root and mid slots: 0 = unmanaged, odd = uniform entry (entry << 1 | 1), even = table pointer.
inline uint64_t uniform_word(PageEntry e) { return e.managed() ? (uint64_t{pack(e)} << 1) | 1 : 0; }
inline bool is_table(uint64_t w) { return w != 0 && !(w & 1); }
inline PageEntry from_uniform(uint64_t w) { return w ? unpack(static_cast<uint32_t>(w >> 1)) : PageEntry{}; }
}  // namespace pagemap_detail

template <typename Fn>
void PageMap::for_each_run(uintptr_t addr, size_t len, Fn fn) const {
  using namespace pagemap_detail;
  uintptr_t end = addr + len;
  PageEntry run{};
  size_t run_bytes = 0;
  auto emit = [&](PageEntry e, size_t bytes) {
    if (run_bytes && pack(e) == pack(run)) {
      run_bytes += bytes;
      return;
    }
    if (run_bytes) fn(run, run_bytes);
    run = e;
    run_bytes = bytes;
  };
  for (uintptr_t p = addr; p < end;) {
    size_t ri = p >> kRootShift;
    uintptr_t root_end = (uintptr_t{ri} + 1) << kRootShift;
    uint64_t rw = ri < kRootEntries ? root_[ri].load(std::memory_order_acquire) : 0;
    if (!is_table(rw)) {
      uintptr_t stop = root_end < end ? root_end : end;
      emit(from_uniform(rw), stop - p);
      p = stop;
      continue;
    }
    auto* mid = reinterpret_cast<std::atomic<uint64_t>*>(rw);
    for (; p < end && p < root_end;) {
      uintptr_t mid_end = ((p >> kMidShift) + 1) << kMidShift;
      uintptr_t stop = mid_end < end ? mid_end : end;
      uint64_t mw = mid[(p >> kMidShift) & (kSlots - 1)].load(std::memory_order_acquire);
      if (!is_table(mw)) {
        emit(from_uniform(mw), stop - p);
        p = stop;
        continue;
      }
      auto* leaf = reinterpret_cast<std::atomic<uint32_t>*>(mw);
      for (; p < stop; p += uintptr_t{1} << kPageShift)
        emit(from_leaf(leaf[(p >> kPageShift) & (kSlots - 1)].load(std::memory_order_relaxed)), size_t{1} << kPageShift);
    }
  }
  if (run_bytes) fn(run, run_bytes);
}

}  // namespace tieralloc::alloc
