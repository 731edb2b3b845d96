#include "numa/topology.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include "os/fs.h"

namespace tieralloc::numa {
namespace {

using os::FsRoot;

constexpr const char* kNodeDir = "/sys/devices/system/node";
// Two nodes whose performance differs by less than this factor belong to one tier; HMAT figures
// of identical DIMMs vary by a few percent, a real tier boundary (DRAM vs Optane, vs CXL) by 2-5x.
constexpr double kTierRatio = 1.5;

std::string node_path(int id, std::string_view rest = "") {
  return std::string(kNodeDir) + "/node" + std::to_string(id) + std::string(rest);
}

std::optional<uint64_t> meminfo_kb(std::string_view text, std::string_view key) {
  size_t at = 0;
  while ((at = text.find(key, at)) != std::string_view::npos) {
    size_t colon = at + key.size();
    if (colon < text.size() && text[colon] == ':') {
      size_t eol = text.find('\n', colon);
      std::string_view rest = os::trim(text.substr(colon + 1, eol - colon - 1));
      if (rest.size() > 3 && rest.substr(rest.size() - 2) == "kB") rest.remove_suffix(2);
      auto v = os::parse_int(rest);
      if (!v || *v < 0) return std::nullopt;
      return static_cast<uint64_t>(*v);
    }
    at = colon;
  }
  return std::nullopt;
}

struct DaxDevice {
  std::string name;
  int target_node = -1;
  std::string driver;  // "kmem", "device_dax", ...
  std::string parent;  // "nvdimm", "hmem", "cxl", "other"
};

std::vector<DaxDevice> read_dax(const FsRoot& fs) {
  std::vector<DaxDevice> out;
  for (const auto& name : fs.list("/sys/bus/dax/devices")) {
    std::string base = "/sys/bus/dax/devices/" + name;
    DaxDevice d;
    d.name = name;
    auto target = fs.read(base + "/target_node");
    if (!target) continue;
    auto t = os::parse_int(*target);
    if (!t) continue;
    d.target_node = static_cast<int>(*t);
    if (auto drv = fs.readlink(base + "/driver")) d.driver = drv->substr(drv->rfind('/') + 1);
    std::string where = fs.readlink(base).value_or("");
    if (where.find("ndbus") != std::string::npos || where.find("/region") != std::string::npos)
      d.parent = "nvdimm";
    else if (where.find("cxl") != std::string::npos)
      d.parent = "cxl";
    else if (where.find("hmem") != std::string::npos)
      d.parent = "hmem";
    else
      d.parent = "other";
    out.push_back(std::move(d));
  }
  return out;
}

std::set<int> read_nvidia_gpu_nodes(const FsRoot& fs) {
  std::set<int> nodes;
  for (const auto& gpu : fs.list("/proc/driver/nvidia/gpus")) {
    auto status = fs.read("/proc/driver/nvidia/gpus/" + gpu + "/numa_status");
    if (!status) continue;
    std::string_view s = *status;
    size_t at = s.find("Node:");
    if (at == std::string_view::npos) continue;
    size_t eol = s.find('\n', at);
    if (auto n = os::parse_int(s.substr(at + 5, eol - at - 5)); n && *n >= 0)
      nodes.insert(static_cast<int>(*n));
  }
  return nodes;
}

std::optional<HmatPerf> read_hmat(const FsRoot& fs, int id) {
  // access1 lists CPU initiators only; access0 may name a generic initiator (a GPU, a NIC). A heap
  // serves CPUs, so access1 is the better witness when the kernel provides it.
  for (int cls : {1, 0}) {
    std::string dir = node_path(id, "/access" + std::to_string(cls) + "/initiators");
    if (!fs.is_dir(dir)) continue;
    HmatPerf p;
    p.access_class = cls;
    auto get = [&](const char* f) -> uint64_t {
      auto v = fs.read(dir + "/" + f);
      auto n = v ? os::parse_int(*v) : std::nullopt;
      return n && *n > 0 ? static_cast<uint64_t>(*n) : 0;
    };
    p.read_latency_ns = get("read_latency");
    p.write_latency_ns = get("write_latency");
    p.read_bandwidth_mbs = get("read_bandwidth");
    p.write_bandwidth_mbs = get("write_bandwidth");
    for (const auto& e : fs.list(dir))
      if (e.rfind("node", 0) == 0)
        if (auto n = os::parse_int(std::string_view(e).substr(4))) p.initiators.push_back(static_cast<int>(*n));
    if (p.read_latency_ns || p.read_bandwidth_mbs) return p;
  }
  return std::nullopt;
}

// Throughput per unit latency, using only the figures every compared node reports, so that a node
// with an unreported latency is not scored against one with a reported latency.
struct ScoreMode {
  bool latency = false, bandwidth = false;
};

ScoreMode common_mode(const std::vector<const Node*>& nodes) {
  ScoreMode m{true, true};
  for (const Node* n : nodes) {
    if (!n->hmat) return {};
    m.latency &= n->hmat->read_latency_ns > 0;
    m.bandwidth &= n->hmat->read_bandwidth_mbs > 0;
  }
  return m;
}

double score(const Node& n, ScoreMode m) {
  double s = 1.0;
  if (m.bandwidth) s *= static_cast<double>(n.hmat->read_bandwidth_mbs);
  if (m.latency) s /= static_cast<double>(n.hmat->read_latency_ns);
  return s;
}

// Groups items sorted fastest first into tiers: a new tier starts where the score falls below the
// current tier's head by kTierRatio.
template <typename T, typename Key>
std::vector<std::vector<T>> group_by_ratio(std::vector<T> items, Key key) {
  std::stable_sort(items.begin(), items.end(), [&](const T& a, const T& b) { return key(a) > key(b); });
  std::vector<std::vector<T>> groups;
  double head = 0;
  for (const T& it : items) {
    if (groups.empty() || key(it) * kTierRatio < head) {
      groups.emplace_back();
      head = key(it);
    }
    groups.back().push_back(it);
  }
  return groups;
}

int kind_order(MemoryKind k) {
  switch (k) {
    case MemoryKind::kHbm: return 0;
    case MemoryKind::kDram: return 1;
    case MemoryKind::kCxl: return 2;
    case MemoryKind::kPmem: return 3;
    case MemoryKind::kUnknown: return 4;
    case MemoryKind::kGpu: return 5;
  }
  return 5;
}

void read_node(const FsRoot& fs, Node& n, const std::vector<int>& has_cpu, std::vector<std::string>& warn) {
  std::string p = "node" + std::to_string(n.id);
  if (auto cl = fs.read(node_path(n.id, "/cpulist"))) {
    if (auto v = os::parse_list(*cl)) n.cpus = *v;
    else warn.push_back(p + "/cpulist is malformed; treating the node as CPU-less");
  } else if (auto cm = fs.read(node_path(n.id, "/cpumap"))) {
    if (auto v = os::parse_mask(*cm)) n.cpus = *v;
    else warn.push_back(p + "/cpumap is malformed; treating the node as CPU-less");
  } else if (std::binary_search(has_cpu.begin(), has_cpu.end(), n.id)) {
    n.evidence.push_back("has_cpu");
  }

  if (auto mi = fs.read(node_path(n.id, "/meminfo"))) {
    auto total = meminfo_kb(*mi, "MemTotal");
    auto free = meminfo_kb(*mi, "MemFree");
    if (total) n.capacity_bytes = *total * 1024, n.capacity_known = true;
    else warn.push_back(p + "/meminfo has no readable MemTotal; capacity unknown");
    if (free) n.free_bytes = *free * 1024;
  } else {
    warn.push_back(p + "/meminfo is missing; capacity unknown");
  }

  if (auto d = fs.read(node_path(n.id, "/distance"))) {
    std::string_view s = os::trim(*d);
    std::vector<int> vals;
    bool ok = true;
    while (!s.empty()) {
      size_t sp = s.find(' ');
      auto v = os::parse_int(s.substr(0, sp));
      if (!v || *v <= 0 || *v > 255) {
        ok = false;
        break;
      }
      vals.push_back(static_cast<int>(*v));
      if (sp == std::string_view::npos) break;
      s = os::trim(s.substr(sp + 1));
    }
    if (!ok || vals.empty()) {
      warn.push_back(p + "/distance is empty or malformed; distances unknown");
    } else {
      // Node ids are attached in distances_by_id, once the full node list is known.
      for (int v : vals) n.distances.emplace_back(-1, v);
    }
  }

  n.hmat = read_hmat(fs, n.id);
  if (n.hmat) {
    char buf[160];
    snprintf(buf, sizeof buf, "hmat:access%d:read_latency=%lluns,read_bandwidth=%lluMB/s", n.hmat->access_class,
             static_cast<unsigned long long>(n.hmat->read_latency_ns),
             static_cast<unsigned long long>(n.hmat->read_bandwidth_mbs));
    n.evidence.push_back(buf);
  }

  for (const auto& idx : fs.list(node_path(n.id, "/memory_side_cache"))) {
    if (idx.rfind("index", 0) != 0) continue;
    auto sz = fs.read(node_path(n.id, "/memory_side_cache/" + idx + "/size"));
    auto v = sz ? os::parse_int(*sz) : std::nullopt;
    if (v && *v > 0) {
      n.memory_side_cache_bytes += static_cast<uint64_t>(*v);
      n.evidence.push_back("memory_side_cache:" + idx + ":" + os::format_bytes(static_cast<uint64_t>(*v)));
    }
  }
}

std::vector<int> node_ids(const FsRoot& fs, std::vector<std::string>& warn) {
  std::set<int> dirs;
  for (const auto& e : fs.list(kNodeDir)) {
    if (e.rfind("node", 0) != 0) continue;
    if (auto id = os::parse_int(std::string_view(e).substr(4)); id && *id >= 0) dirs.insert(static_cast<int>(*id));
  }
  auto online_text = fs.read(std::string(kNodeDir) + "/online");
  auto online = online_text ? os::parse_list(*online_text) : std::nullopt;
  if (!online) {
    if (online_text) warn.push_back("node/online is malformed; using the node directories present");
    return {dirs.begin(), dirs.end()};
  }
  std::vector<int> ids;
  for (int id : *online) {
    if (dirs.count(id)) ids.push_back(id);
    else warn.push_back("node/online names node" + std::to_string(id) + " but it has no directory; ignored");
  }
  return ids;
}

void read_kernel_tiers(const FsRoot& fs, std::vector<Node>& nodes, std::vector<std::string>& warn) {
  const std::string dir = "/sys/devices/virtual/memory_tiering";
  for (const auto& e : fs.list(dir)) {
    if (e.rfind("memory_tier", 0) != 0) continue;
    auto tier_id = os::parse_int(std::string_view(e).substr(11));
    if (!tier_id) continue;
    auto text = fs.read(dir + "/" + e + "/nodelist");
    if (!text) text = fs.read(dir + "/" + e + "/nodes");
    auto list = text ? os::parse_list(*text) : std::nullopt;
    if (!list) {
      warn.push_back(e + "/nodelist is missing or malformed; ignored");
      continue;
    }
    for (int id : *list) {
      auto it = std::find_if(nodes.begin(), nodes.end(), [&](const Node& n) { return n.id == id; });
      if (it == nodes.end()) {
        warn.push_back(e + "/nodelist names node" + std::to_string(id) + ", which is not online; ignored");
        continue;
      }
      it->kernel_tier = static_cast<int>(*tier_id);
      it->evidence.push_back("memory_tiering:" + std::to_string(*tier_id));
    }
  }
}

void read_kernel_settings(const FsRoot& fs, KernelTiering& k) {
  if (auto s = fs.read("/proc/sys/kernel/numa_balancing"))
    if (auto v = os::parse_int(*s)) k.numa_balancing = static_cast<int>(*v);
  if (auto s = fs.read("/sys/kernel/mm/numa/demotion_enabled")) {
    std::string_view v = os::trim(*s);
    if (v == "true" || v == "1") k.demotion_enabled = true;
    else if (v == "false" || v == "0") k.demotion_enabled = false;
  }
}

// Kind of every node from dax, GPU and HMAT evidence; usability.
void classify(std::vector<Node>& nodes, const std::vector<DaxDevice>& dax, const std::set<int>& gpu_nodes) {
  std::map<int, const DaxDevice*> dax_of;
  for (const auto& d : dax) {
    auto it = std::find_if(nodes.begin(), nodes.end(), [&](const Node& n) { return n.id == d.target_node; });
    if (it == nodes.end()) continue;  // devdax device, or a kmem device whose node is offline
    it->evidence.push_back("dax:" + d.name + ":" + (d.driver.empty() ? "unbound" : d.driver) + ":" + d.parent);
    if (d.driver == "kmem") dax_of[it->id] = &d;
  }
  for (auto& n : nodes) {
    if (gpu_nodes.count(n.id)) {
      n.kind = MemoryKind::kGpu;
      n.evidence.push_back("nvidia-gpu-memory");
      n.unusable_reason = "GPU memory";
    } else if (auto it = dax_of.find(n.id); it != dax_of.end()) {
      const std::string& parent = it->second->parent;
      n.kind = parent == "nvdimm" ? MemoryKind::kPmem : parent == "cxl" ? MemoryKind::kCxl : MemoryKind::kUnknown;
    } else {
      n.kind = MemoryKind::kDram;
    }
    // A node whose meminfo could not be read is given the benefit of the doubt when the kernel
    // lists it with memory or CPUs: refusing the machine's only node would be worse.
    bool has_memory = n.capacity_known ? n.capacity_bytes > 0 : (n.listed_with_memory || !n.cpus.empty());
    if (n.unusable_reason.empty() && !has_memory) {
      n.unusable_reason = "no memory";
      n.kind = MemoryKind::kUnknown;  // an initiator-only node: there is no memory to name
    }
    n.usable = n.unusable_reason.empty();
  }

  // HMAT refines what dax cannot tell: soft-reserved (hmem) memory and CPU-less nodes without a
  // dax device may be HBM (faster) or a CXL expander (slower) relative to the DRAM next to CPUs.
  std::vector<const Node*> reference;
  for (const auto& n : nodes)
    if (n.usable && n.hmat && !dax_of.count(n.id) && !n.cpus.empty()) reference.push_back(&n);
  if (reference.empty())
    for (const auto& n : nodes)
      if (n.usable && n.hmat && !dax_of.count(n.id)) reference.push_back(&n);
  for (auto& n : nodes) {
    if (!n.usable) continue;
    bool undecided = n.kind == MemoryKind::kUnknown || (n.kind == MemoryKind::kDram && n.cpus.empty());
    if (!undecided || !n.hmat || reference.empty()) continue;
    std::vector<const Node*> cmp = reference;
    cmp.push_back(&n);
    ScoreMode m = common_mode(cmp);
    if (!m.latency && !m.bandwidth) continue;
    double ref = 0;
    for (const Node* r : reference) ref = std::max(ref, score(*r, m));
    double s = score(n, m);
    if (s > ref * kTierRatio) n.kind = MemoryKind::kHbm, n.evidence.push_back("hmat:faster-than-dram");
    else if (s * kTierRatio < ref) n.kind = MemoryKind::kCxl, n.evidence.push_back("hmat:slower-than-dram");
    else n.kind = MemoryKind::kDram;
  }
}

void distances_by_id(std::vector<Node>& nodes) {
  for (auto& n : nodes) {
    if (n.distances.size() != nodes.size()) {
      n.distances.clear();  // a row that does not match the node list cannot be attributed
      continue;
    }
    for (size_t i = 0; i < nodes.size(); ++i) n.distances[i].first = nodes[i].id;
  }
}

// Assigns ranks from groups of node ids, fastest first.
void assign(Topology& t, const std::vector<std::vector<int>>& groups) {
  t.tiers.clear();
  for (auto& n : t.nodes) n.tier = -1;
  for (const auto& g : groups) {
    Tier tier;
    tier.rank = static_cast<int>(t.tiers.size());
    std::map<MemoryKind, int> kinds;
    for (int id : g) {
      auto it = std::find_if(t.nodes.begin(), t.nodes.end(), [&](const Node& n) { return n.id == id; });
      it->tier = tier.rank;
      tier.nodes.push_back(id);
      tier.capacity_bytes += it->capacity_bytes;
      tier.free_bytes += it->free_bytes;
      kinds[it->kind]++;
    }
    std::sort(tier.nodes.begin(), tier.nodes.end());
    tier.kind = std::max_element(kinds.begin(), kinds.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    tier.label = kind_name(tier.kind);
    t.tiers.push_back(std::move(tier));
  }
}

void rank(Topology& t) {
  std::vector<const Node*> usable;
  for (const auto& n : t.nodes)
    if (n.usable) usable.push_back(&n);
  if (usable.empty()) return;
  auto ids_of = [](const std::vector<std::vector<const Node*>>& g) {
    std::vector<std::vector<int>> out;
    for (const auto& v : g) {
      out.emplace_back();
      for (const Node* n : v) out.back().push_back(n->id);
    }
    return out;
  };

  // Node ids grouped by an ordered key, lowest key first.
  auto group_by_key = [&](auto key) {
    std::map<int, std::vector<int>> by_key;
    for (const Node* n : usable) by_key[key(n)].push_back(n->id);
    std::vector<std::vector<int>> groups;
    for (auto& [k, g] : by_key) groups.push_back(std::move(g));
    return groups;
  };

  // 1. The kernel's memory tiers, when it separates the usable nodes at all.
  bool all_kernel = std::all_of(usable.begin(), usable.end(), [](const Node* n) { return n->kernel_tier.has_value(); });
  if (all_kernel) {
    auto groups = group_by_key([](const Node* n) { return *n->kernel_tier; });
    if (groups.size() > 1) {
      assign(t, groups);
      t.ranked_by = "memory_tiering";
      return;
    }
  }
  // 2. HMAT performance.
  if (ScoreMode m = common_mode(usable); m.latency || m.bandwidth) {
    auto groups = group_by_ratio(usable, [&](const Node* n) { return score(*n, m); });
    if (groups.size() > 1) {
      assign(t, ids_of(groups));
      t.ranked_by = "hmat";
      return;
    }
  }
  // 3. What the dax devices say the memory is.
  if (auto groups = group_by_key([](const Node* n) { return kind_order(n->kind); }); groups.size() > 1) {
    assign(t, groups);
    t.ranked_by = "dax";
    return;
  }
  // 4. Distances: memory as close as another socket's DRAM is one tier with it; CPU-less memory
  // farther than that is slower, grouped by how far.
  {
    int socket_max = 10;
    bool known = true;
    for (const auto& a : t.nodes)
      for (const auto& b : t.nodes)
        if (!a.cpus.empty() && !b.cpus.empty() && a.capacity_bytes && b.capacity_bytes) {
          int d = a.distance_to(b.id);
          if (d < 0) known = false;
          socket_max = std::max(socket_max, d);
        }
    std::vector<std::pair<int, int>> far;  // (distance to nearest CPU node, id)
    std::vector<int> near;
    for (const Node* n : usable) {
      if (!n->cpus.empty()) {
        near.push_back(n->id);
        continue;
      }
      int best = -1;
      for (const auto& c : t.nodes)
        if (!c.cpus.empty()) {
          int d = n->distance_to(c.id);
          if (d > 0 && (best < 0 || d < best)) best = d;
        }
      if (best < 0) known = false;
      if (best > socket_max) far.push_back({best, n->id});
      else near.push_back(n->id);
    }
    if (known && !far.empty() && !near.empty()) {
      auto groups = group_by_ratio(far, [](const std::pair<int, int>& p) { return 1.0 / p.first; });
      std::vector<std::vector<int>> out{near};
      for (const auto& g : groups) {
        out.emplace_back();
        for (auto& p : g) out.back().push_back(p.second);
      }
      assign(t, out);
      t.ranked_by = "distance";
      return;
    }
  }
  std::vector<int> all;
  for (const Node* n : usable) all.push_back(n->id);
  assign(t, {all});
  t.ranked_by = "single-tier";
}

// TIERALLOC_TIERS: "emulate:fast=1G,slow=4G" or "0-1:dram;2-3:pmem". Returns an error message, or
// "" after rewriting t's tiers.
std::string apply_override(Topology& t, std::string_view spec) {
  spec = os::trim(spec);
  if (spec.rfind("emulate:", 0) == 0) {
    std::vector<int> base;
    uint64_t base_cap = 0, base_free = 0;
    if (!t.tiers.empty()) base = t.tiers[0].nodes, base_cap = t.tiers[0].capacity_bytes, base_free = t.tiers[0].free_bytes;
    if (base.empty()) return "no usable memory node to carve emulated tiers from";
    std::string_view rest = spec.substr(8);
    std::vector<Tier> tiers;
    while (!rest.empty() || tiers.empty()) {
      size_t comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      size_t eq = item.find('=');
      if (eq == std::string_view::npos) return "expected NAME=SIZE, got '" + std::string(item) + "'";
      std::string_view name = os::trim(item.substr(0, eq));
      auto size = os::parse_size(item.substr(eq + 1));
      if (!size || *size < (1u << 20))
        return "size '" + std::string(item.substr(eq + 1)) + "' of tier '" + std::string(name) +
               "' is not a size of at least 1M (K/M/G/T suffixes)";
      Tier tier;
      if (name == "fast") tier.kind = MemoryKind::kDram;
      else if (name == "slow") tier.kind = MemoryKind::kPmem;
      else if (auto k = kind_from_name(name); k && *k != MemoryKind::kGpu) tier.kind = *k;
      else return "tier name '" + std::string(name) + "' is not fast, slow, dram, hbm, pmem, cxl or unknown";
      tier.label = std::string(name);
      tier.rank = static_cast<int>(tiers.size());
      tier.nodes = base;
      tier.capacity_bytes = *size;
      tier.emulated = true;
      tiers.push_back(tier);
      if (tiers.size() > 8) return "at most 8 emulated tiers";
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    uint64_t total = 0;
    for (auto& tier : tiers) total += tier.capacity_bytes;
    for (auto& tier : tiers)
      tier.free_bytes = std::min<uint64_t>(tier.capacity_bytes, base_free);
    if (total > base_cap)
      t.warnings.push_back("TIERALLOC_TIERS: emulated tiers total " + os::format_bytes(total) + ", more than the " +
                           os::format_bytes(base_cap) + " of node(s) " + os::format_list(base) +
                           "; the budgets may not all be reachable");
    t.tiers = std::move(tiers);
    t.emulated = true;
    t.ranked_by = "TIERALLOC_TIERS";
    for (auto& n : t.nodes)
      if (n.tier == 0) n.evidence.push_back("emulated:carved into " + std::to_string(t.tiers.size()) + " tiers");
    return "";
  }

  std::vector<std::vector<int>> groups;
  std::vector<std::pair<MemoryKind, std::string>> kinds;
  std::set<int> seen;
  while (!spec.empty()) {
    size_t semi = spec.find(';');
    std::string_view item = os::trim(spec.substr(0, semi));
    size_t colon = item.find(':');
    if (colon == std::string_view::npos)
      return "expected NODES:KIND items separated by ';' or emulate:NAME=SIZE,..., got '" + std::string(item) + "'";
    auto list = os::parse_list(item.substr(0, colon));
    std::string_view kname = os::trim(item.substr(colon + 1));
    auto kind = kind_from_name(kname);
    if (!list || list->empty()) return "node list '" + std::string(item.substr(0, colon)) + "' is malformed";
    if (!kind || *kind == MemoryKind::kGpu) return "kind '" + std::string(kname) + "' is not dram, hbm, pmem, cxl or unknown";
    for (int id : *list) {
      const Node* n = t.node(id);
      if (!n) return "node " + std::to_string(id) + " does not exist";
      if (!n->usable) return "node " + std::to_string(id) + " is not usable (" + n->unusable_reason + ")";
      if (!seen.insert(id).second) return "node " + std::to_string(id) + " is listed twice";
    }
    groups.push_back(*list);
    kinds.emplace_back(*kind, std::string(kname));
    if (semi == std::string_view::npos) break;
    spec.remove_prefix(semi + 1);
  }
  if (groups.empty()) return "no tiers given";
  for (auto& n : t.nodes)
    if (n.usable && !seen.count(n.id)) n.usable = false, n.unusable_reason = "not listed in TIERALLOC_TIERS";
  assign(t, groups);
  for (size_t i = 0; i < groups.size(); ++i) t.tiers[i].kind = kinds[i].first, t.tiers[i].label = kinds[i].second;
  t.ranked_by = "TIERALLOC_TIERS";
  return "";
}

}  // namespace

const char* kind_name(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kDram: return "dram";
    case MemoryKind::kHbm: return "hbm";
    case MemoryKind::kPmem: return "pmem";
    case MemoryKind::kCxl: return "cxl";
    case MemoryKind::kGpu: return "gpu";
    case MemoryKind::kUnknown: return "unknown";
  }
  return "unknown";
}

std::optional<MemoryKind> kind_from_name(std::string_view name) {
  for (MemoryKind k : {MemoryKind::kDram, MemoryKind::kHbm, MemoryKind::kPmem, MemoryKind::kCxl, MemoryKind::kGpu,
                       MemoryKind::kUnknown})
    if (name == kind_name(k)) return k;
  return std::nullopt;
}

int Node::distance_to(int other) const {
  for (auto& [id, d] : distances)
    if (id == other) return d;
  return -1;
}

const Node* Topology::node(int id) const {
  for (const auto& n : nodes)
    if (n.id == id) return &n;
  return nullptr;
}

int Topology::tier_of_node(int id) const {
  for (const auto& t : tiers)
    if (std::find(t.nodes.begin(), t.nodes.end(), id) != t.nodes.end()) return t.rank;
  return -1;
}

DiscoverOptions options_from_env() {
  DiscoverOptions o;
  if (const char* r = secure_getenv("TIERALLOC_FSROOT"); r && *r) o.fsroot = r;
  if (const char* s = secure_getenv("TIERALLOC_TIERS"); s && *s) o.tiers_spec = s;
  return o;
}

Topology discover(const DiscoverOptions& options) {
  Topology t;
  t.fsroot = options.fsroot.empty() ? "/" : options.fsroot;
  FsRoot probe(t.fsroot);
  if (!probe.is_dir("/")) {
    t.warnings.push_back("TIERALLOC_FSROOT=" + t.fsroot + " is not a directory; reading the real / instead");
    t.fsroot = "/";
  }
  FsRoot fs(t.fsroot);

  auto has_cpu_text = fs.read(std::string(kNodeDir) + "/has_cpu");
  std::vector<int> has_cpu = has_cpu_text ? os::parse_list(*has_cpu_text).value_or(std::vector<int>{}) : std::vector<int>{};
  auto has_memory_text = fs.read(std::string(kNodeDir) + "/has_memory");
  auto has_memory = has_memory_text ? os::parse_list(*has_memory_text) : std::nullopt;
  for (int id : node_ids(fs, t.warnings)) {
    Node n;
    n.id = id;
    n.listed_with_memory = has_memory && std::binary_search(has_memory->begin(), has_memory->end(), id);
    read_node(fs, n, has_cpu, t.warnings);
    t.nodes.push_back(std::move(n));
  }
  if (t.nodes.empty()) {
    // A kernel without NUMA sysfs still has memory: one DRAM node made from /proc/meminfo.
    Node n;
    n.id = 0;
    n.listed_with_memory = true;
    if (auto mi = fs.read("/proc/meminfo")) {
      n.capacity_bytes = meminfo_kb(*mi, "MemTotal").value_or(0) * 1024;
      n.capacity_known = n.capacity_bytes > 0;
      n.free_bytes = meminfo_kb(*mi, "MemAvailable").value_or(0) * 1024;
    }
    n.evidence.push_back("no-numa-sysfs:/proc/meminfo");
    t.warnings.push_back("no NUMA nodes under " + fs.path(kNodeDir) + "; assuming one DRAM node");
    t.nodes.push_back(std::move(n));
  }
  distances_by_id(t.nodes);
  read_kernel_tiers(fs, t.nodes, t.warnings);
  classify(t.nodes, read_dax(fs), read_nvidia_gpu_nodes(fs));
  rank(t);
  read_kernel_settings(fs, t.kernel);

  if (!options.tiers_spec.empty()) {
    std::string err = apply_override(t, options.tiers_spec);
    if (!err.empty()) {
      t.warnings.push_back("TIERALLOC_TIERS='" + options.tiers_spec + "': " + err + "; ignoring it and using the discovered tiers");
      // apply_override only writes t on success, except the usable flags of the explicit form.
      Topology clean = discover(DiscoverOptions{options.fsroot, ""});
      clean.warnings.insert(clean.warnings.begin(), t.warnings.begin(), t.warnings.end());
      std::sort(clean.warnings.begin(), clean.warnings.end());
      clean.warnings.erase(std::unique(clean.warnings.begin(), clean.warnings.end()), clean.warnings.end());
      return clean;
    }
  }
  return t;
}

std::string format_json(const Topology& t) {
  std::string o = "{\"emulated\": ";
  o += t.emulated ? "true" : "false";
  o += ",\n \"nodes\": [";
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    const Node& n = t.nodes[i];
    if (i) o += ",\n   ";
    o += "{\"id\": " + std::to_string(n.id) + ", \"cpus\": ";
    os::append_json_string(o, os::format_list(n.cpus));
    o += ", \"kind\": ";
    os::append_json_string(o, kind_name(n.kind));
    o += std::string(", \"usable\": ") + (n.usable ? "true" : "false");
    o += ", \"tier\": " + (n.tier >= 0 ? std::to_string(n.tier) : std::string("null"));
    o += ", \"capacity_bytes\": " + std::to_string(n.capacity_bytes) + ", \"evidence\": [";
    for (size_t j = 0; j < n.evidence.size(); ++j) {
      if (j) o += ", ";
      os::append_json_string(o, n.evidence[j]);
    }
    o += "]}";
  }
  o += "],\n \"tiers\": [";
  for (size_t i = 0; i < t.tiers.size(); ++i) {
    const Tier& tier = t.tiers[i];
    if (i) o += ",\n   ";
    o += "{\"rank\": " + std::to_string(tier.rank) + ", \"kind\": ";
    os::append_json_string(o, kind_name(tier.kind));
    o += ", \"nodes\": [";
    for (size_t j = 0; j < tier.nodes.size(); ++j) o += (j ? ", " : "") + std::to_string(tier.nodes[j]);
    o += "], \"capacity_bytes\": " + std::to_string(tier.capacity_bytes) + "}";
  }
  o += "],\n \"kernel\": {\"numa_balancing\": " + std::to_string(t.kernel.numa_balancing) + ", \"demotion_enabled\": ";
  o += t.kernel.demotion_enabled ? (*t.kernel.demotion_enabled ? "true" : "false") : "null";
  o += "}}\n";
  return o;
}

std::string format_table(const Topology& t) {
  std::string o;
  char line[512];
  if (t.emulated)
    o += "EMULATED tiers (TIERALLOC_TIERS): logical tiers carved out of real memory; placement and budgets are real, "
         "speed differences are not\n";
  snprintf(line, sizeof line, "memory tiers (ranked by %s, sysfs root %s)\n", t.ranked_by.c_str(), t.fsroot.c_str());
  o += line;
  snprintf(line, sizeof line, "%-5s %-8s %-10s %-12s %-12s %-10s %-12s %s\n", "TIER", "KIND", "NODES", "CAPACITY", "FREE",
           "LATENCY", "BANDWIDTH", "NOTE");
  o += line;
  for (const auto& tier : t.tiers) {
    uint64_t lat = 0, bw = 0;
    for (int id : tier.nodes)
      if (const Node* n = t.node(id); n && n->hmat)
        lat = std::max(lat, n->hmat->read_latency_ns), bw = bw ? std::min(bw, n->hmat->read_bandwidth_mbs) : n->hmat->read_bandwidth_mbs;
    std::string kind = tier.label.empty() || tier.label == kind_name(tier.kind)
                           ? kind_name(tier.kind)
                           : tier.label + "/" + kind_name(tier.kind);
    snprintf(line, sizeof line, "%-5d %-8s %-10s %-12s %-12s %-10s %-12s %s\n", tier.rank, kind.c_str(),
             os::format_list(tier.nodes).c_str(), os::format_bytes(tier.capacity_bytes).c_str(),
             os::format_bytes(tier.free_bytes).c_str(), lat ? (std::to_string(lat) + " ns").c_str() : "-",
             bw ? (std::to_string(bw) + " MB/s").c_str() : "-", tier.emulated ? "EMULATED" : "");
    o += line;
  }
  o += "\n";
  snprintf(line, sizeof line, "%-5s %-8s %-12s %-7s %-5s %-12s %s\n", "NODE", "KIND", "CPUS", "USABLE", "TIER", "CAPACITY",
           "EVIDENCE");
  o += line;
  for (const auto& n : t.nodes) {
    std::string ev;
    for (const auto& e : n.evidence) ev += (ev.empty() ? "" : " ") + e;
    if (!n.usable) ev = "(" + n.unusable_reason + ") " + ev;
    std::string cpus = n.cpus.empty() ? "-" : os::format_list(n.cpus);
    if (cpus.size() > 12) cpus = cpus.substr(0, 9) + "...";
    snprintf(line, sizeof line, "%-5d %-8s %-12s %-7s %-5s %-12s %s\n", n.id, kind_name(n.kind), cpus.c_str(),
             n.usable ? "yes" : "no", n.tier >= 0 ? std::to_string(n.tier).c_str() : "-",
             os::format_bytes(n.capacity_bytes).c_str(), ev.c_str());
    o += line;
  }
  o += "\nkernel tiering acting on the same memory:\n";
  const char* nb = t.kernel.numa_balancing == 0   ? "off"
                   : t.kernel.numa_balancing == 1 ? "on (NUMA-local balancing)"
                   : t.kernel.numa_balancing == 2 ? "memory tiering mode: the kernel promotes hot pages itself"
                   : t.kernel.numa_balancing < 0  ? "unknown"
                                                  : "on";
  snprintf(line, sizeof line, "  numa_balancing    %d (%s)\n", t.kernel.numa_balancing, nb);
  o += line;
  snprintf(line, sizeof line, "  demotion_enabled  %s\n",
           t.kernel.demotion_enabled ? (*t.kernel.demotion_enabled ? "true (the kernel demotes cold pages on reclaim)" : "false")
                                     : "unknown");
  o += line;
  return o;
}

}  // namespace tieralloc::numa
