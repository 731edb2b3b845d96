// tieralloc C++ API: memory resources per tier or hint, an STL allocator that carries a placement,
// and owning pointers. Header-only over the C API, so it has no ABI of its own.
#pragma once

#include <cstddef>
#include <memory>
#include <memory_resource>
#include <new>
#include <utility>

#include "tieralloc/tieralloc.h"

namespace tieralloc {

// Where memory goes: a tier, or a hint, optionally strict (no fallback to another tier).
class Placement {
 public:
  static Placement tier(int t, bool strict = false) { return Placement(TIERALLOC_TIER(t) | (strict ? TIERALLOC_STRICT : 0)); }
  static Placement hot(bool strict = false) { return Placement(TIERALLOC_HOT | (strict ? TIERALLOC_STRICT : 0)); }
  static Placement cold(bool strict = false) { return Placement(TIERALLOC_COLD | (strict ? TIERALLOC_STRICT : 0)); }
  static Placement slowest() { return tier(tieralloc_tier_count() - 1); }
  Placement() = default;  // default placement: fastest tier within budget, then the next

  int flags() const { return flags_; }
  friend bool operator==(Placement a, Placement b) { return a.flags_ == b.flags_; }

 private:
  explicit Placement(int flags) : flags_(flags) {}
  int flags_ = 0;
};

// A std::pmr::memory_resource that allocates with a fixed placement. Throws std::bad_alloc on
// failure, as memory resources must.
class TierResource final : public std::pmr::memory_resource {
 public:
  explicit TierResource(Placement p = {}) : placement_(p) {}
  Placement placement() const { return placement_; }

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    int flags = placement_.flags() | (alignment > alignof(std::max_align_t) ? TIERALLOC_ALIGN(alignment) : 0);
    void* p = tieralloc_mallocx(bytes, flags);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void* p, std::size_t, std::size_t) override { tieralloc_free(p); }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    auto* o = dynamic_cast<const TierResource*>(&other);
    return o && o->placement_ == placement_;
  }

  Placement placement_;
};

// Process-wide resources, one per tier and per hint (created on first use, never destroyed, so
// containers with static storage duration may use them until exit).
inline TierResource* tier_resource(int t) {
  if (t < 0 || t >= tieralloc_tier_count()) return nullptr;
  static TierResource* resources[64] = {};
  if (t >= 64) return nullptr;
  if (!resources[t]) resources[t] = new TierResource(Placement::tier(t));
  return resources[t];
}
inline TierResource* hot_resource() {
  static auto* r = new TierResource(Placement::hot());
  return r;
}
inline TierResource* cold_resource() {
  static auto* r = new TierResource(Placement::cold());
  return r;
}

// STL allocator carrying a placement: std::vector<int, tieralloc::allocator<int>> v(alloc).
template <typename T>
class allocator {
 public:
  using value_type = T;
  allocator() noexcept = default;
  explicit allocator(Placement p) noexcept : placement_(p) {}
  template <typename U>
  allocator(const allocator<U>& other) noexcept : placement_(other.placement()) {}

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    int flags = placement_.flags() | (alignof(T) > alignof(std::max_align_t) ? TIERALLOC_ALIGN(alignof(T)) : 0);
    void* p = tieralloc_mallocx(n * sizeof(T), flags);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { tieralloc_free(p); }
  Placement placement() const noexcept { return placement_; }

  template <typename U>
  friend bool operator==(const allocator& a, const allocator<U>& b) noexcept {
    return a.placement() == b.placement();
  }

 private:
  Placement placement_;
};

// Owning pointer to an object placed with tieralloc.
struct Deleter {
  template <typename T>
  void operator()(T* p) const noexcept {
    p->~T();
    tieralloc_free(p);
  }
};
template <typename T>
using unique_ptr = std::unique_ptr<T, Deleter>;

template <typename T, typename... Args>
unique_ptr<T> make_unique(Placement p, Args&&... args) {
  int flags = p.flags() | (alignof(T) > alignof(std::max_align_t) ? TIERALLOC_ALIGN(alignof(T)) : 0);
  void* mem = tieralloc_mallocx(sizeof(T), flags);
  if (!mem) throw std::bad_alloc();
  try {
    return unique_ptr<T>(new (mem) T(std::forward<Args>(args)...));
  } catch (...) {
    tieralloc_free(mem);
    throw;
  }
}

// Owning byte buffer (RAII over tieralloc_mallocx/tieralloc_free).
class Buffer {
 public:
  Buffer() = default;
  Buffer(std::size_t size, Placement p = {}) : data_(static_cast<std::byte*>(tieralloc_mallocx(size, p.flags()))), size_(size) {
    if (!data_) throw std::bad_alloc();
  }
  Buffer(Buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      tieralloc_free(data_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~Buffer() { tieralloc_free(data_); }
  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  int tier() const { return data_ ? tieralloc_tier_of(data_) : -1; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace tieralloc
