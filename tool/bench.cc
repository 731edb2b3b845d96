// `tieralloc bench`: runs the workloads of tieralloc-bench-worker once per placement (each in its
// own process, since a placement is process-wide configuration), shows progress, prints a table per
// workload, and writes one results document (--json), a flat table (--csv) and charts (--plot).
//
// The results document:
//   {"tieralloc_bench": 1, "workload": "compare", "tieralloc_version": "...", "created": "...",
//    "machine": {cpu_model, cores, kernel}, "topology": {"emulated", "delay_model", "tiers", ...},
//    "config": {TIERALLOC_* the runs inherited}, "params": {...},
//    "results": {"latency": [item, ...], "kv": [...], ...}}
// Every item carries the figures of one measurement and the fields that identify it (placement,
// mix, target, op, threads, fast_limit), which `bench diff` uses to pair items of two documents.
#include "tool/bench.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "bench/worker/placements.h"
#include "numa/hwloc_view.h"
#include "numa/topology.h"
#include "os/fs.h"
#include "tool/run.h"

extern char** environ;

namespace tieralloc::tool {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

const char* const kWorkloads[] = {"latency", "bandwidth", "gups", "kv", "redis", "compare"};
using bench::kPlacements;
constexpr uint64_t kMiB = uint64_t{1} << 20;
// Room on each tier for latency and bandwidth, which are not about budgets, besides their arrays:
// the worker's own small allocations and jemalloc's page of padding per large block.
constexpr uint64_t kTierSlack = 64 * kMiB;

constexpr const char* kUsage =
    "usage: tieralloc bench WORKLOAD [options]\n"
    "       tieralloc bench diff A.json B.json\n"
    "\n"
    "workloads:\n"
    "  latency     idle load-to-use latency per tier and per NUMA node (random pointer chase)\n"
    "  bandwidth   sequential read, write and triad bandwidth per tier and node, 1..N threads\n"
    "  gups        updates to a hot set that moves halfway, per placement\n"
    "  kv          a key-value store (hash index + values), YCSB mixes, Zipfian keys, per placement\n"
    "  redis       Debian's redis-server under tieralloc with several fast-tier limits, redis-benchmark\n"
    "  compare     topology, latency, bandwidth, kv and gups: about a minute\n"
    "\n"
    "options:\n"
    "  --json FILE          write the results document\n"
    "  --csv FILE           write one row per measured item\n"
    "  --plot DIR           write PNG charts (gnuplot), and results.json and results.csv unless\n"
    "                       --json/--csv say otherwise\n"
    "  --quick              small sizes and short runs (a smoke run)\n"
    "  --seconds S          length of each timed run\n"
    "  --placements LIST    of all-fast,all-slow,first-touch,static-ratio,tieralloc (gups, kv)\n"
    "  --mixes LIST         YCSB mixes of A,B,C (kv; A 50% updates, B 5%, C reads only)\n"
    "  --records N          kv records (1 KiB values)\n"
    "  --ws SIZE            gups working set\n"
    "  --size SIZE          latency buffer; bandwidth array size\n"
    "  --threads N          bandwidth: 1..N threads\n"
    "  --limits LIST        redis: fast-tier limits, e.g. none,64M,16M\n"
    "  --slow-delay-ns N    emulated tiers: cost of one access to a slow-tier page (default 224)\n"
    "  --cold-share F       kv: a share F (up to 0.95) of the records in a second, archive table that 1%\n"
    "                       of operations touch, allocated by its own insert path (default 0)\n"
    "  --replace            kv: an update stores a new copy of the value and frees the old one\n";

int usage(const std::string& msg) {
  fprintf(stderr, "tieralloc bench: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

// A failure while measuring (exit status 1), and a bad command line or output path (2).
struct BenchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct UsageError : BenchError {
  using BenchError::BenchError;
};

uint64_t parse_size(std::string_view s) {
  auto bytes = os::parse_size(s);
  if (!bytes || *bytes == 0) throw UsageError("not a size: '" + std::string(s) + "' (e.g. 256M)");
  return *bytes;
}

std::string num(double v) {
  char b[32];
  snprintf(b, sizeof b, "%g", v);
  return b;
}

double parse_number(std::string_view s, double min, const char* what) {
  std::string str(s);
  char* end;
  double v = strtod(str.c_str(), &end);
  if (end == str.c_str() || *end || !(v >= min)) throw UsageError(std::string(what) + ": not a number >= " + num(min) + ": '" + str + "'");
  return v;
}

std::vector<std::string> parse_list(std::string_view s, const std::set<std::string>& allowed, const char* what) {
  std::vector<std::string> out;
  std::string str(s);
  for (size_t p = 0; p <= str.size();) {
    size_t q = str.find(',', p);
    if (q == std::string::npos) q = str.size();
    std::string item = str.substr(p, q - p);
    if (!allowed.empty() && !allowed.count(item)) throw UsageError(std::string("unknown ") + what + " '" + item + "'");
    if (item.empty()) throw UsageError(std::string("empty item in ") + what + " list");
    out.push_back(item);
    p = q + 1;
  }
  return out;
}

struct Params {
  std::string workload;
  std::string json_path, csv_path, plot_dir;
  bool quick = false;
  std::optional<double> seconds;
  std::vector<std::string> placements{std::begin(kPlacements), std::end(kPlacements)};
  std::vector<std::string> mixes{"A", "B", "C"};
  uint64_t records = 65536, ws = 256 * kMiB, latency_size = 256 * kMiB, bandwidth_size = 64 * kMiB;
  int threads = 0;  // 0: every CPU
  std::vector<std::string> limits{"none", "64M", "16M"};
  double slow_delay_ns = 224;
  double cold_share = 0;  // kv: share of the records in a second, cold table (bench/worker/kv.cc)
  bool replace = false;   // kv: updates store a new copy and free the old one
  std::set<std::string> given;  // options the user set, so compare and --quick do not override them
};

Params parse_params(const std::vector<std::string_view>& args) {
  Params p;
  p.workload = std::string(args.at(0));
  for (size_t i = 1; i < args.size(); ++i) {
    std::string k(args[i]);
    auto val = [&]() -> std::string_view {
      if (i + 1 >= args.size()) throw UsageError("missing value for " + k);
      return args[++i];
    };
    if (k == "--quick") p.quick = true;
    else if (k == "--json") p.json_path = val();
    else if (k == "--csv") p.csv_path = val();
    else if (k == "--plot") p.plot_dir = val();
    else if (k == "--seconds") p.seconds = parse_number(val(), 0.2, "--seconds");
    else if (k == "--placements") p.placements = parse_list(val(), {std::begin(kPlacements), std::end(kPlacements)}, "placement");
    else if (k == "--mixes") p.mixes = parse_list(val(), {"A", "B", "C"}, "mix");
    else if (k == "--records") p.records = static_cast<uint64_t>(parse_number(val(), 1024, "--records"));
    else if (k == "--ws") p.ws = parse_size(val());
    else if (k == "--size") p.latency_size = p.bandwidth_size = parse_size(val());
    else if (k == "--threads") p.threads = static_cast<int>(parse_number(val(), 1, "--threads"));
    else if (k == "--limits") p.limits = parse_list(val(), {}, "limit");
    else if (k == "--slow-delay-ns") p.slow_delay_ns = parse_number(val(), 0, "--slow-delay-ns");
    else if (k == "--cold-share") {
      p.cold_share = parse_number(val(), 0, "--cold-share");
      if (p.cold_share > 0.95) throw UsageError("--cold-share: at most 0.95 (the main table needs records)");
    }
    else if (k == "--replace") p.replace = true;
    else throw UsageError("unknown option '" + k + "'");
    p.given.insert(k);
  }
  for (const auto& l : p.limits)
    if (l != "none") parse_size(l);
  if (p.ws < 8 * kMiB) throw UsageError("--ws must be at least 8M");
  if (p.quick) {
    if (!p.given.count("--records")) p.records = 16384;
    if (!p.given.count("--ws")) p.ws = 16 * kMiB;
    if (!p.given.count("--size")) p.latency_size = 16 * kMiB, p.bandwidth_size = 4 * kMiB;
    if (!p.given.count("--threads")) p.threads = 1;
  }
  if (p.threads == 0) p.threads = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  return p;
}

// Fails early, before minutes of measuring, when an output cannot be written.
void check_writable(const std::string& path) {
  if (path.empty()) return;
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw UsageError("cannot write " + path + ": " + strerror(errno));
  close(fd);
}

void make_dir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw UsageError("cannot create " + dir + ": " + strerror(errno));
  std::string probe = dir + "/.tieralloc-write-test";
  check_writable(probe);
  unlink(probe.c_str());
}

// ---- the machine and its tiers ----

json machine_json() {
  json m;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) {
      m["cpu_model"] = line.substr(line.find(':') + 2);
      break;
    }
  m["cores"] = sysconf(_SC_NPROCESSORS_ONLN);
  struct utsname u;
  if (uname(&u) == 0) m["kernel"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  m["memory_bytes"] = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return m;
}

// Real tiers when the machine has two or more; otherwise the runs get an emulated fast/slow split
// of the one node, sized per run, and every slow-tier access in gups and kv costs slow_delay_ns.
struct Setup {
  bool emulated = false;
  numa::Topology topology;
  std::vector<int> nodes;  // with memory
  std::vector<std::string> inherited_env;  // the environment the runs start from
  json config;             // TIERALLOC_* passed on
};

Setup make_setup() {
  Setup s;
  s.topology = numa::discover(numa::options_from_env());
  s.emulated = s.topology.tiers.size() < 2 || s.topology.emulated;
  for (const auto& n : s.topology.nodes)
    if (n.usable) s.nodes.push_back(n.id);
  s.config = json::object();
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    bool ours = kv.rfind("TIERALLOC_", 0) == 0;
    // Emulated runs get their own TIERALLOC_TIERS; the policy and sampler are set per placement.
    if (ours && (kv.rfind("TIERALLOC_TIERS=", 0) == 0 || kv.rfind("TIERALLOC_POLICY=", 0) == 0 ||
                 kv.rfind("TIERALLOC_SAMPLER=", 0) == 0 || kv.rfind("TIERALLOC_FAST_LIMIT=", 0) == 0)) {
      if (!s.emulated && kv.rfind("TIERALLOC_TIERS=", 0) == 0) s.inherited_env.push_back(kv);
      continue;
    }
    if (ours) s.config[kv.substr(0, kv.find('='))] = kv.substr(kv.find('=') + 1);
    s.inherited_env.push_back(kv);
  }
  return s;
}

std::string mib(uint64_t bytes) { return std::to_string((bytes + kMiB - 1) / kMiB) + "M"; }

// The environment of one run: tiers sized for it (emulated), or a fast-tier limit (real), and the
// engine on for the "tieralloc" placement only. fast_bytes 0: no limit.
std::vector<std::string> run_env(const Setup& s, uint64_t fast_bytes, uint64_t slow_bytes, bool engine) {
  std::vector<std::string> env = s.inherited_env;
  if (s.emulated) env.push_back("TIERALLOC_TIERS=emulate:fast=" + mib(fast_bytes) + ",slow=" + mib(slow_bytes));
  else if (fast_bytes) env.push_back("TIERALLOC_FAST_LIMIT=" + mib(fast_bytes));
  env.push_back(std::string("TIERALLOC_POLICY=") + (engine ? "auto" : "static"));
  if (engine) env.push_back("TIERALLOC_SAMPLER=on");
  return env;
}

json topology_json(const Setup& s, const Params& p) {
  json t = json::parse(numa::format_json(s.topology), nullptr, false);
  json out;
  out["emulated"] = s.emulated;
  if (s.emulated) {
    out["note"] = s.topology.tiers.size() < 2
                      ? "EMULATED: this machine has one memory tier; runs split its DRAM into a fast and a slow tier"
                      : "EMULATED: TIERALLOC_TIERS asks for emulated tiers";
    out["delay_model"] = {{"slow_access_ns", p.slow_delay_ns},
                          {"applies_to", "gups and kv: every access to a slow-tier page waits this long; latency: added "
                                         "to the measured figure of emulated slower tiers; bandwidth: none (both tiers "
                                         "are the same DRAM)"},
                          {"source", "Optane DC PMM idle random read 305 ns vs DRAM 81 ns (Izraelevitz et al. 2019)"}};
  }
  out["machine_tiers"] = t.is_discarded() ? json() : t;
  return out;
}

// ---- running the worker, with progress ----

class Progress {
 public:
  Progress(double total_weight) : total_(total_weight), tty_(isatty(STDERR_FILENO)) {}
  void start(const std::string& label, double weight) {
    label_ = label, weight_ = weight, fraction_ = 0, started_ = Clock::now();
    if (!tty_) fprintf(stderr, "bench: %s ...\n", label.c_str());
    draw();
  }
  void update(double fraction) {
    fraction_ = fraction;
    draw();
  }
  void finish() {
    done_ += weight_;
    double s = std::chrono::duration<double>(Clock::now() - started_).count();
    if (tty_) fprintf(stderr, "\r\033[K");
    else fprintf(stderr, "bench: %s done (%.1f s)\n", label_.c_str(), s);
  }
  // Before printing a table: the bar's line is cleared so the table starts at column 0.
  void clear() {
    if (tty_) fprintf(stderr, "\r\033[K");
  }

