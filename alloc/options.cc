#include "alloc/options.h"

#include <cstdlib>

#include "os/fs.h"

namespace tieralloc::alloc {

const std::vector<OptionDoc>& option_docs() {
  static const std::vector<OptionDoc> docs = {
      {"TIERALLOC_FSROOT", "DIR", "folder standing in for / for every /sys and /proc read (default /)"},
      {"TIERALLOC_TIERS", "SPEC",
       "override discovery: emulate:fast=1G,slow=4G (logical tiers carved from the fastest nodes, "
       "flagged EMULATED) or 0-1:dram;2-3:pmem (node lists per tier, fastest first)"},
      {"TIERALLOC_FAST_LIMIT", "SIZE|N%",
       "this process's budget on tier 0 (K/M/G/T suffixes, or percent of the tier's capacity); plain "
       "allocations spill to the next tier past it (default: the tier's free memory)"},
      {"TIERALLOC_STATS", "stderr|PATH", "write per-tier statistics (JSON) at exit"},
      {"TIERALLOC_POLICY", "auto|static",
       "auto (default): the tiering engine migrates pages by measured heat when there are two tiers or "
       "more; static: placement only, pages move only through tieralloc_move/tieralloc_hint"},
      {"TIERALLOC_SAMPLER", "off|on|N%",
       "the hinting-fault heat sampler that drives automatic migration: off (default), on (at most 1% of "
       "one core) or its CPU budget in percent of one core (0.1% to 50%). Opt-in because a system call "
       "that writes into a page under sampling (read(2) into a heap buffer) fails with EFAULT"},
      {"TIERALLOC_DAMON", "on|off",
       "on (default): without the sampler, the engine takes its heat from DAMON, the kernel's access monitor, "
       "where the kernel has it for virtual addresses (Linux 6.11+, CONFIG_DAMON_VADDR) and the process may "
       "configure it (root) and no other program uses it; off: never"},
      {"TIERALLOC_MIGRATE_RATE", "SIZE",
       "bytes per second the tiering engine may migrate (K/M/G suffixes; default 256M)"},
      {"TIERALLOC_SITE_SAMPLE", "SIZE|0",
       "allocation-site heat: one allocation sampled per SIZE bytes allocated on average (default 512K, "
       "4K to 1G; 0 = off); the tiering engine credits sampled objects' heat to their call sites, and "
       "plain allocations from sites found hot start on the fast tier, from sites found cold on the "
       "slowest. Only while the engine has a heat source (TIERALLOC_SAMPLER)"},
      {"TIERALLOC_POISON", "on|off",
       "on (default): machine-check SIGBUS (BUS_MCEERR_AR/AO) on tieralloc's memory quarantines the bad "
       "cachelines, and faults on quarantined pages reach tieralloc first (the application's own "
       "SIGBUS/SIGSEGV handlers still get every other fault); off: no handlers, the API still works"},
      {"TIERALLOC_QUARANTINE_FILE", "PATH|off",
       "the quarantine journal: physical memory known bad on this machine, read at start-up (resident pages "
       "tieralloc manages are moved off the frames it names) and updated as poison is reported (default $XDG_STATE_HOME/tieralloc/quarantine, "
       "or ~/.local/state/tieralloc/quarantine; an absolute path; off: no journal)"},
  };
  return docs;
}

std::string Options::default_quarantine_file() {
  const char* state = secure_getenv("XDG_STATE_HOME");
  if (state && state[0] == '/') return std::string(state) + "/tieralloc/quarantine";
  const char* home = secure_getenv("HOME");
  if (home && home[0] == '/') return std::string(home) + "/.local/state/tieralloc/quarantine";
  return "";
}

Options options_from_env(std::vector<std::string>& warnings) {
  Options o;
  if (const char* v = secure_getenv("TIERALLOC_FAST_LIMIT"); v && *v) {
    std::string_view s = os::trim(v);
    bool ok = false;
    if (!s.empty() && s.back() == '%') {
      auto pct = os::parse_size(s.substr(0, s.size() - 1));  // digits only: no suffix before '%'
      bool digits = s.size() > 1 && s.substr(0, s.size() - 1).find_first_not_of("0123456789.") == std::string_view::npos;
      if (pct && digits && *pct >= 1 && *pct <= 100) o.fast_limit_percent = static_cast<double>(*pct), ok = true;
    } else if (auto bytes = os::parse_size(s); bytes && *bytes > 0) {
      o.fast_limit_bytes = *bytes;
      ok = true;
    }
    if (!ok)
      warnings.push_back("TIERALLOC_FAST_LIMIT='" + std::string(v) +
                         "' is not a size (like 512M or 2G) or a percentage from 1% to 100%; no fast-tier budget is applied");
  }
  if (const char* v = secure_getenv("TIERALLOC_STATS"); v && *v) o.stats = v;
  if (const char* v = secure_getenv("TIERALLOC_POLICY"); v && *v) {
    std::string_view s = os::trim(v);
    if (s == "static") o.migrate = false;
    else if (s != "auto")
      warnings.push_back("TIERALLOC_POLICY='" + std::string(v) + "' is neither auto nor static; using auto");
  }
  if (const char* v = secure_getenv("TIERALLOC_SAMPLER"); v && *v) {
    std::string_view s = os::trim(v);
    if (s == "on") {
      o.sampler_cpu_percent = 1.0;
    } else if (s != "off" && s != "0") {
      char* end = nullptr;
      std::string num(s.substr(0, s.empty() ? 0 : s.size() - 1));
      double pct = !s.empty() && s.back() == '%' && !num.empty() ? std::strtod(num.c_str(), &end) : -1;
      if (end && *end == '\0' && pct >= 0.1 && pct <= 50) o.sampler_cpu_percent = pct;
      else
        warnings.push_back("TIERALLOC_SAMPLER='" + std::string(v) +
                           "' is not on, off or a CPU budget from 0.1% to 50%; the sampler stays off");
    }
  }
  if (const char* v = secure_getenv("TIERALLOC_DAMON"); v && *v) {
    std::string_view s = os::trim(v);
    if (s == "on" || s == "1") o.damon = true;
    else if (s == "off" || s == "0") o.damon = false;
    else warnings.push_back("TIERALLOC_DAMON='" + std::string(v) + "' is not on or off; DAMON is used where available");
  }
  if (const char* v = secure_getenv("TIERALLOC_MIGRATE_RATE"); v && *v) {
    if (auto bytes = os::parse_size(os::trim(v)); bytes && *bytes >= 4096) o.migrate_rate = *bytes;
    else
      warnings.push_back("TIERALLOC_MIGRATE_RATE='" + std::string(v) +
                         "' is not a rate in bytes per second of at least 4K (like 64M); using 256M");
  }
  if (const char* v = secure_getenv("TIERALLOC_SITE_SAMPLE"); v && *v) {
    auto bytes = os::parse_size(os::trim(v));
    if (bytes && (*bytes == 0 || (*bytes >= 4096 && *bytes <= (uint64_t{1} << 30)))) o.site_sample_bytes = *bytes;
    else
      warnings.push_back("TIERALLOC_SITE_SAMPLE='" + std::string(v) +
                         "' is not 0 or a size from 4K to 1G (like 512K); using 512K");
  }
  if (const char* v = secure_getenv("TIERALLOC_POISON"); v && *v) {
    std::string_view s = os::trim(v);
    if (s == "on" || s == "1") o.poison = true;
    else if (s == "off" || s == "0") o.poison = false;
    else warnings.push_back("TIERALLOC_POISON='" + std::string(v) + "' is not on or off; poison handling stays on");
  }
  if (const char* v = secure_getenv("TIERALLOC_QUARANTINE_FILE"); v && *v) {
    std::string_view s = os::trim(v);
    // Absolute only: a relative path would name a different file in every working directory.
    if (s == "off") o.quarantine_file.clear();
    else if (s.size() > 1 && s.front() == '/' && s.back() != '/' && s.size() < 4000 && s.find('\n') == std::string_view::npos)
      o.quarantine_file = std::string(s);
    else
      warnings.push_back("TIERALLOC_QUARANTINE_FILE='" + std::string(v) + "' is not an absolute file path or off; using " +
                         (o.quarantine_file.empty() ? std::string("no journal (no home directory)") : o.quarantine_file));
  }
  return o;
}

}  // namespace tieralloc::alloc
