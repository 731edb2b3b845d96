#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tieralloc::tool {

// A file that ships with the tool: $ENV_VAR when set, else from_bindir relative to the directory of
// the running tool when it is there (an installed tree, wherever it was moved), else the build tree.
std::string locate(const char* env_var, const std::string& from_bindir, const std::string& in_build_tree);
// libtieralloc.so for LD_PRELOAD (TIERALLOC_LIBRARY overrides).
std::string library_path();

// Execs the program after the options with libtieralloc.so preloaded; returns only on failure
// (2 for bad usage through usage_error, 126/127 when the program cannot be run).
int cmd_run(const std::vector<std::string_view>& args, int (*usage_error)(const std::string&));

}  // namespace tieralloc::tool
