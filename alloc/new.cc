// The unaligned operator new: jemalloc's own fast path (imalloc_fastpath, the inline function its
// C++ operators are built on) with tieralloc's fallback, so that new costs what jemalloc's costs
// and, like malloc, reaches tieralloc only where jemalloc's fast path declines (alloc/preload.cc).
// jemalloc's own operator new would reach the fallback through a function of its own, and the
// fallback would no longer know the caller, which is what allocation sites are.
#include <new>

#include "alloc/new_handler.h"

extern "C" {
#include "jemalloc/internal/jemalloc_preamble.h"
#include "jemalloc/internal/jemalloc_internal_includes.h"
}

extern "C" void* tieralloc_malloc_slow(size_t size, uintptr_t site) __attribute__((visibility("hidden")));

namespace {

__attribute__((noinline)) void* new_failed(size_t size, uintptr_t site, bool nothrow) {
  return tieralloc::alloc::retry_with_new_handler([&] { return tieralloc_malloc_slow(size, site); }, nothrow);
}

// Reached by a tail jump from the operator: the return address is the operator's caller.
template <bool kNothrow>
__attribute__((noinline)) void* new_slow(size_t size) noexcept(kNothrow) {
  const uintptr_t site = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  if (void* p = tieralloc_malloc_slow(size, site); __builtin_expect(p != nullptr, 1)) return p;
  return new_failed(size, site, kNothrow);
}

}  // namespace

void* operator new(std::size_t size) { return imalloc_fastpath(size, &new_slow<false>); }
void* operator new[](std::size_t size) { return imalloc_fastpath(size, &new_slow<false>); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return imalloc_fastpath(size, &new_slow<true>); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return imalloc_fastpath(size, &new_slow<true>); }