 private:
  void draw() {
    if (!tty_) return;
    double f = total_ > 0 ? (done_ + weight_ * fraction_) / total_ : 1;
    int filled = static_cast<int>(f * 30);
    fprintf(stderr, "\r\033[K[%.*s%*s] %3.0f%%  %s", filled, "##############################", 30 - filled, "", 100 * f,
            label_.c_str());
    fflush(stderr);
  }
  double total_, done_ = 0, weight_ = 0, fraction_ = 0;
  bool tty_;
  std::string label_;
  Clock::time_point started_;
};

std::string worker_path() {
  return locate("TIERALLOC_BENCH_WORKER", TIERALLOC_BIN_TO_WORKER, TIERALLOC_BUILD_WORKER);
}

struct Run {
  std::string label;
  std::vector<std::string> argv;  // after the program name
  std::vector<std::string> env;
  double weight;  // expected seconds, for the progress bar
};

// Starts argv[0] (searched on PATH) with env (nullptr: this process's environment) and its stdout
// on stdout_fd (-1: inherited).
pid_t spawn(const std::vector<std::string>& args, const std::vector<std::string>* env, int stdout_fd) {
  std::vector<std::string> a = args, e = env ? *env : std::vector<std::string>{};
  std::vector<char*> argv, envp;
  for (auto& x : a) argv.push_back(x.data());
  argv.push_back(nullptr);
  for (auto& x : e) envp.push_back(x.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stdout_fd, STDOUT_FILENO);
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), env ? envp.data() : environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw BenchError("cannot run " + args[0] + ": " + strerror(rc));
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::string describe_status(int status) {
  return WIFSIGNALED(status) ? std::string("died of signal ") + strsignal(WTERMSIG(status))
                             : "exited with status " + std::to_string(WEXITSTATUS(status));
}

// Spawns the worker for one run and collects its result items; throws when it fails.
std::vector<json> execute(const Run& run, Progress& progress) {
  std::vector<std::string> argv{worker_path()};
  argv.insert(argv.end(), run.argv.begin(), run.argv.end());
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) throw BenchError(std::string("pipe: ") + strerror(errno));
  pid_t pid;
  try {
    pid = spawn(argv, &run.env, out[1]);
  } catch (const BenchError& e) {
    close(out[0]), close(out[1]);
    throw BenchError(std::string(e.what()) + " (the worker is found through TIERALLOC_BENCH_WORKER)");
  }
  close(out[1]);
  progress.start(run.label, run.weight);
  std::vector<json> items;
  std::string pending;
  char buf[65536];
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    for (size_t nl; (nl = pending.find('\n')) != std::string::npos; pending.erase(0, nl + 1)) {
      std::string line = pending.substr(0, nl);
      if (line.rfind("progress ", 0) == 0) {
        progress.update(strtod(line.c_str() + 9, nullptr));
      } else if (line.rfind("result ", 0) == 0) {
        json item = json::parse(line.substr(7), nullptr, false);
        if (item.is_discarded()) throw BenchError(run.label + ": unreadable result line");
        items.push_back(std::move(item));
      }
    }
  }
  close(out[0]);
  int status = wait_for(pid);
  progress.finish();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || items.empty())
    throw BenchError(run.label + ": the worker " + describe_status(status) + (items.empty() ? " without results" : ""));
  return items;
}

