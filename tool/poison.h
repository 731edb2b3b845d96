// `tieralloc poison list|scan|report|clear`: the quarantine journal and the nvdimm badblocks lists.
#pragma once

#include <string_view>
#include <vector>

namespace tieralloc::tool {

// Exit status: 0 done, 1 the journal could not be read or written (or a report could not be
// placed), 2 bad usage.
int cmd_poison(const std::vector<std::string_view>& args);

}  // namespace tieralloc::tool
