// `tieralloc bench WORKLOAD [options]`: what each placement costs on this machine.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tieralloc::tool {

int cmd_bench(const std::vector<std::string_view>& args);

// A results document (see bench.cc for its shape) drawn as PNG charts under dir with gnuplot.
// Returns the files written; throws std::runtime_error when gnuplot is missing or fails.
std::vector<std::string> plot_results(const nlohmann::json& doc, const std::string& dir);

// `tieralloc bench diff A.json B.json`: the ratio B/A of every figure the two have in common.
int cmd_bench_diff(const std::vector<std::string_view>& args);

// The measured items of a document, one row per item, keyed by what identifies the item within its
// workload ("kv B tieralloc", "latency tier:1"), with the item's numeric figures.
struct ResultRow {
  std::string workload, key;
  const nlohmann::json* item;
};
std::vector<ResultRow> result_rows(const nlohmann::json& doc);

}  // namespace tieralloc::tool