// ---- the workloads' runs ----


std::vector<std::string> targets(const Setup& s) {
  std::vector<std::string> t;
  size_t ntiers = s.emulated ? 2 : s.topology.tiers.size();
  for (size_t i = 0; i < ntiers; ++i) t.push_back("tier:" + std::to_string(i));
  for (int n : s.nodes) t.push_back("node:" + std::to_string(n));
  return t;
}

std::vector<Run> latency_runs(const Setup& s, const Params& p) {
  double secs = p.seconds.value_or(p.quick ? 0.2 : 1.0);
  std::vector<Run> runs;
  for (const auto& t : targets(s))
    runs.push_back(Run{"latency " + t,
                       {"latency", "--target", t, "--size", std::to_string(p.latency_size), "--seconds", num(secs),
                        "--delay-ns", num(p.slow_delay_ns)},
                       run_env(s, p.latency_size + kTierSlack, p.latency_size + kTierSlack, false),
                       secs + static_cast<double>(p.latency_size) / (200 * kMiB)});
  return runs;
}

std::vector<Run> bandwidth_runs(const Setup& s, const Params& p) {
  double secs = p.seconds.value_or(p.quick ? 0.05 : 0.3);
  std::vector<Run> runs;
  for (const auto& t : targets(s))
    for (int th = 1; th <= p.threads; ++th)
      runs.push_back(Run{"bandwidth " + t + " " + std::to_string(th) + " thread" + (th > 1 ? "s" : ""),
                         {"bandwidth", "--target", t, "--size", std::to_string(p.bandwidth_size), "--threads",
                          std::to_string(th), "--seconds", num(secs)},
                         run_env(s, 3 * p.bandwidth_size + kTierSlack, 3 * p.bandwidth_size + kTierSlack, false),
                         3 * secs + static_cast<double>(p.bandwidth_size) / (300 * kMiB)});
  return runs;
}

