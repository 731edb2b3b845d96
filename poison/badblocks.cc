#include "poison/badblocks.h"

#include <algorithm>
#include <charconv>

namespace tieralloc::poison {
namespace {

// "0x1234abcd" as the kernel prints a resource.
bool parse_hex(std::string_view s, uint64_t* out) {
  s = os::trim(s);
  if (s.size() < 3 || s.substr(0, 2) != "0x") return false;
  auto [p, ec] = std::from_chars(s.data() + 2, s.data() + s.size(), *out, 16);
  return ec == std::errc() && p == s.data() + s.size();
}

// One badblocks file: "SECTOR COUNT" per line (the kernel's badblocks_show), translated from
// `base`. size (0 = unknown) bounds the device: a range past it is clipped and noted.
void read_list(const os::FsRoot& fs, const std::string& list, const std::string& origin, uint64_t base, uint64_t size,
               BadblocksScan& out) {
  auto text = fs.read(list);
  if (!text) {
    out.notes.push_back(origin + ": cannot read " + list);
    return;
  }
  ++out.lists_read;
  std::string_view rest = *text;
  int lineno = 0;
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    std::string_view line = os::trim(rest.substr(0, nl));
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    ++lineno;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    auto sector = sp == std::string_view::npos ? std::nullopt : os::parse_int(line.substr(0, sp));
    auto count = sp == std::string_view::npos ? std::nullopt : os::parse_int(line.substr(sp + 1));
    constexpr long long kMaxSector = static_cast<long long>(UINT64_MAX / kSectorSize / 2);
    if (!sector || !count || *sector < 0 || *count <= 0 || *sector > kMaxSector || *count > kMaxSector) {
      out.notes.push_back(origin + ": " + list + " line " + std::to_string(lineno) + " is not 'SECTOR COUNT': '" +
                          std::string(line) + "'");
      continue;
    }
    uint64_t off = static_cast<uint64_t>(*sector) * kSectorSize, len = static_cast<uint64_t>(*count) * kSectorSize;
    if (size && off + len > size) {
      out.notes.push_back(origin + ": bad sectors past the device's end (" + std::to_string(size) + " bytes) ignored");
      if (off >= size) continue;
      len = size - off;
    }
    if (base + off < base) continue;
    out.ranges.push_back(BadRange{base + off, len, origin});
  }
}

uint64_t read_size(const os::FsRoot& fs, const std::string& path) {
  auto v = fs.read(path);
  auto n = v ? os::parse_int(*v) : std::nullopt;
  return n && *n > 0 ? static_cast<uint64_t>(*n) : 0;
}

// A pmem block device's list, placed from the `resource` of its parent device.
void read_block_device(const os::FsRoot& fs, const std::string& dir, const std::string& name, BadblocksScan& out) {
  if (!fs.exists(dir + "/badblocks")) return;
  uint64_t base = 0;
  auto res = fs.read(dir + "/device/resource");
  if (!res || !parse_hex(*res, &base)) {
    out.notes.push_back(name + ": no physical base (" + dir + "/device/resource " +
                        (fs.exists(dir + "/device/resource") ? "unreadable: it needs root" : "missing: a BTT device?") +
                        "); its region's list covers the same media");
    return;
  }
  // The block device's size file counts 512-byte sectors whatever the logical block size.
  read_list(fs, dir + "/badblocks", name, base, read_size(fs, dir + "/size") * kSectorSize, out);
}

}  // namespace

BadblocksScan read_badblocks(const os::FsRoot& fs) {
  BadblocksScan out;
  for (const auto& name : fs.list("/sys/bus/nd/devices")) {
    if (name.rfind("region", 0) != 0) continue;
    const std::string dir = "/sys/bus/nd/devices/" + name;
    if (!fs.exists(dir + "/badblocks")) continue;  // a region type without media errors to list
    uint64_t base = 0;
    auto res = fs.read(dir + "/resource");
    if (!res || !parse_hex(*res, &base)) {
      out.notes.push_back(name + ": no readable physical base (" + dir + "/resource" +
                          (res ? " is not an address" : " unreadable: it needs root") + "); its bad blocks cannot be placed");
      continue;
    }
    read_list(fs, dir + "/badblocks", name, base, read_size(fs, dir + "/size"), out);
  }
  // Block devices are listed in /sys/block and /sys/class/block alike on a real system; dumps
  // (hwloc's among them) may carry only one of the two, or a stale one: the union, once per name.
  std::vector<std::string> seen;
  for (const char* blocks : {"/sys/block", "/sys/class/block"}) {
    for (const auto& name : fs.list(blocks)) {
      if (name.rfind("pmem", 0) != 0 || std::find(seen.begin(), seen.end(), name) != seen.end()) continue;
      seen.push_back(name);
      read_block_device(fs, std::string(blocks) + "/" + name, name, out);
    }
  }
  return out;
}

std::vector<BadRange> merge_ranges(std::vector<BadRange> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const BadRange& a, const BadRange& b) { return a.phys < b.phys; });
  std::vector<BadRange> out;
  for (auto& r : ranges) {
    if (!out.empty() && r.phys <= out.back().phys + out.back().len) {
      out.back().len = std::max(out.back().phys + out.back().len, r.phys + r.len) - out.back().phys;
      continue;
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace tieralloc::poison
