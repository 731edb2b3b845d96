// What the guest kernel says about a process's memory, asked directly with syscalls so that the
// guest tests check tieralloc against the kernel rather than against tieralloc's own page map.
//
// No system call here is given heap memory: with TIERALLOC_SAMPLER on, a heap page may be armed
// (no access) at any moment, and the kernel then fails the call with EFAULT instead of faulting.
// Buffers the kernel reads or writes live on the stack.
#pragma once

#include <fcntl.h>
#include <numaif.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
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
  std::vector<int> nodes;
  constexpr size_t kBatch = 256;
  void* pages[kBatch];
  int status[kBatch];
  for (uintptr_t p = first; p <= last;) {
    size_t n = 0;
    for (; n < kBatch && p <= last; ++n, p += kPage) pages[n] = reinterpret_cast<void*>(p), status[n] = -1;
    bool ok = syscall(SYS_move_pages, 0, n, pages, nullptr, status, 0) == 0;
    for (size_t i = 0; i < n; ++i) nodes.push_back(ok ? status[i] : -1000);
  }
  return nodes;
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

// The value after `key` in a /proc file of "key value" lines (meminfo's "Name:", vmstat's
// "name"), -1 when absent. The file is read into a stack buffer.
inline long proc_figure(const char* path, const std::string& key) {
  char buf[8192];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  for (const char* line = buf; line && *line;) {
    if (std::strncmp(line, key.c_str(), key.size()) == 0 && (line[key.size()] == ' ' || line[key.size()] == '\t'))
      return std::strtol(line + key.size(), nullptr, 10);
    line = std::strchr(line, '\n');
    if (line) ++line;
  }
  return -1;
}

// A /proc/meminfo field in kB, -1 when absent.
inline long meminfo_kb(const std::string& key) { return proc_figure("/proc/meminfo", key + ":"); }

// A /proc/vmstat counter, -1 when absent.
inline long vmstat(const std::string& key) { return proc_figure("/proc/vmstat", key); }

// The frame number of the page holding p from /proc/self/pagemap (0 when not present, or when the
// process may not see frame numbers: root only).
inline uint64_t pfn_of(const void* p) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t e = 0;
  if (pread(fd, &e, 8, static_cast<off_t>(reinterpret_cast<uintptr_t>(p) / kPage * 8)) != 8) e = 0;
  close(fd);
  return e >> 63 ? e & ((uint64_t{1} << 55) - 1) : 0;
}

}  // namespace tieralloc::guest
