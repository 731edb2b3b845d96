#include "numa/hwloc_view.h"

#include <hwloc.h>

#include <climits>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "os/fs.h"

namespace tieralloc::numa {
namespace {

// Environment changes that last until destruction; what was there before comes back, including
// "unset".
class ScopedEnv {
 public:
  ScopedEnv() = default;
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) setenv(it->first.c_str(), it->second->c_str(), 1);
      else unsetenv(it->first.c_str());
    }
  }

  // value nullptr unsets the variable.
  void set(const char* name, const char* value) {
    const char* old = getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

using HwlocTopology = std::unique_ptr<hwloc_topology, decltype(&hwloc_topology_destroy)>;

// The kinds a hwloc NUMA node subtype is compatible with; empty when the subtype says nothing
// about the kind (SPM is "specific purpose": HBM, CXL or anything a firmware set aside).
std::vector<MemoryKind> kinds_for_subtype(std::string_view subtype) {
  if (subtype == "DRAM") return {MemoryKind::kDram};
  if (subtype == "HBM" || subtype == "MCDRAM") return {MemoryKind::kHbm};
  if (subtype == "NVM") return {MemoryKind::kPmem};
  if (subtype == "GPUMemory") return {MemoryKind::kGpu};
  // Newer hwloc names CXL memory "CXL-DRAM" / "CXL-NVM"; persistent CXL memory may well have been
  // classified from its nvdimm-style dax parent.
  if (subtype.rfind("CXL", 0) == 0) {
    if (subtype.find("NVM") != std::string_view::npos) return {MemoryKind::kCxl, MemoryKind::kPmem};
    return {MemoryKind::kCxl};
  }
  return {};
}

Node* find_node(Topology& topo, unsigned os_index) {
  if (os_index > static_cast<unsigned>(INT_MAX)) return nullptr;  // HWLOC_UNKNOWN_INDEX
  for (auto& n : topo.nodes)
    if (n.id == static_cast<int>(os_index)) return &n;
  return nullptr;
}

HwlocTopology load(const std::string& root, std::string& error) {
  HwlocTopology topo(nullptr, &hwloc_topology_destroy);
  // hwloc reads these in init and load; pin it to the tree discover() read, whatever the caller's
  // environment points it at.
  ScopedEnv env;
  env.set("HWLOC_FSROOT", root.c_str());
  env.set("HWLOC_THISSYSTEM", root == "/" ? nullptr : "0");
  env.set("HWLOC_XMLFILE", nullptr);
  env.set("HWLOC_SYNTHETIC", nullptr);
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) {
    error = "hwloc_topology_init failed";
    return topo;
  }
  topo.reset(raw);
  // discover() lists every online node, cgroup or not; so must hwloc, or nodes outside this
  // process's cpuset would look hidden.
  hwloc_topology_set_flags(raw, HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED);
  if (hwloc_topology_load(raw) != 0) {
    error = "hwloc_topology_load failed";
    topo.reset();
    return topo;
  }
  // When its Linux backend cannot open the root, hwloc still loads, from another backend (x86
  // CPUID, or nothing) describing the host: a view of a different machine than topo.
  const char* backend = hwloc_obj_get_info_by_name(hwloc_get_root_obj(raw), "Backend");
  if (!backend || std::string_view(backend) != "Linux") {
    error = std::string("hwloc read it with the ") + (backend ? backend : "unknown") + " backend, not Linux sysfs";
    topo.reset();
  }
  return topo;
}

void add_memattr(hwloc_topology_t t, hwloc_obj_t obj, hwloc_memattr_id_t id, const char* label, const char* unit,
                 Node& n) {
  // The node's own locality as initiator: for a CPU-less node that is the package or group it
  // hangs off, the same CPUs HMAT's access1 names.
  hwloc_location initiator{};
  initiator.type = HWLOC_LOCATION_TYPE_CPUSET;
  initiator.location.cpuset = obj->cpuset;
  hwloc_uint64_t value = 0;
  if (hwloc_memattr_get_value(t, id, obj, &initiator, 0, &value) == 0 && value > 0)
    n.evidence.push_back(std::string("hwloc:") + label + "=" + std::to_string(value) + unit);
}

}  // namespace

void add_hwloc_evidence(Topology& topo) {
  const std::string root = topo.fsroot.empty() ? "/" : topo.fsroot;
  if (!os::FsRoot(root).is_dir("/")) {
    topo.warnings.push_back("hwloc: " + root + " is not a directory; no hwloc evidence");
    return;
  }
  std::string error;
  HwlocTopology hw = load(root, error);
  if (!hw) {
    topo.warnings.push_back("hwloc: cannot read the topology under " + root + " (" + error + "); no hwloc evidence");
    return;
  }
  hwloc_topology_t t = hw.get();
  for (hwloc_obj_t obj = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, nullptr); obj;
       obj = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, obj)) {
    Node* n = find_node(topo, obj->os_index);
    if (!n) continue;
    if (obj->subtype) {
      n->evidence.push_back(std::string("hwloc:subtype=") + obj->subtype);
      auto kinds = kinds_for_subtype(obj->subtype);
      bool agrees = kinds.empty();
      for (MemoryKind k : kinds) agrees |= k == n->kind;
      if (!agrees)
        topo.warnings.push_back("hwloc cross-check: node" + std::to_string(n->id) + " is " + obj->subtype +
                                " to hwloc but " + kind_name(n->kind) + " here; compare the node's evidence");
    }
    if (const char* tier = hwloc_obj_get_info_by_name(obj, "MemoryTier"))
      n->evidence.push_back(std::string("hwloc:memorytier=") + tier);
    if (const char* dax = hwloc_obj_get_info_by_name(obj, "DAXDevice")) {
      const char* type = hwloc_obj_get_info_by_name(obj, "DAXType");
      n->evidence.push_back(std::string("hwloc:dax=") + dax + (type ? std::string(":") + type : ""));
    }
    // hwloc takes these from the same HMAT sysfs files, unscaled: MB/s and ns as the kernel gives them.
    add_memattr(t, obj, HWLOC_MEMATTR_ID_BANDWIDTH, "bandwidth", "MB/s", *n);
    add_memattr(t, obj, HWLOC_MEMATTR_ID_LATENCY, "latency", "ns", *n);
  }
}

}  // namespace tieralloc::numa
