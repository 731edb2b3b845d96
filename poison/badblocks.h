// The nvdimm bad-block lists, read through TIERALLOC_FSROOT, as physical address ranges.
//
//   /sys/bus/nd/devices/region*/badblocks   "SECTOR COUNT" lines, 512-byte sectors from the
//                                           region's start: its `resource` (physical base)
//   /sys/block/pmem*/badblocks              the same, from the start of the block device's data:
//                                           the `resource` of its parent device (`device` link),
//                                           a namespace (raw mode) or a pfn device (fsdax, where
//                                           the kernel's `resource` is already the data start)
//
// A BTT block device (pmem*s) has no physical base: its sectors are remapped through the BTT's
// own map, so its list cannot be placed and is skipped with a note; the region's list covers the
// same media. Lists of devdax-mode namespaces appear only in their region's list.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "os/fs.h"

namespace tieralloc::poison {

constexpr uint64_t kSectorSize = 512;

struct BadRange {
  uint64_t phys = 0, len = 0;
  std::string origin;  // "region0", "pmem0.1"
};

struct BadblocksScan {
  std::vector<BadRange> ranges;    // in the order found: each region, then each block device
  std::vector<std::string> notes;  // what could not be read or placed, one line each
  int lists_read = 0;              // badblocks files read
};

BadblocksScan read_badblocks(const os::FsRoot& fs);

// The union of the ranges, sorted and merged (a region's list and its block devices' lists name
// the same bad sectors twice).
std::vector<BadRange> merge_ranges(std::vector<BadRange> ranges);

}  // namespace tieralloc::poison