// gups: the fast tier holds a quarter of the working set (all-fast: all of it).
std::vector<Run> gups_runs(const Setup& s, const Params& p, double default_seconds) {
  double secs = p.seconds.value_or(p.quick ? 1.0 : default_seconds);
  std::vector<Run> runs;
  for (const auto& pl : p.placements) {
    uint64_t fast = pl == "all-fast" ? 2 * p.ws + 64 * kMiB : p.ws / 4;
    runs.push_back(Run{"gups " + pl,
                       {"gups", "--placement", pl, "--seconds", num(secs), "--ws", std::to_string(p.ws), "--delay-ns",
                        num(p.slow_delay_ns)},
                       run_env(s, fast, 4 * p.ws + 256 * kMiB, pl == "tieralloc"), secs + 0.5});
  }
  return runs;
}

// kv: the fast tier holds the index, a quarter of the values, and what the worker allocates before
// the values (its table of value pointers).
std::vector<Run> kv_runs(const Setup& s, const Params& p, const std::vector<std::string>& mixes, double default_seconds) {
  double secs = p.seconds.value_or(p.quick ? 1.0 : default_seconds);
  const uint64_t values = p.records * 1024, index = std::bit_ceil(p.records * 2) * 16;
  std::vector<Run> runs;
  for (const auto& mix : mixes)
    for (const auto& pl : p.placements) {
      uint64_t fast = pl == "all-fast" ? 2 * (values + index) + 64 * kMiB : values / 4 + index + p.records * 8;
      runs.push_back(Run{"kv " + mix + " " + pl,
                         {"kv", "--placement", pl, "--mix", mix, "--records", std::to_string(p.records), "--seconds",
                          num(secs), "--delay-ns", num(p.slow_delay_ns), "--cold-share", num(p.cold_share), "--replace",
                          p.replace ? "1" : "0"},
                         run_env(s, fast, 4 * values + 256 * kMiB, pl == "tieralloc"),
                         secs + static_cast<double>(values) / (400 * kMiB)});
    }
  return runs;
}

