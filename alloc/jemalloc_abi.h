// jemalloc's entry points as libtieralloc.so links them (alloc/CMakeLists.txt): the ones tieralloc
// wraps, renamed tl_je_*; and the two calls tieralloc's own paths allocate and free with.
#pragma once

#include <errno.h>
#include <stddef.h>

extern "C" {
// jemalloc's own, bound locally (never wrapped: they return no memory).
size_t sallocx(const void* ptr, int flags);
void dallocx(void* ptr, int flags);
// Renamed in the archive (alloc/jemalloc_renames.txt): tieralloc's wrappers own the public names.
void* tl_je_calloc(size_t n, size_t size);
int tl_je_posix_memalign(void** out, size_t alignment, size_t size);
void* tl_je_valloc(size_t size);
void* tl_je_mallocx(size_t size, int flags);
void* tl_je_rallocx(void* ptr, size_t size, int flags);
size_t tl_je_xallocx(void* ptr, size_t size, size_t extra, int flags);
void* tl_je_realloc(void* ptr, size_t size);
void* tl_je_memalign(size_t alignment, size_t size);
void* tl_je_aligned_alloc(size_t alignment, size_t size);
}

namespace tieralloc::alloc {

// malloc and free as jemalloc does them past its fast paths, for code that runs where malloc's
// and free's fallbacks are tieralloc's (alloc/preload.cc): calling malloc or free there would come
// straight back while jemalloc's fast paths are off (alloc/detours.h). mallocx without flags is
// malloc_default's allocation, except that it leaves errno alone; malloc sets ENOMEM.
inline void* raw_malloc(size_t size) {
  void* p = tl_je_mallocx(size ? size : 1, 0);
  if (__builtin_expect(p == nullptr, 0)) errno = ENOMEM;
  return p;
}
inline void raw_free(void* p) {
  if (p) dallocx(p, 0);
}

}  // namespace tieralloc::alloc
