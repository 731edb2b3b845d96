// `tieralloc run [options] -- program args`: runs a program with libtieralloc.so preloaded.
#include "tool/run.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace tieralloc::tool {

std::string locate(const char* env_var, const std::string& from_bindir, const std::string& in_build_tree) {
  if (const char* env = getenv(env_var); env && *env) return env;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    std::string dir(exe);
    dir.resize(dir.rfind('/'));
    std::string installed = dir + "/" + from_bindir;
    if (access(installed.c_str(), R_OK) == 0) return installed;
  }
  return in_build_tree;
}

std::string library_path() {
  return locate("TIERALLOC_LIBRARY", std::string(TIERALLOC_BIN_TO_LIB) + "/libtieralloc.so.0", TIERALLOC_BUILD_LIBRARY);
}

int cmd_run(const std::vector<std::string_view>& args, int (*usage_error)(const std::string&)) {
  size_t i = 0;
  for (; i < args.size(); ++i) {
    std::string_view a = args[i];
    auto value = [&](std::string_view name) -> const char* {
      if (a.size() > name.size() && a.substr(0, name.size()) == name && a[name.size()] == '=')
        return args[i].data() + name.size() + 1;
      if (a == name && i + 1 < args.size()) return args[++i].data();
      return nullptr;
    };
    if (a == "--") {
      ++i;
      break;
    }
    // Values are handed to the library through its environment variables: the library checks
    // them (one place, one set of messages) and warns once, never refusing to run the program.
    if (const char* v = value("--fast-limit")) setenv("TIERALLOC_FAST_LIMIT", v, 1);
    else if (const char* v2 = value("--tiers")) setenv("TIERALLOC_TIERS", v2, 1);
    else if (a == "--stats") setenv("TIERALLOC_STATS", "stderr", 1);
    else if (const char* v3 = value("--stats")) setenv("TIERALLOC_STATS", v3, 1);
    else if (!a.empty() && a[0] == '-') return usage_error("run: unknown option '" + std::string(a) + "'");
    else break;  // the program, without a "--"
  }
  if (i >= args.size()) return usage_error("run: no program given (tieralloc run [options] -- program args)");

  std::string lib = library_path();
  if (access(lib.c_str(), R_OK) != 0) {
    std::fprintf(stderr, "tieralloc: run: cannot find libtieralloc.so (looked at %s); set TIERALLOC_LIBRARY\n", lib.c_str());
    return 127;
  }
  std::string preload = lib;
  if (const char* old = getenv("LD_PRELOAD"); old && *old) preload += std::string(":") + old;
  setenv("LD_PRELOAD", preload.c_str(), 1);

  std::vector<char*> argv;
  for (size_t j = i; j < args.size(); ++j) argv.push_back(const_cast<char*>(args[j].data()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::fprintf(stderr, "tieralloc: run: cannot run %s: %s\n", argv[0], std::strerror(errno));
  return errno == ENOENT ? 127 : 126;
}

}  // namespace tieralloc::tool
