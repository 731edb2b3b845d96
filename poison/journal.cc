#include "poison/journal.h"

#include <errno.h>
#include <stdio.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

#include "os/fs.h"
#include "tieralloc/tieralloc.h"

namespace tieralloc::poison {
namespace {

constexpr std::string_view kMagic = "tieralloc-quarantine";
constexpr int kVersion = 1;
// Far more than kMaxJournalEntries lines of at most ~90 bytes: a bigger file is not a journal.
constexpr size_t kMaxFileBytes = size_t{16} << 20;

struct SourceName {
  int source;
  const char* name;
};
constexpr SourceName kSources[] = {
    {TIERALLOC_POISON_CONSUMED, "consumed"}, {TIERALLOC_POISON_FOUND, "found"},
    {TIERALLOC_POISON_REPORTED, "reported"}, {TIERALLOC_POISON_PHYSICAL, "physical"},
    {kSourceBadblocks, "badblocks"},         {kSourceManual, "manual"},
};

bool parse_u64(std::string_view s, uint64_t* out, int base) {
  if (base == 16) {
    if (s.size() < 3 || s.substr(0, 2) != "0x") return false;
    s.remove_prefix(2);
  }
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_i64(std::string_view s, int64_t* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size() && *out >= 0;
}

std::vector<std::string_view> fields(std::string_view line) {
  std::vector<std::string_view> out;
  while (!line.empty()) {
    size_t sp = line.find(' ');
    if (sp != 0) out.push_back(line.substr(0, sp));
    if (sp == std::string_view::npos) break;
    line.remove_prefix(sp + 1);
  }
  return out;
}

bool by_range(const JournalEntry& a, const JournalEntry& b) { return a.phys != b.phys ? a.phys < b.phys : a.len < b.len; }

JournalFile corrupt(std::string why) {
  JournalFile f;
  f.state = JournalState::kCorrupt;
  f.problem = std::move(why);
  return f;
}

}  // namespace

const char* source_name(int source) {
  for (const auto& s : kSources)
    if (s.source == source) return s.name;
  return nullptr;
}

int source_from_name(std::string_view name) {
  for (const auto& s : kSources)
    if (name == s.name) return s.source;
  return 0;
}

const char* state_name(JournalState s) {
  switch (s) {
    case JournalState::kMissing: return "missing";
    case JournalState::kOk: return "ok";
    case JournalState::kCorrupt: return "corrupt";
    case JournalState::kNewer: return "newer";
    case JournalState::kUnreadable: return "unreadable";
  }
  return "?";
}

uint32_t crc32(std::string_view data) {
  // IEEE 802.3 (zlib's), table built once; the journal is small and written rarely.
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = table[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::string format_journal(const std::vector<JournalEntry>& entries) {
  std::string out = std::string(kMagic) + " " + std::to_string(kVersion) + "\n";
  out +=
      "# Physical memory known bad on this machine, kept by tieralloc (libtieralloc and `tieralloc poison`).\n"
      "# Do not edit: the checksum rejects a changed file. `tieralloc poison clear` removes records.\n"
      "# bad PHYS LEN SOURCE REPORTED REPAIRS LAST_REPAIR\n";
  char line[160];
  for (const auto& e : entries) {
    const char* name = source_name(e.source);
    snprintf(line, sizeof line, "bad 0x%016llx 0x%llx %s %lld %u %lld\n", static_cast<unsigned long long>(e.phys),
             static_cast<unsigned long long>(e.len), name ? name : "reported", static_cast<long long>(e.reported),
             e.repairs, static_cast<long long>(e.last_repair));
    out += line;
  }
  snprintf(line, sizeof line, "end %zu crc32 %08x\n", entries.size(), crc32(out));
  out += line;
  return out;
}

JournalFile parse_journal(std::string_view text) {
  if (text.empty()) return corrupt("empty file");
  if (text.back() != '\n') return corrupt("truncated (no final newline)");
  // The last line: "end N crc32 X" over everything before it.
  const size_t last = text.rfind('\n', text.size() - 2);
  const size_t last_start = last == std::string_view::npos ? 0 : last + 1;
  std::string_view body = text.substr(0, last_start);
  auto header_end = text.find('\n');
  auto header = fields(text.substr(0, header_end));
  if (header.size() != 2 || header[0] != kMagic) return corrupt("not a tieralloc quarantine journal (bad first line)");
  uint64_t version = 0;
  if (!parse_u64(header[1], &version, 10)) return corrupt("bad version field");
  if (version > static_cast<uint64_t>(kVersion)) {
    JournalFile f;
    f.state = JournalState::kNewer;
    f.problem = "written by a newer tieralloc (format version " + std::to_string(version) + ")";
    return f;
  }
  if (version != static_cast<uint64_t>(kVersion)) return corrupt("unknown format version " + std::to_string(version));
  auto trailer = fields(text.substr(last_start, text.size() - 1 - last_start));
  uint64_t count = 0;
  uint32_t want = 0;
  bool ok = last_start != 0 && trailer.size() == 4 && trailer[0] == "end" && trailer[2] == "crc32" &&
            parse_u64(trailer[1], &count, 10) && trailer[3].size() == 8;
  if (ok) {
    auto [p, ec] = std::from_chars(trailer[3].data(), trailer[3].data() + 8, want, 16);
    ok = ec == std::errc() && p == trailer[3].data() + 8;
  }
  if (!ok) return corrupt("truncated or damaged (no valid end line)");
  if (crc32(body) != want) return corrupt("checksum mismatch");
  JournalFile f;
  f.state = JournalState::kOk;
  size_t lineno = 1;
  for (size_t at = header_end + 1; at < last_start;) {
    const size_t nl = text.find('\n', at);
    std::string_view line = text.substr(at, nl - at);
    at = nl + 1;
    ++lineno;
    if (line.empty() || line[0] == '#') continue;
    auto fs = fields(line);
    JournalEntry e;
    uint64_t repairs = 0;
    if (fs.size() != 7 || fs[0] != "bad" || !parse_u64(fs[1], &e.phys, 16) || !parse_u64(fs[2], &e.len, 16) ||
        e.len == 0 || e.phys + e.len < e.phys || !(e.source = source_from_name(fs[3])) ||
        !parse_i64(fs[4], &e.reported) || !parse_u64(fs[5], &repairs, 10) || repairs > UINT32_MAX ||
        !parse_i64(fs[6], &e.last_repair))
      return corrupt("bad record on line " + std::to_string(lineno));
    e.repairs = static_cast<uint32_t>(repairs);
    f.entries.push_back(e);
  }
  if (f.entries.size() != count) return corrupt("record count mismatch");
  if (f.entries.size() > kMaxJournalEntries) return corrupt("too many records");
  std::sort(f.entries.begin(), f.entries.end(), by_range);
  return f;
}

JournalFile read_journal(const std::string& path) {
  auto text = os::read_file(path, kMaxFileBytes);
  if (!text) {
    JournalFile f;
    if (errno == ENOENT) return f;
    f.state = errno == EFBIG ? JournalState::kCorrupt : JournalState::kUnreadable;
    f.problem = errno == EFBIG ? "larger than any journal (" + std::to_string(kMaxFileBytes >> 20) + " MiB)"
                               : std::string(std::strerror(errno));
    return f;
  }
  return parse_journal(*text);
}

bool add_entry(std::vector<JournalEntry>& entries, const JournalEntry& e) {
  for (const auto& x : entries)
    if (x.phys <= e.phys && x.end() >= e.end()) return false;
  entries.insert(std::upper_bound(entries.begin(), entries.end(), e, by_range), e);
  return true;
}

bool note_repair(std::vector<JournalEntry>& entries, uint64_t phys, uint64_t len, int64_t when) {
  bool changed = false;
  for (auto& x : entries)
    if (x.phys < phys + len && phys < x.end()) {
      ++x.repairs;
      x.last_repair = when;
      changed = true;
    }
  return changed;
}

size_t clear_range(std::vector<JournalEntry>& entries, uint64_t phys, uint64_t len) {
  const uint64_t end = phys + len < phys ? UINT64_MAX : phys + len;
  std::vector<JournalEntry> kept;
  size_t touched = 0;
  for (const auto& x : entries) {
    if (!(x.phys < end && phys < x.end())) {
      kept.push_back(x);
      continue;
    }
    ++touched;
    if (x.phys < phys) {
      JournalEntry below = x;
      below.len = phys - x.phys;
      kept.push_back(below);
    }
    if (x.end() > end) {
      JournalEntry above = x;
      above.phys = end;
      above.len = x.end() - end;
      kept.push_back(above);
    }
  }
  std::sort(kept.begin(), kept.end(), by_range);
  entries.swap(kept);
  return touched;
}

int update_journal(const std::string& path, const std::function<bool(std::vector<JournalEntry>&)>& edit,
                   JournalFile* found) {
  os::FileLock lock(path + ".lock");
  if (!lock.ok()) return -lock.error();
  JournalFile f = read_journal(path);
  if (found) *found = f;
  if (f.state == JournalState::kUnreadable) return -EIO;
  if (f.state == JournalState::kNewer) return -EEXIST;
  if (!edit(f.entries)) return 0;
  if (f.entries.size() > kMaxJournalEntries) return -ENOSPC;
  // Nothing in a corrupt file is trusted; nothing in it is destroyed either.
  if (f.state == JournalState::kCorrupt && ::rename(path.c_str(), (path + ".corrupt").c_str()) != 0) return -errno;
  return os::replace_file_durably(path, format_journal(f.entries));
}

}  // namespace tieralloc::poison