// ---- tables ----

std::string fmt(const char* f, double v) {
  char b[64];
  snprintf(b, sizeof b, f, v);
  return b;
}

void print_table(const std::string& workload, const std::vector<json>& items, bool emulated) {
  auto d = [](const json& j, const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : 0.0; };
  printf("\n");
  if (workload == "latency") {
    printf("latency (random pointer chase)%s\n", emulated ? "  [EMULATED tiers: slower tiers = measured + delay model]" : "");
    printf("  %-10s %-8s %12s %12s\n", "target", "kind", "latency ns", "measured ns");
    for (const auto& i : items)
      printf("  %-10s %-8s %12.1f %12.1f\n", i.value("target", "").c_str(), i.value("kind", "").c_str(), d(i, "latency_ns"),
             d(i, "measured_ns"));
  } else if (workload == "bandwidth") {
    printf("bandwidth (GB/s)%s\n", emulated ? "  [EMULATED tiers: both are the same DRAM]" : "");
    printf("  %-10s %8s %9s %9s %9s\n", "target", "threads", "read", "write", "triad");
    std::vector<std::pair<std::string, int>> order;  // as measured: tiers, then nodes
    std::map<std::pair<std::string, int>, std::map<std::string, double>> rows;
    for (const auto& i : items) {
      std::pair<std::string, int> k{i.value("target", ""), i.value("threads", 0)};
      if (!rows.count(k)) order.push_back(k);
      rows[k][i.value("op", "")] = d(i, "gb_per_s");
    }
    for (const auto& k : order)
      printf("  %-10s %8d %9.2f %9.2f %9.2f\n", k.first.c_str(), k.second, rows[k]["read"], rows[k]["write"], rows[k]["triad"]);
  } else if (workload == "gups") {
    printf("gups (hot set 10%% of %s taking 90%% of updates, moves halfway; fast tier 25%%)%s\n",
           items.empty() ? "" : mib(items[0].value("ws_bytes", uint64_t{0})).c_str(), emulated ? "  [EMULATED tiers]" : "");
    printf("  %-13s %11s %9s %12s %10s %11s\n", "placement", "Mupdates/s", "fast-hit", "migrated", "recovery", "engine CPU");
    for (const auto& i : items) {
      std::string rec = i["recovery_s"].is_number() ? fmt("%.1f s", d(i, "recovery_s")) : "never";
      printf("  %-13s %11.2f %8.1f%% %8.1f MiB %10s %10.2f%%\n", i.value("placement", "").c_str(), d(i, "updates_per_s") / 1e6,
             100 * d(i, "fast_hit_ratio"), d(i, "migrated_bytes") / kMiB, rec.c_str(), d(i, "engine_cpu_percent"));
    }
  } else if (workload == "kv") {
    printf("kv (YCSB, Zipfian 0.99, 1 KiB values; fast tier: index + 25%% of values)%s\n", emulated ? "  [EMULATED tiers]" : "");
    printf("  %-4s %-13s %11s %9s %9s %9s %12s\n", "mix", "placement", "kops/s", "p50 us", "p99 us", "fast-hit", "migrated");
    for (const auto& i : items)
      printf("  %-4s %-13s %11.1f %9.2f %9.2f %8.1f%% %8.1f MiB\n", i.value("mix", "").c_str(), i.value("placement", "").c_str(),
             d(i, "ops_per_s") / 1e3, d(i, "p50_us"), d(i, "p99_us"), 100 * d(i, "fast_hit_ratio"), d(i, "migrated_bytes") / kMiB);
  } else if (workload == "redis") {
    printf("redis (redis-benchmark, 1 KiB values)%s\n", emulated ? "  [EMULATED tiers: no delay model for a real program]" : "");
    printf("  %-22s %-5s %12s %9s %9s %12s %12s\n", "allocator", "test", "requests/s", "p50 ms", "p99 ms", "fast MiB", "slow MiB");
    for (const auto& i : items)
      printf("  %-22s %-5s %12.0f %9.3f %9.3f %12s %12s\n", i.value("allocator", "").c_str(), i.value("test", "").c_str(),
             d(i, "requests_per_s"), d(i, "p50_ms"), d(i, "p99_ms"),
             i.contains("fast_bytes") ? fmt("%.1f", d(i, "fast_bytes") / kMiB).c_str() : "-",
             i.contains("slow_bytes") ? fmt("%.1f", d(i, "slow_bytes") / kMiB).c_str() : "-");
  }
  fflush(stdout);
}

