// Memory-tier discovery: which NUMA nodes exist, what kind of memory each is, which a general
// purpose heap may use, and how the usable ones rank into tiers (rank 0 fastest).
//
// Sources, each optional and recorded per node as evidence strings:
//   kernel memory tiers   /sys/devices/virtual/memory_tiering/memory_tier*/nodelist
//   HMAT                  /sys/devices/system/node/nodeN/access{0,1}/initiators/*
//   dax devices           /sys/bus/dax/devices/*/{target_node,driver} and their parent device
//   node basics           online, has_cpu, cpulist/cpumap, meminfo, distance, memory_side_cache/
//   GPU memory nodes      /proc/driver/nvidia/gpus/*/numa_status
// When sources disagree on the ranking, the first that distinguishes the usable nodes wins:
// kernel memory tiers, then HMAT, then dax/nvdimm evidence, then distances. Topology::ranked_by
// names the winner.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace tieralloc::numa {

enum class MemoryKind { kDram, kHbm, kPmem, kCxl, kGpu, kUnknown };
const char* kind_name(MemoryKind kind);
std::optional<MemoryKind> kind_from_name(std::string_view name);

struct HmatPerf {
  int access_class = -1;  // 1 = CPU initiators only (preferred), 0 = any initiator
  uint64_t read_latency_ns = 0, write_latency_ns = 0;  // 0 = not reported
  uint64_t read_bandwidth_mbs = 0, write_bandwidth_mbs = 0;
  std::vector<int> initiators;
};

struct Node {
  int id = -1;
  std::vector<int> cpus;
  MemoryKind kind = MemoryKind::kUnknown;
  bool usable = false;
  std::string unusable_reason;  // empty when usable
  int tier = -1;                // rank, -1 when not usable
  uint64_t capacity_bytes = 0;
  bool capacity_known = false;      // meminfo was readable
  bool listed_with_memory = false;  // in node/has_memory
  uint64_t free_bytes = 0;
  std::vector<std::pair<int, int>> distances;  // (node id, distance)
  std::optional<int> kernel_tier;              // memory_tierN id
  std::optional<HmatPerf> hmat;
  uint64_t memory_side_cache_bytes = 0;
  std::vector<std::string> evidence;

  int distance_to(int other) const;  // -1 when unknown
};

struct Tier {
  int rank = 0;
  MemoryKind kind = MemoryKind::kUnknown;
  std::vector<int> nodes;
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  bool emulated = false;
  std::string label;  // the name the user gave in TIERALLOC_TIERS, else the kind
};

struct KernelTiering {
  int numa_balancing = -1;  // /proc/sys/kernel/numa_balancing; 2 = kernel promotes by itself
  std::optional<bool> demotion_enabled;
};

struct Topology {
  bool emulated = false;
  std::string ranked_by;  // "memory_tiering", "hmat", "dax", "distance", "single-tier", "TIERALLOC_TIERS"
  std::vector<Node> nodes;
  std::vector<Tier> tiers;
  KernelTiering kernel;
  std::string fsroot = "/";
  // Problems met while reading (malformed files, bad TIERALLOC_TIERS). Discovery never fails;
  // these say what it fell back from. Callers decide where to print them.
  std::vector<std::string> warnings;

  const Node* node(int id) const;
  int tier_of_node(int id) const;  // -1 when the node is not in any tier
};

struct DiscoverOptions {
  std::string fsroot = "/";     // TIERALLOC_FSROOT
  std::string tiers_spec;       // TIERALLOC_TIERS, empty = discover
};

// Options from the environment (TIERALLOC_FSROOT, TIERALLOC_TIERS).
DiscoverOptions options_from_env();

// Never throws on bad input: every problem becomes a warning and a fallback.
Topology discover(const DiscoverOptions& options);

// Human table and the JSON document of `tieralloc topology [--json]`.
std::string format_table(const Topology& topo);
std::string format_json(const Topology& topo);

}  // namespace tieralloc::numa
