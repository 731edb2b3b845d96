// What the guest kernel says about a process's memory, asked directly with syscalls so that the
// guest tests check tieralloc against the kernel rather than against tieralloc's own page map.
#pragma once

#include <numaif.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace tieralloc::guest {

constexpr size_t kPage = 4096;

// Node of each page from move_pages' status query (negative: -errno, e.g. -ENOENT when not
// resident). Pages are counted from the page holding `begin` to the one holding `end - 1`.
inline std::vector<int> page_nodes(const void* begin, size_t len) {
  uintptr_t first = reinterpret_cast<uintptr_t>(begin) & ~(kPage - 1);
  uintptr_t last = (reinterpret_cast<uintptr_t>(begin) + len - 1) & ~(kPage - 1);
  std::vector<void*> pages;
  for (uintptr_t p = first; p <= last; p += kPage) pages.push_back(reinterpret_cast<void*>(p));
  std::vector<int> status(pages.size(), -1);
  if (syscall(SYS_move_pages, 0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0)
    return std::vector<int>(pages.size(), -1000);
  return status;
}

// Pages per node (or per negative status) over [begin, begin+len).
inline std::map<int, size_t> node_histogram(const void* begin, size_t len) {
  std::map<int, size_t> h;
  for (int n : page_nodes(begin, len)) ++h[n];
  return h;
}

// The node get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR) reports for the page at p (-1 on error).
inline int policy_node(const void* p) {
  int node = -1;
  if (syscall(SYS_get_mempolicy, &node, nullptr, 0, p, MPOL_F_NODE | MPOL_F_ADDR) != 0) return -1;
  return node;
}

// The node the machine definition (tests/guest/guest.py) puts the slowest memory on; init exports it.
inline int expected_slow_node() {
  const char* v = getenv("TIERALLOC_GUEST_SLOW_NODE");
  return v && *v ? atoi(v) : -1;
}

// A /proc/meminfo field in kB, -1 when absent.
inline long meminfo_kb(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string name;
  long value;
  std::string unit;
  while (in >> name >> value) {
    std::getline(in, unit);
    if (name == key + ":") return value;
  }
  return -1;
}

// A /proc/vmstat counter, -1 when absent.
inline long vmstat(const std::string& key) {
  std::ifstream in("/proc/vmstat");
  std::string name;
  long value;
  while (in >> name >> value)
    if (name == key) return value;
  return -1;
}

}  // namespace tieralloc::guest
