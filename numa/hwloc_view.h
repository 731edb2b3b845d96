// hwloc's reading of the same sysfs tree, as a second opinion on discover()'s result.
//
// Tool and test code only: libtieralloc.so does not link hwloc, so a preloaded heap pays neither
// hwloc's load time nor its dependencies. Nothing here changes kinds or tiers; it only adds
// evidence, so that an operator can compare two independent readings of the machine.
#pragma once

#include "numa/topology.h"

namespace tieralloc::numa {

// Loads hwloc on topo.fsroot and, for each NUMA node hwloc reports (by os_index) that topo also
// has, appends evidence strings:
//   hwloc:subtype=NVM           the node's subtype (DRAM, HBM, NVM, SPM, GPUMemory, ...)
//   hwloc:memorytier=1          info MemoryTier, where this hwloc version sets it
//   hwloc:dax=dax0.0:NVM        infos DAXDevice and DAXType
//   hwloc:bandwidth=1000MB/s    memory attributes as seen from the node's local CPUs
//   hwloc:latency=26ns
// Nodes hwloc hides (NVIDIA GPU memory, memory-less nodes) get nothing. A node whose hwloc subtype
// contradicts its kind gets a warning starting "hwloc cross-check:". When hwloc cannot read the
// tree, a warning says so and topo is otherwise untouched.
//
// hwloc 2.9 has no API for its Linux fsroot, so this sets HWLOC_FSROOT and HWLOC_THISSYSTEM for
// the duration of the load and restores them after: not safe to call while other threads read
// the environment.
void add_hwloc_evidence(Topology& topo);

}  // namespace tieralloc::numa
