// The C++ new-handler protocol, as jemalloc's operators follow it, for tieralloc's operators whose
// first allocation attempt failed: call the installed handler and try again until an attempt
// succeeds; with no handler, throw std::bad_alloc, or for the nothrow forms return nullptr (also when
// the handler throws).
#pragma once

#include <new>

namespace tieralloc::alloc {

template <typename Attempt>
void* retry_with_new_handler(Attempt attempt, bool nothrow) {
  for (;;) {
    std::new_handler handler = std::get_new_handler();
    if (!handler) {
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    if (nothrow) {
      try {
        handler();
      } catch (...) {
        return nullptr;
      }
    } else {
      handler();
    }
    if (void* p = attempt()) return p;
  }
}

}  // namespace tieralloc::alloc
