// An ordinary C++ program (it does not link tieralloc) that the guest runs under
// LD_PRELOAD=libtieralloc.so with a small TIERALLOC_FAST_LIMIT: it builds a map of strings and a
// set of 1 MiB buffers with plain new, asks the kernel (move_pages) where its heap pages are, and
// checks its data survived. Exit status 0 only when the pages are spread over both given nodes.
//   preload_probe MIB FAST_NODE SLOW_NODE
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/guest/kernel_facts.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MIB FAST_NODE SLOW_NODE\n", argv[0]);
    return 2;
  }
  const size_t mib = strtoul(argv[1], nullptr, 10);
  const int fast = atoi(argv[2]), slow = atoi(argv[3]);
  const size_t block = 1 << 20;

  std::map<int, std::string> small;
  for (int i = 0; i < 20000; ++i) small[i] = "value number " + std::to_string(i * 7919);
  std::vector<std::unique_ptr<uint32_t[]>> buffers;
  for (size_t b = 0; b < mib; ++b) {
    buffers.emplace_back(new uint32_t[block / 4]);
    for (size_t i = 0; i < block / 4; ++i) buffers.back()[i] = static_cast<uint32_t>(b * 1000003 + i);
  }

  std::map<int, size_t> pages;
  for (const auto& buf : buffers)
    for (auto [node, n] : tieralloc::guest::node_histogram(buf.get(), block)) pages[node] += n;
  for (const auto& [key, value] : small)
    for (auto [node, n] : tieralloc::guest::node_histogram(value.data(), value.size())) pages[node] += n;

  size_t bad = 0;
  for (size_t b = 0; b < mib; ++b)
    for (size_t i = 0; i < block / 4; ++i) bad += buffers[b][i] != static_cast<uint32_t>(b * 1000003 + i);
  for (const auto& [key, value] : small) bad += value != "value number " + std::to_string(key * 7919);

  printf("heap pages by node:");
  for (auto [node, n] : pages) printf(" node%d=%zu", node, n);
  printf("; %zu corrupted values\n", bad);
  bool spread = pages[fast] > 0 && pages[slow] > 0;
  size_t elsewhere = 0;
  for (auto [node, n] : pages) elsewhere += node != fast && node != slow ? n : 0;
  printf("%s\n", spread && !bad && !elsewhere ? "PASS: spread over both nodes, data intact" : "FAIL");
  return spread && !bad && !elsewhere ? 0 : 1;
}
