// Every read of /sys and /proc goes through FsRoot, so tests can point the whole library at a
// captured tree (TIERALLOC_FSROOT, like hwloc's HWLOC_FSROOT) and nothing reads the host behind
// their back.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tieralloc::os {

class FsRoot {
 public:
  // root is a directory standing in for "/"; "" and "/" mean the real root.
  explicit FsRoot(std::string root = "/");

  const std::string& root() const { return root_; }
  bool is_real_root() const { return root_.empty(); }

  // Absolute path as seen by the process (root prefix applied).
  std::string path(std::string_view abs) const;

  // Whole file, or nullopt when missing/unreadable. Trailing NULs and whitespace are kept;
  // callers parse with the helpers below.
  std::optional<std::string> read(std::string_view abs) const;
  bool exists(std::string_view abs) const;
  bool is_dir(std::string_view abs) const;
  // Names in a directory, sorted, without "." and "..". Empty when missing.
  std::vector<std::string> list(std::string_view abs) const;
  // Target of a symlink (as stored), or nullopt.
  std::optional<std::string> readlink(std::string_view abs) const;

 private:
  std::string root_;  // "" for the real root, else without trailing '/'
};

// Parsing helpers shared by every sysfs reader. All are total: bad input gives nullopt.
std::string_view trim(std::string_view s);
std::optional<long long> parse_int(std::string_view s);
// Kernel list format "0-3,8,10-11". nullopt on garbage; empty string gives an empty list.
std::optional<std::vector<int>> parse_list(std::string_view s);
// Kernel mask format "0000,00000000,00000003" (comma-separated 32-bit hex words, most significant
// first) to the list of set bits.
std::optional<std::vector<int>> parse_mask(std::string_view s);
std::string format_list(const std::vector<int>& ids);
// "4096", "64K", "1.5G", "2T" (binary multiples) to bytes; nullopt on garbage or overflow.
std::optional<unsigned long long> parse_size(std::string_view s);
// 1536 -> "1.5 GiB" style, for humans.
std::string format_bytes(unsigned long long bytes);

}  // namespace tieralloc::os
