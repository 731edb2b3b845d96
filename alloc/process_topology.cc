#include "alloc/process_topology.h"

#include <unistd.h>

#include <mutex>

namespace tieralloc::alloc {

void warn(const std::string& text) {
  std::string line = "tieralloc: warning: " + text + "\n";
  ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
  (void)rc;  // nowhere to report a failed warning
}

const numa::Topology& process_topology() {
  static std::once_flag once;
  static numa::Topology* topo;
  std::call_once(once, [] {
    // Never destroyed: allocator hooks may consult it from atexit handlers of other libraries.
    topo = new numa::Topology(numa::discover(numa::options_from_env()));
    for (const auto& w : topo->warnings) warn(w);
  });
  return *topo;
}

}  // namespace tieralloc::alloc
