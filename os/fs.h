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

// Durable files (the poison journal). Not sysfs: these take real paths, never a FsRoot.
//
// Replaces the file at `path` with `content` so that a crash at any moment leaves either the old
// file or the new one, whole: write(2) to a temporary file beside it, fsync, rename over `path`,
// fsync the directory (the rename itself must reach the disk too). Missing parent directories are
// created (0700: the file says which memory of this machine is bad). 0 or -errno.
int replace_file_durably(const std::string& path, std::string_view content);
// Whole file: nullopt with errno set (ENOENT when missing). Unlike FsRoot::read, no size cap
// beyond `max_bytes`: a longer file reads as EFBIG.
std::optional<std::string> read_file(const std::string& path, size_t max_bytes);

// An exclusive flock(2) on `path` (created 0600 if missing), held for the object's life: the
// read-merge-write of the journal by several processes at once. ok() is false when the lock file
// cannot be opened (error() says why): callers must not write then, as an unlocked
// read-merge-write could drop another writer's entries.
class FileLock {
 public:
  explicit FileLock(const std::string& path);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  bool ok() const { return fd_ >= 0; }
  int error() const { return error_; }

 private:
  int fd_ = -1;
  int error_ = 0;
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
// Appends s to out as a JSON string literal (quotes, backslashes and control characters escaped).
void append_json_string(std::string& out, std::string_view s);

}  // namespace tieralloc::os
