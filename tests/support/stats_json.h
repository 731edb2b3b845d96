// tieralloc_stats_json for tests: the whole document, and one unsigned figure by name.
#pragma once

#include <string>

#include "tieralloc/tieralloc.h"

namespace tieralloc::testing {

inline std::string stats_json() {
  int n = tieralloc_stats_json(nullptr, 0);
  std::string s(static_cast<size_t>(n) + 1, '\0');
  tieralloc_stats_json(s.data(), s.size());
  s.resize(static_cast<size_t>(n));
  return s;
}

// The first "name": N in doc (0 when absent).
inline unsigned long long stats_figure(const std::string& doc, const std::string& name) {
  size_t p = doc.find("\"" + name + "\": ");
  return p == std::string::npos ? 0 : std::stoull(doc.substr(p + name.size() + 4));
}

}  // namespace tieralloc::testing
