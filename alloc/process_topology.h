// The topology this process allocates on: discovered once, on first use, from TIERALLOC_FSROOT and
// TIERALLOC_TIERS; warnings about bad input are printed once on stderr.
#pragma once

#include "numa/topology.h"

namespace tieralloc::alloc {

const numa::Topology& process_topology();

// Prints "tieralloc: warning: <text>" on stderr with a single write(2): usable before stdio is
// set up and from any thread.
void warn(const std::string& text);

}  // namespace tieralloc::alloc
