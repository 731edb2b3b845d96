#include "tiering/damon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include "os/fs.h"

namespace tieralloc::tiering {
namespace {

// Plain arrays, not std::string: the engine starts from the library's constructor, before the
// dynamic initialisers of this file would have run.
constexpr char kKdamondsPath[] = "/sys/kernel/mm/damon/admin/kdamonds";
// Serialises tieralloc's processes taking and returning a kdamond (DAMON needs root, so does /run).
constexpr char kLockFilePath[] = "/run/tieralloc/damon.lock";
// DAMON's "operations update" would replace the regions tieralloc gives with the process's whole
// address space (vaddr's three-region default); it is put off for good, as regions are committed
// whenever the heap's ranges change.
constexpr const char* kUpdateNeverUs = "1000000000000";
// The scheme that only reports: every region passes its access pattern.
constexpr const char* kAnyUnsigned = "4294967295";
constexpr const char* kAnyBytes = "18446744073709551615";

int write_sysfs(const std::string& path, std::string_view value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = n < 0 ? errno : static_cast<size_t>(n) == value.size() ? 0 : EIO;
  ::close(fd);
  return err;
}

std::optional<std::string> read_sysfs(const std::string& path) {
  auto s = os::read_file(path, 1 << 16);
  if (!s) return std::nullopt;
  return std::string(os::trim(*s));
}

std::optional<long long> read_number(const std::string& path) {
  auto s = read_sysfs(path);
  return s ? os::parse_int(*s) : std::nullopt;
}

bool process_alive(long long pid) { return pid > 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

// Whether the kdamonds configured now may be taken over: each is off and watches only virtual
// address spaces of processes that have exited (what a tieralloc process killed before its exit
// handler ran leaves behind). Anything else is some program's (damo's, an operator's) and is left
// alone.
bool abandoned(long long nr_kdamonds) {
  for (long long k = 0; k < nr_kdamonds; ++k) {
    const std::string kd = std::string(kKdamondsPath) + "/" + std::to_string(k);
    if (read_sysfs(kd + "/state").value_or("") != "off") return false;
    const long long contexts = read_number(kd + "/contexts/nr_contexts").value_or(-1);
    if (contexts < 1) return false;
    for (long long c = 0; c < contexts; ++c) {
      const std::string ctx = kd + "/contexts/" + std::to_string(c);
      const std::string ops = read_sysfs(ctx + "/operations").value_or("");
      if (ops != "vaddr" && ops != "fvaddr") return false;
      const long long targets = read_number(ctx + "/targets/nr_targets").value_or(-1);
      if (targets < 1) return false;
      for (long long t = 0; t < targets; ++t)
        if (process_alive(read_number(ctx + "/targets/" + std::to_string(t) + "/pid_target").value_or(0))) return false;
    }
  }
  return true;
}

}  // namespace

std::vector<AddressRange> coalesce_ranges(std::vector<AddressRange> ranges, uintptr_t max_gap, size_t max_count) {
  std::sort(ranges.begin(), ranges.end(), [](const AddressRange& a, const AddressRange& b) { return a.start < b.start; });
  std::vector<AddressRange> out;
  for (const AddressRange& r : ranges) {
    if (r.end <= r.start) continue;
    if (!out.empty() && r.start <= out.back().end + max_gap) out.back().end = std::max(out.back().end, r.end);
    else out.push_back(r);
  }
  while (max_count > 0 && out.size() > max_count) {
    size_t narrowest = 1;
    for (size_t i = 2; i < out.size(); ++i)
      if (out[i].start - out[i - 1].end < out[narrowest].start - out[narrowest - 1].end) narrowest = i;
    out[narrowest - 1].end = out[narrowest].end;
    out.erase(out.begin() + static_cast<ptrdiff_t>(narrowest));
  }
  return out;
}

bool DamonMonitor::fail(std::string why) {
  reason_ = std::move(why);
  return false;
}

bool DamonMonitor::start(const std::vector<AddressRange>& ranges, const Attrs& attrs) {
  if (owner_ == getpid()) return true;
  owner_ = 0;  // a forked child's copy: the kdamond is its parent's
  reason_.clear();
  if (ranges.empty()) return fail("no heap ranges to monitor yet");
  if (::access((std::string(kKdamondsPath) + "/nr_kdamonds").c_str(), W_OK) != 0)
    return fail(errno == ENOENT ? "the kernel has no DAMON sysfs interface (CONFIG_DAMON_SYSFS)"
                                : "/sys/kernel/mm/damon is not writable (DAMON needs root)");
  os::FileLock lock{std::string(kLockFilePath)};
  if (!lock.ok()) return fail("cannot lock " + std::string(kLockFilePath) + ": " + std::strerror(lock.error()));
  const long long nr = read_number(std::string(kKdamondsPath) + "/nr_kdamonds").value_or(-1);
  if (nr < 0) return fail("cannot read " + std::string(kKdamondsPath) + "/nr_kdamonds");
  if (nr > 0 && !abandoned(nr)) return fail("in use by another program (" + std::to_string(nr) + " kdamonds configured)");

  // From here on a failure removes what was written: nothing of tieralloc's stays configured.
  auto undo = [&](const std::string& why) {
    write_sysfs(std::string(kKdamondsPath) + "/0/state", "off");
    write_sysfs(std::string(kKdamondsPath) + "/nr_kdamonds", "0");
    return fail(why);
  };
  auto set = [&](const std::string& rel, const std::string& value) {
    int err = write_sysfs(std::string(kKdamondsPath) + "/0/" + rel, value);
    if (err) reason_ = "writing " + value + " to kdamonds/0/" + rel + ": " + std::strerror(err);
    return err == 0;
  };
  if (int err = write_sysfs(std::string(kKdamondsPath) + "/nr_kdamonds", "1"))
    return fail(std::string("cannot create a kdamond: ") + std::strerror(err));
  if (!set("contexts/nr_contexts", "1")) return undo(reason_);
  const std::string ctx = "contexts/0/";
  const std::string avail = read_sysfs(std::string(kKdamondsPath) + "/0/" + ctx + "avail_operations").value_or("");
  bool vaddr = false;
  for (size_t p = 0; (p = avail.find("vaddr", p)) != std::string::npos; p += 5)
    vaddr |= (p == 0 || avail[p - 1] == ' ' || avail[p - 1] == '\n') && (p + 5 == avail.size() || avail[p + 5] == ' ' || avail[p + 5] == '\n');
  if (!vaddr)
    return undo("the kernel's DAMON cannot monitor virtual addresses (operations available: " +
                (avail.empty() ? std::string("none listed") : avail) + "; CONFIG_DAMON_VADDR is off)");
  const std::string intervals = ctx + "monitoring_attrs/intervals/", regions = ctx + "monitoring_attrs/nr_regions/";
  const std::string scheme = ctx + "schemes/0/", pattern = scheme + "access_pattern/";
  if (!set(ctx + "operations", "vaddr") || !set(intervals + "sample_us", std::to_string(attrs.sample_us)) ||
      !set(intervals + "aggr_us", std::to_string(attrs.aggr_us)) || !set(intervals + "update_us", kUpdateNeverUs) ||
      !set(ctx + "targets/nr_targets", "1") || !set(ctx + "targets/0/pid_target", std::to_string(getpid())) ||
      !set(ctx + "schemes/nr_schemes", "1") || !set(scheme + "action", "stat") ||
      !set(pattern + "sz/min", "0") || !set(pattern + "sz/max", kAnyBytes) ||
      !set(pattern + "nr_accesses/min", "0") || !set(pattern + "nr_accesses/max", kAnyUnsigned) ||
      !set(pattern + "age/min", "0") || !set(pattern + "age/max", kAnyUnsigned))
    return undo(reason_);
  ranges_.clear();
  max_regions_ = 0;
  attrs_ = attrs;
  if (!write_region_bounds(ranges) || !write_regions(ranges)) return undo(reason_);
  if (int err = write_sysfs(std::string(kKdamondsPath) + "/0/state", "on"))
    return undo(std::string("the kdamond did not start: ") + std::strerror(err));
  kdamond_pid_ = static_cast<pid_t>(read_number(std::string(kKdamondsPath) + "/0/pid").value_or(0));
  ranges_ = ranges;
  owner_ = getpid();
  return true;
}

std::pair<uint32_t, uint32_t> DamonMonitor::region_bounds(uintptr_t bytes, uintptr_t region_bytes) {
  const uint64_t runs = (bytes + region_bytes - 1) / region_bytes;
  const auto min = static_cast<uint32_t>(std::clamp<uint64_t>(runs, 10, 500));
  return {min, 2 * min};
}

bool DamonMonitor::write_region_bounds(const std::vector<AddressRange>& ranges) {
  uintptr_t bytes = 0;
  for (const AddressRange& r : ranges) bytes += r.end - r.start;
  const auto [min, max] = region_bounds(bytes, attrs_.region_bytes);
  if (max == max_regions_) return true;
  const std::string dir = std::string(kKdamondsPath) + "/0/contexts/0/monitoring_attrs/nr_regions/";
  // Checked together when the kdamond starts or commits, so the order does not matter.
  int err = write_sysfs(dir + "max", std::to_string(max));
  if (!err) err = write_sysfs(dir + "min", std::to_string(min));
  if (err) return fail(std::string("writing nr_regions: ") + std::strerror(err));
  max_regions_ = max;
  return true;
}

bool DamonMonitor::write_regions(const std::vector<AddressRange>& ranges) {
  const std::string dir = std::string(kKdamondsPath) + "/0/contexts/0/targets/0/regions/";
  if (int err = write_sysfs(dir + "nr_regions", std::to_string(ranges.size())))
    return fail(std::string("writing target regions: ") + std::strerror(err));
  for (size_t i = 0; i < ranges.size(); ++i) {
    const std::string r = dir + std::to_string(i) + "/";
    // The end first: a start beyond the region's old end would not be refused now, but it reads oddly.
    int err = write_sysfs(r + "end", std::to_string(ranges[i].end));
    if (!err) err = write_sysfs(r + "start", std::to_string(ranges[i].start));
    if (err) return fail(std::string("writing target region: ") + std::strerror(err));
  }
  return true;
}

bool DamonMonitor::set_ranges(const std::vector<AddressRange>& ranges) {
  if (owner_ != getpid()) return fail("no kdamond of this process");
  if (ranges == ranges_ || ranges.empty()) return true;
  if (!write_region_bounds(ranges) || !write_regions(ranges)) return false;
  if (int err = write_sysfs(std::string(kKdamondsPath) + "/0/state", "commit"))
    return fail(std::string("committing new target regions: ") + std::strerror(err));
  ranges_ = ranges;
  ++commits_;
  return true;
}

bool DamonMonitor::read(std::vector<DamonRegion>& out) {
  out.clear();
  if (owner_ != getpid()) return fail("no kdamond of this process");
  const std::string kd = std::string(kKdamondsPath) + "/0/";
  if (int err = write_sysfs(kd + "state", "update_schemes_tried_regions")) {
    const std::string state = read_sysfs(kd + "state").value_or("unreadable");
    return fail("reading the kdamond's regions: " + std::string(std::strerror(err)) + " (kdamond " + state + ")");
  }
  const std::string dir = kd + "contexts/0/schemes/0/tried_regions/";
  for (const std::string& name : os::FsRoot("/").list(dir)) {
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;  // total_bytes
    auto start = read_number(dir + name + "/start"), end = read_number(dir + name + "/end");
    auto accesses = read_number(dir + name + "/nr_accesses");
    if (!start || !end || !accesses || *end <= *start) continue;
    out.push_back(DamonRegion{static_cast<uintptr_t>(*start), static_cast<uintptr_t>(*end), static_cast<uint32_t>(*accesses)});
  }
  std::sort(out.begin(), out.end(), [](const DamonRegion& a, const DamonRegion& b) { return a.start < b.start; });
  return true;
}

void DamonMonitor::stop() {
  if (owner_ != getpid()) return;
  os::FileLock lock{std::string(kLockFilePath)};
  write_sysfs(std::string(kKdamondsPath) + "/0/state", "off");
  write_sysfs(std::string(kKdamondsPath) + "/nr_kdamonds", "0");
  owner_ = 0;
  kdamond_pid_ = 0;
}

}  // namespace tieralloc::tiering
