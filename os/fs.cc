#include "os/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>

namespace tieralloc::os {

FsRoot::FsRoot(std::string root) : root_(std::move(root)) {
  while (!root_.empty() && root_.back() == '/') root_.pop_back();
}

std::string FsRoot::path(std::string_view abs) const {
  std::string p = root_;
  if (abs.empty() || abs.front() != '/') p += '/';
  p += abs;
  return p;
}

std::optional<std::string> FsRoot::read(std::string_view abs) const {
  // sysfs files are small; a runaway file (a fixture gone wrong, /dev/zero) must not eat memory.
  return read_file(path(abs), size_t{1} << 20);
}

bool FsRoot::exists(std::string_view abs) const {
  struct stat st;
  return ::stat(path(abs).c_str(), &st) == 0;
}

bool FsRoot::is_dir(std::string_view abs) const {
  struct stat st;
  return ::stat(path(abs).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> FsRoot::list(std::string_view abs) const {
  std::vector<std::string> names;
  DIR* d = ::opendir(path(abs).c_str());
  if (!d) return names;
  while (struct dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<std::string> FsRoot::readlink(std::string_view abs) const {
  char buf[4096];
  ssize_t n = ::readlink(path(abs).c_str(), buf, sizeof buf - 1);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<size_t>(n));
}

namespace {

int write_all_fd(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

// mkdir -p of the directories above `path` (not `path` itself).
int make_parent_dirs(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return -errno;
  }
  return 0;
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

int replace_file_durably(const std::string& path, std::string_view content) {
  if (int rc = make_parent_dirs(path); rc < 0) return rc;
  // Unique per process and thread: two writers never share a temporary file.
  char suffix[64];
  snprintf(suffix, sizeof suffix, ".tmp.%d.%ld", static_cast<int>(::getpid()), static_cast<long>(::gettid()));
  const std::string tmp = path + suffix;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  int rc = write_all_fd(fd, content);
  if (rc == 0 && ::fsync(fd) != 0) rc = -errno;
  if (::close(fd) != 0 && rc == 0) rc = -errno;
  if (rc == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) rc = -errno;
  if (rc != 0) {
    ::unlink(tmp.c_str());
    return rc;
  }
  int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -errno;
  rc = ::fsync(dfd) == 0 ? 0 : -errno;
  ::close(dfd);
  return rc;
}

std::optional<std::string> read_file(const std::string& path, size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || out.size() + static_cast<size_t>(n) > max_bytes) {
      const int err = n < 0 ? errno : EFBIG;
      ::close(fd);
      errno = err;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

FileLock::FileLock(const std::string& path) {
  if (int rc = make_parent_dirs(path); rc < 0) {
    error_ = -rc;
    return;
  }
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    error_ = errno;
    return;
  }
  while (::flock(fd_, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    error_ = errno;
    ::close(fd_);
    fd_ = -1;
    return;
  }
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

std::string_view trim(std::string_view s) {
  auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\0'; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::optional<long long> parse_int(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  long long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::vector<int>> parse_list(std::string_view s) {
  s = trim(s);
  std::vector<int> ids;
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view item = s.substr(0, comma);
    size_t dash = item.find('-');
    auto lo = parse_int(item.substr(0, dash));
    auto hi = dash == std::string_view::npos ? lo : parse_int(item.substr(dash + 1));
    // Node and CPU ids are small; a range of millions is garbage, not a machine.
    if (!lo || !hi || *lo < 0 || *hi < *lo || *hi - *lo > 65536) return std::nullopt;
    for (long long i = *lo; i <= *hi; ++i) ids.push_back(static_cast<int>(i));
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::optional<std::vector<int>> parse_mask(std::string_view s) {
  s = trim(s);
  std::vector<std::string_view> words;
  while (true) {
    size_t comma = s.find(',');
    words.push_back(s.substr(0, comma));
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  std::vector<int> ids;
  int base = 0;
  for (auto it = words.rbegin(); it != words.rend(); ++it, base += 32) {
    std::string_view w = trim(*it);
    if (w.empty() || w.size() > 8) return std::nullopt;
    unsigned v = 0;
    auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), v, 16);
    if (ec != std::errc() || p != w.data() + w.size()) return std::nullopt;
    for (int b = 0; b < 32; ++b)
      if (v & (1u << b)) ids.push_back(base + b);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::string format_list(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(ids[i]);
    if (j > i) out += '-' + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

std::optional<unsigned long long> parse_size(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  unsigned long long mult = 1;
  switch (s.back()) {
    case 'k': case 'K': mult = 1ull << 10; break;
    case 'm': case 'M': mult = 1ull << 20; break;
    case 'g': case 'G': mult = 1ull << 30; break;
    case 't': case 'T': mult = 1ull << 40; break;
    default: break;
  }
  if (mult != 1) s.remove_suffix(1);
  if (s.empty() || s.front() == '-' || s.front() == '+') return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || !(v >= 0)) return std::nullopt;
  long double bytes = static_cast<long double>(v) * mult;
  if (bytes >= 18446744073709551615.0L) return std::nullopt;
  return static_cast<unsigned long long>(bytes);
}

std::string format_bytes(unsigned long long bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else out += c;
  }
  out += '"';
}

}  // namespace tieralloc::os