// ---- redis ----

bool on_path(const std::string& program) {
  const char* path = getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(ss, dir, ':');)
    if (access((dir + "/" + program).c_str(), X_OK) == 0) return true;
  return false;
}

int free_port() {
  // The kernel picks a free port for a socket bound to port 0; redis then takes it over.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int error = errno;
  if (fd >= 0) close(fd);
  if (!ok) throw BenchError(std::string("cannot find a free port: ") + strerror(error));
  return ntohs(a.sin_port);
}


// One line to a redis server and its first reply line ("" when it cannot be reached).
std::string redis_command(int port, const std::string& command) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  std::string reply;
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string line = command + "\r\n";
    if (write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
      char buf[256];
      ssize_t n = read(fd, buf, sizeof buf);
      if (n > 0) reply.assign(buf, static_cast<size_t>(n));
    }
  }
  if (fd >= 0) close(fd);
  return reply;
}

// redis-server with each fast-tier limit (and once with its own jemalloc, the peer), each driven by
// redis-benchmark: SET then GET of 1 KiB values over a keyspace of records keys, pipelined.
std::vector<json> run_redis(const Setup& s, const Params& p, Progress& progress) {
  for (const char* prog : {"redis-server", "redis-benchmark"})
    if (!on_path(prog))
      throw BenchError(std::string("redis: ") + prog + " not found (Debian: apt-get install redis-server redis-tools)");
  const uint64_t requests = p.quick ? 20000 : 200000, keys = std::min<uint64_t>(p.records, requests);
  const uint64_t dataset = keys * 1100;  // values plus redis's own per-key overhead, roughly
  std::vector<json> items;
  std::vector<std::string> configs{"own-jemalloc"};
  for (const auto& l : p.limits) configs.push_back(l);
  // The servers' working directory (it stays empty: no persistence) and the statistics files;
  // removed however the run ends, a failed one included (they throw).
  struct ScratchDir {
    std::string path = (std::filesystem::temp_directory_path() / "tieralloc-bench-redis-XXXXXX").string();
    ScratchDir() {
      if (!mkdtemp(path.data())) throw BenchError("cannot create a directory like " + path + ": " + strerror(errno));
    }
    ~ScratchDir() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  } scratch;
  const std::string& tmp = scratch.path;
  for (const auto& config : configs) {
    const bool preload = config != "own-jemalloc";
    const uint64_t fast = config == "none" || !preload ? 0 : parse_size(config);
    std::vector<std::string> env = run_env(s, fast ? fast : 2 * dataset + 256 * kMiB, 4 * dataset + 512 * kMiB, false);
    const std::string stats = tmp + "/stats-" + config + ".json";
    if (preload) {
      env.push_back("LD_PRELOAD=" + library_path());
      env.push_back("TIERALLOC_STATS=" + stats);
    } else {
      std::erase_if(env, [](const std::string& e) { return e.rfind("TIERALLOC_", 0) == 0; });
    }
    const int port = free_port();
    const std::string label = preload ? "tieralloc fast=" + config : "redis (own jemalloc)";
    progress.start("redis " + label, static_cast<double>(requests) / 20000);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_t server = spawn({"redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", tmp, "--loglevel", "warning"},
                         &env, devnull);
    close(devnull);
    // Stopped however the run ends: a failed one (they throw) must not leave the server running
    // on a directory that ScratchDir removes.
    struct Server {
      pid_t pid;
      int port;
      bool stopped = false;
      int stop() {
        stopped = true;
        redis_command(port, "SHUTDOWN NOSAVE");
        for (int i = 0; i < 100; ++i) {
          int status;
          if (waitpid(pid, &status, WNOHANG) == pid) return status;
          usleep(100000);
        }
        kill(pid, SIGKILL);
        return wait_for(pid);
      }
      ~Server() {
        if (!stopped) stop();
      }
    } running{server, port};
    bool up = false;
    for (int i = 0; i < 100 && !up; ++i) {
      up = redis_command(port, "PING").rfind("+PONG", 0) == 0;
      if (!up) usleep(50000);
    }
    if (!up) {
      int status = running.stop();
      throw BenchError("redis: the server did not answer on port " + std::to_string(port) + " (" + describe_status(status) + ")");
    }
    std::string csv;
    for (const char* test : {"set", "get"}) {
      int out[2];
      if (pipe2(out, O_CLOEXEC) != 0) throw BenchError(std::string("pipe: ") + strerror(errno));
      pid_t bench = spawn({"redis-benchmark", "-h", "127.0.0.1", "-p", std::to_string(port), "-t", test, "-n",
                           std::to_string(requests), "-r", std::to_string(keys), "-d", "1024", "-P", "16", "--csv"},
                          nullptr, out[1]);
      close(out[1]);
      char buf[4096];
      for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) csv.append(buf, static_cast<size_t>(n));
      close(out[0]);
      progress.update(strcmp(test, "set") == 0 ? 0.5 : 1.0);
      if (int status = wait_for(bench); !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        throw BenchError("redis: redis-benchmark " + describe_status(status));
      }
    }
    int status = running.stop();
    progress.finish();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw BenchError("redis: the server " + describe_status(status) + " (" + label + ")");
    // redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    std::stringstream lines(csv);
    std::vector<std::string> header;
    for (std::string line; std::getline(lines, line);) {
      std::vector<std::string> cells;
      std::stringstream ls(line);
      for (std::string c; std::getline(ls, c, ',');) {
        std::erase(c, '"');
        cells.push_back(c);
      }
      if (cells.empty()) continue;
      if (cells[0] == "test") {
        header = cells;
        continue;
      }
      json item{{"allocator", label}, {"fast_limit", preload ? config : "-"}, {"test", cells[0]}, {"requests", requests},
                {"keys", keys}, {"value_bytes", 1024}};
      for (size_t c = 1; c < cells.size() && c < header.size(); ++c) {
        double v = strtod(cells[c].c_str(), nullptr);
        if (header[c] == "rps") item["requests_per_s"] = v;
        else if (header[c] == "p50_latency_ms") item["p50_ms"] = v;
        else if (header[c] == "p99_latency_ms") item["p99_ms"] = v;
      }
      items.push_back(item);
    }
    if (preload) {
      // The library's statistics at the server's exit: where its data was.
      std::ifstream f(stats);
      json st = json::parse(f, nullptr, false);
      if (st.is_discarded() || !st.contains("tiers"))
        throw BenchError("redis: no tieralloc statistics from the server (" + stats + "); was the preload ignored?");
      for (auto& item : items)
        if (item["allocator"] == label) {
          item["fast_bytes"] = st["tiers"][0].value("used_bytes", uint64_t{0});
          uint64_t slow = 0;
          for (size_t t = 1; t < st["tiers"].size(); ++t) slow += st["tiers"][t].value("used_bytes", uint64_t{0});
          item["slow_bytes"] = slow;
        }
    }
  }
  return items;
}

