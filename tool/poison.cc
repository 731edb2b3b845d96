// `tieralloc poison`: what the quarantine journal holds and what the nvdimm badblocks lists say,
// importing the lists into the journal, reporting a range by hand, and clearing records after
// the memory was repaired outside tieralloc (ndctl clear-errors, a replaced DIMM).
#include "tool/poison.h"

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "alloc/options.h"
#include "numa/topology.h"
#include "os/fs.h"
#include "os/memory.h"
#include "poison/badblocks.h"
#include "poison/journal.h"

namespace tieralloc::tool {
namespace {

using poison::JournalEntry;
using poison::JournalFile;
using poison::JournalState;

constexpr const char* kUsage =
    "usage: tieralloc poison list [--json] [--file PATH] [--fsroot DIR]\n"
    "                              the quarantine journal and the current nvdimm badblocks\n"
    "       tieralloc poison scan [--file PATH] [--fsroot DIR]\n"
    "                              import the badblocks lists into the journal\n"
    "       tieralloc poison report [--file PATH] phys:ADDR LEN\n"
    "       tieralloc poison report [--file PATH] --pid PID ADDR LEN\n"
    "                              record a physical range as bad (a virtual one through the\n"
    "                              frames of process PID: needs root)\n"
    "       tieralloc poison clear [--file PATH] (phys:ADDR LEN | --all)\n"
    "                              forget a range after it was repaired outside tieralloc\n"
    "ADDR: decimal or 0x hex; LEN: bytes, with K/M/G suffixes or 0x hex.\n"
    "exit status: 0 done, 1 the journal cannot be read or written (or a report cannot be placed), 2 bad usage\n";

int usage(const std::string& msg) {
  std::fprintf(stderr, "tieralloc: poison: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

std::optional<uint64_t> parse_addr(std::string_view s) {
  std::string str(s);
  if (str.empty() || str[0] == '-' || str[0] == '+') return std::nullopt;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(str.c_str(), &end, 0);
  if (errno || !end || *end) return std::nullopt;
  return v;
}

std::optional<uint64_t> parse_len(std::string_view s) {
  if (s.substr(0, 2) == "0x") return parse_addr(s);
  auto v = os::parse_size(s);
  // parse_size takes fractions ("1.5K"); a length of bytes must come out whole.
  if (!v || s.find('.') != std::string_view::npos) return std::nullopt;
  return *v;
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string when(int64_t t) {
  if (!t) return "-";
  char buf[32];
  time_t tt = static_cast<time_t>(t);
  struct tm tm;
  gmtime_r(&tt, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

struct Common {
  std::string file;
  std::string fsroot;
  bool json = false, all = false;
  int pid = -1;
  std::vector<std::string_view> positional;
};

// Options shared by the subcommands; an error message, or "" when they parse.
std::string parse_common(const std::vector<std::string_view>& args, Common& c) {
  std::vector<std::string> warnings;
  c.file = alloc::options_from_env(warnings).quarantine_file;
  for (const auto& w : warnings) std::fprintf(stderr, "tieralloc: warning: %s\n", w.c_str());
  c.fsroot = numa::options_from_env().fsroot;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string_view a = args[i];
    auto value = [&](std::string_view name, std::string* out) {
      if (a.size() > name.size() + 1 && a.substr(0, name.size()) == name && a[name.size()] == '=') {
        *out = std::string(a.substr(name.size() + 1));
        return true;
      }
      if (a == name && i + 1 < args.size()) {
        *out = std::string(args[++i]);
        return true;
      }
      return false;
    };
    std::string v;
    if (a == "--json") c.json = true;
    else if (a == "--all") c.all = true;
    else if (value("--file", &v)) {
      if (v.empty() || v[0] != '/') return "--file wants an absolute path, not '" + v + "'";
      c.file = v;
    } else if (value("--fsroot", &v)) c.fsroot = v;
    else if (value("--pid", &v)) {
      auto pid = os::parse_int(v);
      if (!pid || *pid <= 0 || *pid > 0x3fffffff) return "--pid wants a process id, not '" + v + "'";
      c.pid = static_cast<int>(*pid);
    } else if (a == "--file" || a == "--fsroot" || a == "--pid") return std::string(a) + " needs a value";
    else if (a.size() > 1 && a[0] == '-' && a[1] == '-') return "unknown option '" + std::string(a) + "'";
    else c.positional.push_back(a);
  }
  if (c.file.empty())
    return "no quarantine journal (TIERALLOC_QUARANTINE_FILE=off, or no HOME): name one with --file PATH";
  return "";
}

// "phys:ADDR LEN" (phys: optional where only physical makes sense) from positional args.
std::string parse_phys_range(const Common& c, bool prefix_required, uint64_t* phys, uint64_t* len) {
  if (c.positional.size() != 2) return "expected ADDR LEN";
  std::string_view a = c.positional[0];
  const bool has_prefix = a.substr(0, 5) == "phys:";
  if (has_prefix) a.remove_prefix(5);
  else if (prefix_required) return "";
  auto p = parse_addr(a);
  auto l = parse_len(c.positional[1]);
  if (!p) return "'" + std::string(c.positional[0]) + "' is not an address";
  if (!l || *l == 0) return "'" + std::string(c.positional[1]) + "' is not a length of at least one byte";
  if (*p + *l < *p) return "the range wraps around the address space";
  *phys = *p;
  *len = *l;
  return "";
}

void print_journal_problem(const std::string& file, const JournalFile& f) {
  std::fprintf(stderr, "tieralloc: poison: journal %s is %s: %s\n", file.c_str(), poison::state_name(f.state),
               f.problem.c_str());
}

int cmd_list(const Common& c) {
  if (!c.positional.empty()) return usage("list takes no arguments");
  JournalFile f = poison::read_journal(c.file);
  poison::BadblocksScan bb = poison::read_badblocks(os::FsRoot(c.fsroot));
  const bool journal_ok = f.state == JournalState::kOk || f.state == JournalState::kMissing;
  if (c.json) {
    nlohmann::json doc;
    doc["journal"] = {{"path", c.file}, {"state", poison::state_name(f.state)}, {"problem", f.problem}};
    auto& entries = doc["journal"]["entries"] = nlohmann::json::array();
    for (const auto& e : f.entries)
      entries.push_back({{"phys", e.phys}, {"len", e.len}, {"source", poison::source_name(e.source)},
                         {"reported", e.reported}, {"repairs", e.repairs}, {"last_repair", e.last_repair}});
    doc["badblocks"] = {{"fsroot", c.fsroot}, {"lists_read", bb.lists_read}, {"notes", bb.notes}};
    auto& ranges = doc["badblocks"]["ranges"] = nlohmann::json::array();
    for (const auto& r : bb.ranges) ranges.push_back({{"phys", r.phys}, {"len", r.len}, {"origin", r.origin}});
    std::printf("%s\n", doc.dump(2).c_str());
  } else {
    std::printf("journal %s: %s", c.file.c_str(), poison::state_name(f.state));
    if (journal_ok) std::printf(", %zu record%s\n", f.entries.size(), f.entries.size() == 1 ? "" : "s");
    else std::printf(" (%s): its records are not used\n", f.problem.c_str());
    if (!f.entries.empty())
      std::printf("  %-39s %-10s %-10s %-21s %s\n", "physical range", "bytes", "source", "reported", "repairs (last)");
    for (const auto& e : f.entries)
      std::printf("  %s-%s %-10s %-10s %-21s %u (%s)\n", hex(e.phys).c_str(), hex(e.end()).c_str(),
                  os::format_bytes(e.len).c_str(), poison::source_name(e.source), when(e.reported).c_str(), e.repairs,
                  when(e.last_repair).c_str());
    std::printf("badblocks under %s: %zu range%s in %d list%s\n", c.fsroot.c_str(), bb.ranges.size(),
                bb.ranges.size() == 1 ? "" : "s", bb.lists_read, bb.lists_read == 1 ? "" : "s");
    for (const auto& r : bb.ranges)
      std::printf("  %s-%s %-10s %s\n", hex(r.phys).c_str(), hex(r.phys + r.len).c_str(), os::format_bytes(r.len).c_str(),
                  r.origin.c_str());
    for (const auto& n : bb.notes) std::printf("  note: %s\n", n.c_str());
  }
  if (!journal_ok) print_journal_problem(c.file, f);
  return journal_ok ? 0 : 1;
}

// Applies `edit` to the journal; prints what happened. 0 or 1.
int update(const Common& c, const std::function<bool(std::vector<JournalEntry>&)>& edit) {
  JournalFile found;
  const int rc = poison::update_journal(c.file, edit, &found);
  if (found.state == JournalState::kCorrupt && rc == 0)
    std::fprintf(stderr, "tieralloc: poison: journal %s was corrupt (%s): kept as %s.corrupt, a new one written\n",
                 c.file.c_str(), found.problem.c_str(), c.file.c_str());
  if (rc < 0) {
    if (found.state == JournalState::kNewer || found.state == JournalState::kUnreadable) print_journal_problem(c.file, found);
    std::fprintf(stderr, "tieralloc: poison: cannot update %s: %s\n", c.file.c_str(),
                 rc == -EEXIST ? "it belongs to a newer tieralloc" : std::strerror(-rc));
    return 1;
  }
  return 0;
}

int cmd_scan(const Common& c) {
  if (!c.positional.empty()) return usage("scan takes no arguments");
  poison::BadblocksScan bb = poison::read_badblocks(os::FsRoot(c.fsroot));
  for (const auto& n : bb.notes) std::fprintf(stderr, "tieralloc: poison scan: note: %s\n", n.c_str());
  const auto merged = poison::merge_ranges(bb.ranges);
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  size_t added = 0;
  int rc = update(c, [&](std::vector<JournalEntry>& entries) {
    for (const auto& r : merged)
      if (poison::add_entry(entries, JournalEntry{r.phys, r.len, poison::kSourceBadblocks, now, 0, 0})) ++added;
    return added > 0;
  });
  if (rc == 0)
    std::printf("scan: %zu bad range%s in %d badblocks list%s under %s; %zu new record%s in %s\n", merged.size(),
                merged.size() == 1 ? "" : "s", bb.lists_read, bb.lists_read == 1 ? "" : "s", c.fsroot.c_str(), added,
                added == 1 ? "" : "s", c.file.c_str());
  return rc;
}

int cmd_report(const Common& c) {
  std::vector<JournalEntry> add;
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  if (c.pid < 0) {
    uint64_t phys = 0, len = 0;
    std::string err = parse_phys_range(c, true, &phys, &len);
    if (err.empty() && c.positional.size() == 2 && c.positional[0].substr(0, 5) != "phys:")
      err = "'" + std::string(c.positional[0]) +
            "' is a virtual address, which names memory only inside its process: give phys:ADDR, or --pid PID";
    if (!err.empty()) return usage("report: " + err);
    add.push_back(JournalEntry{phys, len, poison::kSourceManual, now, 0, 0});
  } else {
    if (c.positional.size() != 2) return usage("report --pid PID: expected ADDR LEN");
    auto va = parse_addr(c.positional[0]);
    auto len = parse_len(c.positional[1]);
    if (!va || !len || !*len || *va + *len < *va) return usage("report --pid PID: bad ADDR or LEN");
    constexpr uint64_t kPage = os::kPageSize;
    for (uint64_t page = *va & ~(kPage - 1); page < *va + *len; page += kPage) {
      uint64_t entry = 0;
      const long got = os::read_pagemap_of(c.pid, page, &entry, 1);
      if (got != 1) {
        std::fprintf(stderr, "tieralloc: poison report: cannot read the page map of process %d: %s\n", c.pid,
                     std::strerror(got < 0 ? static_cast<int>(-got) : EIO));
        return 1;
      }
      const uint64_t frame = os::pagemap_frame(entry) * kPage;
      if (!frame) {
        std::fprintf(stderr, "tieralloc: poison report: page %s of process %d %s\n", hex(page).c_str(), c.pid,
                     entry >> 63 ? "has a frame number hidden from this process (it needs CAP_SYS_ADMIN)"
                                 : "is not resident: it has no frame to be bad");
        return 1;
      }
      const uint64_t lo = std::max(page, *va), hi = std::min(page + kPage, *va + *len);
      add.push_back(JournalEntry{frame + (lo - page), hi - lo, poison::kSourceManual, now, 0, 0});
    }
  }
  size_t added = 0;
  int rc = update(c, [&](std::vector<JournalEntry>& entries) {
    for (const auto& e : add) added += poison::add_entry(entries, e);
    return added > 0;
  });
  if (rc == 0)
    for (const auto& e : add)
      std::printf("reported %s-%s (%s) in %s\n", hex(e.phys).c_str(), hex(e.end()).c_str(),
                  os::format_bytes(e.len).c_str(), c.file.c_str());
  return rc;
}

int cmd_clear(const Common& c) {
  uint64_t phys = 0, len = 0;
  if (c.all) {
    if (!c.positional.empty()) return usage("clear: --all takes no range");
  } else {
    std::string err = parse_phys_range(c, false, &phys, &len);
    if (!err.empty()) return usage("clear: " + err + " (or --all)");
  }
  size_t touched = 0;
  int rc = update(c, [&](std::vector<JournalEntry>& entries) {
    if (c.all) {
      touched = entries.size();
      entries.clear();
    } else {
      touched = poison::clear_range(entries, phys, len);
    }
    return touched > 0;
  });
  if (rc == 0) {
    if (c.all) std::printf("cleared %zu record%s from %s\n", touched, touched == 1 ? "" : "s", c.file.c_str());
    else
      std::printf("cleared %s-%s: %zu record%s removed or trimmed in %s\n", hex(phys).c_str(), hex(phys + len).c_str(),
                  touched, touched == 1 ? "" : "s", c.file.c_str());
  }
  return rc;
}

}  // namespace

int cmd_poison(const std::vector<std::string_view>& args) {
  if (args.empty()) return usage("no subcommand given");
  const std::string_view sub = args[0];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (sub != "list" && sub != "scan" && sub != "report" && sub != "clear")
    return usage("unknown subcommand '" + std::string(sub) + "'");
  Common c;
  if (std::string err = parse_common(args, c); !err.empty()) return usage(std::string(sub) + ": " + err);
  if (sub != "list" && c.json) return usage(std::string(sub) + ": --json is for list");
  if (sub != "clear" && c.all) return usage(std::string(sub) + ": --all is for clear");
  if (sub != "report" && c.pid >= 0) return usage(std::string(sub) + ": --pid is for report");
  if (sub == "list") return cmd_list(c);
  if (sub == "scan") return cmd_scan(c);
  if (sub == "report") return cmd_report(c);
  return cmd_clear(c);
}

}  // namespace tieralloc::tool
