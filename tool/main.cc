// The tieralloc command-line tool.
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "numa/hwloc_view.h"
#include "alloc/options.h"
#include "numa/topology.h"
#include "tool/bench.h"
#include "tool/poison.h"
#include "tool/run.h"

namespace {

constexpr const char* kUsage =
    "usage: tieralloc COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  topology [--json] [--fsroot DIR]   memory tiers of this machine (or of a sysfs tree under DIR)\n"
    "  run [--fast-limit SIZE|N%] [--tiers SPEC] [--stats[=PATH]] -- PROGRAM [ARGS]\n"
    "                                     run PROGRAM with tieralloc as its allocator\n"
    "  bench WORKLOAD [options]           what each placement costs here: latency, bandwidth, gups, kv,\n"
    "                                     redis, compare (all but redis); `tieralloc bench --help`\n"
    "  bench diff A.json B.json           ratio of every figure of two bench results\n"
    "  poison list|scan|report|clear      the quarantine journal and the nvdimm badblocks lists;\n"
    "                                     `tieralloc poison --help`\n"
    "  help                               this text\n";

void print_environment(FILE* out) {
  std::fputs("\nenvironment (read by the library in every program it serves):\n", out);
  for (const auto& d : tieralloc::alloc::option_docs())
    std::fprintf(out, "  %s=%s\n      %s\n", d.name, d.value, d.description);
}

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "tieralloc: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

int cmd_topology(const std::vector<std::string_view>& args) {
  auto options = tieralloc::numa::options_from_env();
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--json") json = true;
    else if (args[i] == "--fsroot" && i + 1 < args.size()) options.fsroot = args[++i];
    else return usage_error("topology: unknown option '" + std::string(args[i]) + "'");
  }
  auto topo = tieralloc::numa::discover(options);
  tieralloc::numa::add_hwloc_evidence(topo);
  for (const auto& w : topo.warnings) std::fprintf(stderr, "tieralloc: warning: %s\n", w.c_str());
  std::string out = json ? tieralloc::numa::format_json(topo) : tieralloc::numa::format_table(topo);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage_error("no command given");
  std::string_view cmd = argv[1];
  std::vector<std::string_view> args(argv + 2, argv + argc);
  if (cmd == "topology") return cmd_topology(args);
  if (cmd == "bench") return tieralloc::tool::cmd_bench(args);
  if (cmd == "poison") return tieralloc::tool::cmd_poison(args);
  if (cmd == "run") return tieralloc::tool::cmd_run(args, usage_error);
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    std::fputs(kUsage, stdout);
    print_environment(stdout);
    return 0;
  }
  return usage_error("unknown command '" + std::string(cmd) + "'");
}