// ---- output ----

std::string now_iso() {
  char b[64];
  time_t t = time(nullptr);
  strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
  return b;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  if (!f) throw BenchError("cannot write " + path);
}

std::string csv_cell(const json& v) {
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  }
  if (v.is_null()) return "";
  return v.dump();
}

std::string to_csv(const json& doc) {
  std::vector<std::string> columns;
  std::set<std::string> seen;
  auto rows = result_rows(doc);
  for (const auto& r : rows)
    for (auto& [k, v] : r.item->items())
      if (v.is_primitive() && seen.insert(k).second) columns.push_back(k);
  std::string out = "workload,item";
  for (const auto& c : columns) out += "," + c;
  out += "\n";
  for (const auto& r : rows) {
    out += r.workload + "," + csv_cell(r.key);
    for (const auto& c : columns) out += "," + (r.item->contains(c) ? csv_cell((*r.item)[c]) : "");
    out += "\n";
  }
  return out;
}

}  // namespace

std::vector<ResultRow> result_rows(const json& doc) {
  static const char* const identity[] = {"target", "op", "threads", "mix", "placement", "allocator", "test"};
  std::vector<ResultRow> rows;
  if (!doc.contains("results") || !doc["results"].is_object()) return rows;
  for (auto& [workload, items] : doc["results"].items()) {
    if (!items.is_array()) continue;
    for (const auto& item : items) {
      std::string key = workload;
      for (const char* f : identity)
        if (item.contains(f)) key += " " + (item[f].is_string() ? item[f].get<std::string>() : item[f].dump());
      rows.push_back(ResultRow{workload, key, &item});
    }
  }
  return rows;
}

