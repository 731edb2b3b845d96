// The allocations a poisoned range touches, for the poison events (tieralloc_poison_event), so an
// application can fetch those objects again from elsewhere.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tieralloc/tieralloc.h"

namespace tieralloc::poison {

// The blocks jemalloc has handed out and not taken back that overlap [addr, addr+len), in address
// order: the first `cap` in out[], and the count of all of them as the result; -1 when this
// jemalloc cannot be read (see allocations_in_range.cc), after one warning on stderr. Blocks held aside
// from a quarantined page are tieralloc's, not the application's, and are left out. A block
// freed into a thread's cache has not been given back yet and is listed; a block allocated or
// freed while this runs may be missed or listed. Not async-signal-safe: it may allocate (once).
long allocations_in_range(uintptr_t addr, size_t len, tieralloc_allocation* out, size_t cap);

}  // namespace tieralloc::poison
