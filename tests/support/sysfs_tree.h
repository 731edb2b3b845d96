// Test support: sysfs trees on disk, either unpacked from the real-machine archives in
// tests/fixtures/sysfs or written by hand for machines no archive covers.
#pragma once

#include <string>
#include <vector>

namespace tieralloc::testing {

// A temporary directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

  // Writes `content` to path() + rel, creating parent directories.
  void write(const std::string& rel, const std::string& content) const;
  // Creates a symlink path() + rel -> target.
  void symlink(const std::string& rel, const std::string& target) const;

 private:
  std::string path_;
};

// Unpacks tests/fixtures/sysfs/<name>.tar.bz2 into dir; returns the root of the unpacked tree
// (the folder holding sys/ and proc/).
std::string unpack_fixture(const TempDir& dir, const std::string& archive_name);

// Builder for a sysfs tree describing NUMA nodes.
struct NodeSpec {
  int id;
  std::string cpulist;            // "" = CPU-less
  unsigned long long mem_kb;      // MemTotal
  std::vector<int> distances;     // one per online node, in id order
  // HMAT access1 figures; 0 = not present
  unsigned read_latency = 0, read_bandwidth = 0;
};

void write_nodes(const TempDir& dir, const std::vector<NodeSpec>& nodes);
// A dax device bound to `driver` whose parent path contains `parent` ("ndbus0/region0", "hmem.0").
void write_dax(const TempDir& dir, const std::string& name, int target_node, const std::string& driver,
               const std::string& parent);
void write_memory_tier(const TempDir& dir, int tier_id, const std::string& nodelist);

}  // namespace tieralloc::testing
