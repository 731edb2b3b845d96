// `tieralloc bench diff A.json B.json`: every figure two results documents share, with B/A.
// Items are paired by what identifies them (workload, target, op, threads, mix, placement, ...), not
// by position, so documents from runs with different placements or targets still line up.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include "tool/bench.h"

namespace tieralloc::tool {
namespace {

using nlohmann::json;

// Fields that say what was measured rather than how it went.
bool is_parameter(const std::string& name) {
  static const char* const kParams[] = {"threads", "bytes", "bytes_per_array", "ws_bytes", "records", "value_bytes",
                                        "read_share", "fast_budget_bytes", "requests", "keys", "hot_set_move_s",
                                        "emulated_delay_ns", "seconds", "loads"};
  for (const char* p : kParams)
    if (name == p) return true;
  return false;
}

bool load(const std::string& path, json& doc) {
  std::ifstream f(path);
  if (!f) {
    fprintf(stderr, "tieralloc bench diff: cannot read %s\n", path.c_str());
    return false;
  }
  doc = json::parse(f, nullptr, false);
  if (doc.is_discarded() || !doc.contains("tieralloc_bench") || !doc.contains("results")) {
    fprintf(stderr, "tieralloc bench diff: %s is not a tieralloc bench results document\n", path.c_str());
    return false;
  }
  return true;
}

std::string describe(const json& doc) {
  const json& m = doc["machine"];
  return m.value("cpu_model", "?") + ", " + std::to_string(m.value("cores", 0)) + " cores, " + m.value("kernel", "?") + "; " +
         (doc["topology"].value("emulated", false) ? "EMULATED tiers" : "real tiers") + "; tieralloc " +
         doc.value("tieralloc_version", "?") + "; " + doc.value("created", "?");
}

}  // namespace

int cmd_bench_diff(const std::vector<std::string_view>& args) {
  if (args.size() != 2) {
    fprintf(stderr, "tieralloc bench diff: expected two results files\nusage: tieralloc bench diff A.json B.json\n");
    return 2;
  }
  json a, b;
  if (!load(std::string(args[0]), a) || !load(std::string(args[1]), b)) return 2;
  printf("A: %s\n   %s\nB: %s\n   %s\n", std::string(args[0]).c_str(), describe(a).c_str(), std::string(args[1]).c_str(),
         describe(b).c_str());
  if (a["topology"].value("emulated", false) != b["topology"].value("emulated", false))
    printf("note: one run is on emulated tiers and the other on real tiers\n");
  std::map<std::string, const json*> in_b;
  for (const auto& r : result_rows(b)) in_b[r.key] = r.item;
  printf("\n%-44s %-22s %14s %14s %9s\n", "item", "figure", "A", "B", "B/A");
  size_t paired = 0, only_a = 0;
  for (const auto& r : result_rows(a)) {
    auto it = in_b.find(r.key);
    if (it == in_b.end()) {
      ++only_a;
      continue;
    }
    ++paired;
    for (auto& [name, va] : r.item->items()) {
      if (!va.is_number() || is_parameter(name) || !it->second->contains(name) || !(*it->second)[name].is_number()) continue;
      double x = va.get<double>(), y = (*it->second)[name].get<double>();
      char ratio[32] = "-";
      if (x != 0) snprintf(ratio, sizeof ratio, "%.3f", y / x);
      printf("%-44s %-22s %14.4g %14.4g %9s\n", r.key.c_str(), name.c_str(), x, y, ratio);
    }
    in_b.erase(it);
  }
  printf("\n%zu items paired; %zu only in A, %zu only in B\n", paired, only_a, in_b.size());
  return 0;
}

}  // namespace tieralloc::tool
