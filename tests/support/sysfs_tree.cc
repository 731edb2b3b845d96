#include "tests/support/sysfs_tree.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace tieralloc::testing {

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "tieralloc-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void TempDir::write(const std::string& rel, const std::string& content) const {
  fs::path p = fs::path(path_) / fs::path(rel).relative_path();
  fs::create_directories(p.parent_path());
  std::ofstream(p) << content;
}

void TempDir::symlink(const std::string& rel, const std::string& target) const {
  fs::path p = fs::path(path_) / fs::path(rel).relative_path();
  fs::create_directories(p.parent_path());
  fs::create_symlink(target, p);
}

std::string unpack_fixture(const TempDir& dir, const std::string& archive_name) {
  std::string archive = std::string(TIERALLOC_FIXTURE_DIR) + "/" + archive_name + ".tar.bz2";
  std::string cmd = "tar --no-same-owner -xjf '" + archive + "' -C '" + dir.path() + "'";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("cannot unpack " + archive);
  for (const auto& e : fs::directory_iterator(dir.path()))
    if (e.is_directory()) return e.path().string();
  throw std::runtime_error("empty archive " + archive);
}

void write_nodes(const TempDir& dir, const std::vector<NodeSpec>& nodes) {
  std::string online, cpu_nodes;
  for (const auto& n : nodes) {
    online += (online.empty() ? "" : ",") + std::to_string(n.id);
    if (!n.cpulist.empty()) cpu_nodes += (cpu_nodes.empty() ? "" : ",") + std::to_string(n.id);
    std::string base = "sys/devices/system/node/node" + std::to_string(n.id);
    dir.write(base + "/cpulist", n.cpulist + "\n");
    dir.write(base + "/meminfo", "Node " + std::to_string(n.id) + " MemTotal:       " + std::to_string(n.mem_kb) +
                                     " kB\nNode " + std::to_string(n.id) + " MemFree:        " +
                                     std::to_string(n.mem_kb / 2) + " kB\n");
    std::string dist;
    for (int d : n.distances) dist += (dist.empty() ? "" : " ") + std::to_string(d);
    dir.write(base + "/distance", dist + "\n");
    if (n.read_latency || n.read_bandwidth) {
      std::string a = base + "/access1/initiators/";
      dir.write(a + "read_latency", std::to_string(n.read_latency) + "\n");
      dir.write(a + "write_latency", std::to_string(n.read_latency) + "\n");
      dir.write(a + "read_bandwidth", std::to_string(n.read_bandwidth) + "\n");
      dir.write(a + "write_bandwidth", std::to_string(n.read_bandwidth) + "\n");
    }
  }
  dir.write("sys/devices/system/node/online", online + "\n");
  dir.write("sys/devices/system/node/has_cpu", cpu_nodes + "\n");
  dir.write("sys/devices/system/node/has_memory", online + "\n");
  dir.write("proc/sys/kernel/numa_balancing", "0\n");
  dir.write("sys/kernel/mm/numa/demotion_enabled", "false\n");
}

void write_dax(const TempDir& dir, const std::string& name, int target_node, const std::string& driver,
               const std::string& parent) {
  std::string dev = "sys/devices/" + parent + "/" + name;
  dir.write(dev + "/target_node", std::to_string(target_node) + "\n");
  dir.write("sys/bus/dax/drivers/" + driver + "/.keep", "");
  dir.symlink(dev + "/driver", dir.path() + "/sys/bus/dax/drivers/" + driver);
  dir.symlink("sys/bus/dax/devices/" + name, "../../../devices/" + parent + "/" + name);
}

void write_memory_tier(const TempDir& dir, int tier_id, const std::string& nodelist) {
  dir.write("sys/devices/virtual/memory_tiering/memory_tier" + std::to_string(tier_id) + "/nodelist", nodelist + "\n");
}

}  // namespace tieralloc::testing