int cmd_bench(const std::vector<std::string_view>& args) {
  if (args.empty()) return usage("no workload given");
  if (args[0] == "diff") return cmd_bench_diff({args.begin() + 1, args.end()});
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    fputs(kUsage, stdout);
    return 0;
  }
  if (std::find(std::begin(kWorkloads), std::end(kWorkloads), args[0]) == std::end(kWorkloads))
    return usage("unknown workload '" + std::string(args[0]) + "'");
  try {
    Params p = parse_params(args);
    // Charts travel with their data: the document and the table go beside them unless asked elsewhere.
    if (!p.plot_dir.empty()) {
      std::string d = p.plot_dir;
      while (d.size() > 1 && d.back() == '/') d.pop_back();
      p.plot_dir = d;
      make_dir(d);
      if (p.json_path.empty()) p.json_path = d + "/results.json";
      if (p.csv_path.empty()) p.csv_path = d + "/results.csv";
    }
    check_writable(p.json_path);
    check_writable(p.csv_path);
    Setup s = make_setup();
    const bool compare = p.workload == "compare";

    // The first line says what kind of tiers the figures are about.
    if (s.emulated)
      printf("tieralloc bench %s: EMULATED tiers (%s); slow-tier accesses in gups and kv cost %g ns more (Optane PMM "
             "vs DRAM, Izraelevitz et al. 2019)\n",
             p.workload.c_str(), s.topology.tiers.size() < 2 ? "this machine has one memory tier: its DRAM is split into fast and slow" : "TIERALLOC_TIERS",
             p.slow_delay_ns);
    else
      printf("tieralloc bench %s: real tiers: %zu tiers on %zu NUMA nodes\n", p.workload.c_str(), s.topology.tiers.size(), s.nodes.size());
    if (compare) {
      numa::Topology shown = s.topology;
      numa::add_hwloc_evidence(shown);
      printf("\n%s", numa::format_table(shown).c_str());
    }
    fflush(stdout);

    std::vector<std::pair<std::string, std::vector<Run>>> plan;
    if (p.workload == "latency" || compare) plan.emplace_back("latency", latency_runs(s, p));
    if (p.workload == "bandwidth" || compare) plan.emplace_back("bandwidth", bandwidth_runs(s, p));
    if (p.workload == "kv" || compare) {
      Params kv = p;
      if (compare && !p.given.count("--seconds")) kv.seconds = p.quick ? 1.0 : 4.0;
      plan.emplace_back("kv", kv_runs(s, kv, compare && !p.given.count("--mixes") ? std::vector<std::string>{"B"} : p.mixes, 5));
    }
    if (p.workload == "gups" || compare) {
      // compare: half the working set for longer, so the hot set's move and the recovery both
      // show within its minute.
      Params g = p;
      if (compare && !p.given.count("--ws") && !p.quick) g.ws = 128 * kMiB;
      plan.emplace_back("gups", gups_runs(s, g, compare ? 8 : 10));
    }
    double total = 0;
    for (auto& [w, runs] : plan)
      for (auto& r : runs) total += r.weight;
    if (p.workload == "redis") total += static_cast<double>(p.limits.size() + 1) * (p.quick ? 1 : 10);
    Progress progress(total);

    json results = json::object();
    for (auto& [w, runs] : plan) {
      std::vector<json> items;
      for (auto& r : runs)
        for (auto& item : execute(r, progress)) items.push_back(std::move(item));
      progress.clear();
      print_table(w, items, s.emulated);
      results[w] = items;
    }
    if (p.workload == "redis") {
      auto items = run_redis(s, p, progress);
      progress.clear();
      print_table("redis", items, s.emulated);
      results["redis"] = items;
    }

    json params{{"quick", p.quick}, {"placements", p.placements}, {"mixes", p.mixes}, {"records", p.records},
                {"ws_bytes", p.ws}, {"latency_bytes", p.latency_size}, {"bandwidth_bytes", p.bandwidth_size},
                {"threads", p.threads}, {"limits", p.limits}, {"slow_delay_ns", p.slow_delay_ns},
                {"cold_share", p.cold_share}, {"replace", p.replace}};
    if (p.seconds) params["seconds"] = *p.seconds;
    json doc{{"tieralloc_bench", 1},
             {"workload", p.workload},
             {"tieralloc_version", TIERALLOC_VERSION},
             {"created", now_iso()},
             {"machine", machine_json()},
             {"topology", topology_json(s, p)},
             {"config", s.config},
             {"params", params},
             {"results", results}};
    printf("\n");
    if (!p.json_path.empty()) {
      write_file(p.json_path, doc.dump(2) + "\n");
      printf("results: %s\n", p.json_path.c_str());
    }
    if (!p.csv_path.empty()) {
      write_file(p.csv_path, to_csv(doc));
      printf("table:   %s\n", p.csv_path.c_str());
    }
    if (!p.plot_dir.empty()) {
      auto charts = plot_results(doc, p.plot_dir);
      printf("charts:  %s/ (", p.plot_dir.c_str());
      for (size_t i = 0; i < charts.size(); ++i) printf("%s%s", i ? ", " : "", charts[i].c_str());
      printf(")\n");
    }
    return 0;
  } catch (const UsageError& e) {
    return usage(e.what());
  } catch (const std::exception& e) {
    fprintf(stderr, "\ntieralloc bench: %s\n", e.what());
    return 1;
  }
}

}  // namespace tieralloc::tool
