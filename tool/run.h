#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tieralloc::tool {

// Execs the program after the options with libtieralloc.so preloaded; returns only on failure
// (2 for bad usage through usage_error, 126/127 when the program cannot be run).
int cmd_run(const std::vector<std::string_view>& args, int (*usage_error)(const std::string&));

}  // namespace tieralloc::tool
