// GUPS with a moving hot set: how well each placement keeps the updates on the fast tier.
//
// Working set W in 1 MiB blocks; a hot set of 10% of W takes 90% of the updates; the fast tier's
// budget is 25% of W; halfway through, the hot set moves to another region. Placements compared,
// each in its own process (a placement is a process-wide configuration):
//   all-fast      everything on tier 0 (the fast tier made big enough)
//   all-slow      everything on the slowest tier
//   first-touch   fill the fast tier first, no migration (TIERALLOC_POLICY=static)
//   static-ratio  one block in four on the fast tier, as memkind's static ratio does; no migration
//   tieralloc     fill fast first, then the tiering engine migrates by measured heat
// For each: updates per second, the fraction of updates that hit fast-tier pages (the benchmark
// asks tieralloc_tier_of for every page ten times a second), bytes migrated, the time from the
// hot-set move until 90% of updates hit the fast tier again, and the engine's CPU use.
//
// On emulated tiers every update to a slow-tier page also waits --slow-delay-ns (default 224 ns:
// Optane DC PMM's idle random read latency of 305 ns minus DRAM's 81 ns, Izraelevitz et al. 2019,
// as listed in DESIGN.md), so that placement shows in wall time; real tiers get no delay.
#include <errno.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tieralloc/tieralloc.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

const char* const kModes[] = {"all-fast", "all-slow", "first-touch", "static-ratio", "tieralloc"};

struct Args {
  double seconds = 10;
  uint64_t ws = uint64_t{256} << 20;
  double slow_delay_ns = 224;
  std::vector<std::string> modes = {std::begin(kModes), std::end(kModes)};
  std::string json;
  std::string child;  // internal: run one mode and print its JSON line
};

[[noreturn]] void usage(const char* why) {
  fprintf(stderr,
          "tieralloc_gups: %s\n"
          "usage: tieralloc_gups [--seconds S] [--ws SIZE] [--slow-delay-ns N] [--modes m1,m2,...] [--json FILE]\n"
          "modes: all-fast all-slow first-touch static-ratio tieralloc\n",
          why);
  exit(2);
}

uint64_t parse_size(const char* s) {
  char* end;
  double v = strtod(s, &end);
  uint64_t mult = 1;
  switch (*end) {
    case 'K': case 'k': mult = 1 << 10, ++end; break;
    case 'M': case 'm': mult = 1 << 20, ++end; break;
    case 'G': case 'g': mult = 1 << 30, ++end; break;
    default: break;
  }
  if (*end || v <= 0) usage("bad size");
  return static_cast<uint64_t>(v * static_cast<double>(mult));
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) usage(("missing value for " + k).c_str());
      return argv[++i];
    };
    if (k == "--seconds") {
      a.seconds = atof(val());
      if (a.seconds < 0.5) usage("--seconds must be at least 0.5");
    } else if (k == "--ws") {
      a.ws = parse_size(val());
      if (a.ws < (uint64_t{8} << 20)) usage("--ws must be at least 8M");
    } else if (k == "--slow-delay-ns") {
      a.slow_delay_ns = atof(val());
    } else if (k == "--modes") {
      a.modes.clear();
      std::string s = val();
      for (size_t p = 0; p <= s.size();) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        std::string m = s.substr(p, q - p);
        if (std::find(std::begin(kModes), std::end(kModes), m) == std::end(kModes)) usage(("unknown mode " + m).c_str());
        a.modes.push_back(m);
        p = q + 1;
      }
    } else if (k == "--json") {
      a.json = val();
    } else if (k == "--child") {
      a.child = val();
    } else {
      usage(("unknown option " + k).c_str());
    }
  }
  return a;
}

// A busy wait of about ns nanoseconds (steady_clock reads, no syscall).
void spin_ns(double ns) {
  auto until = Clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(ns));
  while (Clock::now() < until) {
  }
}

uint64_t stats_field(const char* doc, const char* name) {
  std::string key = std::string("\"") + name + "\": ";
  const char* p = strstr(doc, key.c_str());
  return p ? strtoull(p + key.size(), nullptr, 10) : 0;
}

double stats_double(const char* doc, const char* name) {
  std::string key = std::string("\"") + name + "\": ";
  const char* p = strstr(doc, key.c_str());
  return p ? strtod(p + key.size(), nullptr) : 0;
}

struct Sample {
  double t, hit, mups, migrated_mb;
};

int run_child(const Args& a) {
  const std::string mode = a.child;
  const int ntiers = tieralloc_tier_count();
  struct tieralloc_tier_info fast;
  tieralloc_tier_info(0, &fast);
  const bool emulated = fast.emulated;
  const int slow_tier = ntiers - 1;
  constexpr size_t kBlock = size_t{1} << 20, kPage = 4096;
  const size_t nblocks = a.ws / kBlock, pages_per_block = kBlock / kPage, npages = nblocks * pages_per_block;
  std::vector<char*> blocks(nblocks);
  for (size_t b = 0; b < nblocks; ++b) {
    int flags = 0;
    if (mode == "all-fast") flags = TIERALLOC_TIER(0);
    else if (mode == "all-slow") flags = TIERALLOC_TIER(slow_tier);
    else if (mode == "static-ratio") flags = TIERALLOC_TIER(b % 4 == 0 ? 0 : slow_tier);
    blocks[b] = static_cast<char*>(tieralloc_mallocx(kBlock, flags | TIERALLOC_ZERO));
    if (!blocks[b]) {
      fprintf(stderr, "tieralloc_gups: allocation of block %zu failed: %s\n", b, strerror(errno));
      return 1;
    }
  }
  // Per page: 1 when on the fast tier; refreshed by the monitor ten times a second.
  std::vector<std::atomic<uint8_t>> fast_page(npages);
  auto refresh = [&] {
    size_t on_fast = 0;
    for (size_t p = 0; p < npages; ++p) {
      int t = tieralloc_tier_of(blocks[p / pages_per_block] + (p % pages_per_block) * kPage);
      fast_page[p].store(t == 0, std::memory_order_relaxed);
      on_fast += t == 0;
    }
    return on_fast;
  };
  refresh();

  const size_t hot_pages = npages / 10;
  std::atomic<size_t> hot_start{npages * 4 / 10};  // moves to 80% halfway through
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> updates{0}, fast_hits{0};
  const double delay = emulated ? a.slow_delay_ns : 0;
  std::thread worker([&] {
    uint64_t x = 0x9E3779B97F4A7C15ull, local = 0, local_fast = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      for (int i = 0; i < 4096; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t page = (x % 10 < 9) ? hot_start.load(std::memory_order_relaxed) + (x >> 8) % hot_pages : (x >> 8) % npages;
        uint64_t* word = reinterpret_cast<uint64_t*>(blocks[page / pages_per_block] + (page % pages_per_block) * kPage) +
                         ((x >> 40) % (kPage / 8));
        *word += 1;
        if (fast_page[page].load(std::memory_order_relaxed)) ++local_fast;
        else if (delay > 0) spin_ns(delay);
        ++local;
      }
      updates.store(local, std::memory_order_relaxed);
      fast_hits.store(local_fast, std::memory_order_relaxed);
    }
  });

  std::vector<Sample> timeline;
  char doc[8192];
  auto t0 = Clock::now();
  uint64_t last_u = 0, last_f = 0;
  bool moved = false;
  double move_t = a.seconds / 2, recovered_t = -1;
  auto migrated_mb = [&] {
    tieralloc_stats_json(doc, sizeof doc);
    return static_cast<double>(stats_field(doc, "promoted_bytes") + stats_field(doc, "demoted_bytes")) / (1 << 20);
  };
  double migrated_at_move = 0;
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    double t = std::chrono::duration<double>(Clock::now() - t0).count();
    refresh();
    uint64_t u = updates.load(), f = fast_hits.load();
    double hit = u > last_u ? static_cast<double>(f - last_f) / static_cast<double>(u - last_u) : 0;
    double dt = timeline.empty() ? t : t - timeline.back().t;
    timeline.push_back(Sample{t, hit, static_cast<double>(u - last_u) / dt / 1e6, migrated_mb()});
    last_u = u, last_f = f;
    if (moved && recovered_t < 0 && hit >= 0.9) recovered_t = t - move_t;
    if (!moved && t >= move_t) {
      hot_start = npages * 8 / 10;
      moved = true;
      move_t = t;
      migrated_at_move = timeline.back().migrated_mb;
    }
    if (t >= a.seconds) break;
  }
  stop = true;
  worker.join();
  double total_t = std::chrono::duration<double>(Clock::now() - t0).count();
  double hits = updates ? static_cast<double>(fast_hits) / static_cast<double>(updates) : 0;
  tieralloc_stats_json(doc, sizeof doc);
  double engine_cpu = stats_double(doc, "engine_cpu_percent");
  // One JSON line on stdout for the parent.
  printf("{\"mode\": \"%s\", \"emulated\": %s, \"slow_delay_ns\": %.0f, \"ws_bytes\": %" PRIu64
         ", \"fast_budget_bytes\": %" PRIu64 ", \"seconds\": %.2f, \"updates_per_s\": %.0f, \"fast_hit_ratio\": %.4f, "
         "\"migrated_bytes\": %.0f, \"migrated_after_move_bytes\": %.0f, \"recovery_s\": %s, \"engine_cpu_percent\": %.3f, "
         "\"timeline\": [",
         mode.c_str(), emulated ? "true" : "false", delay, a.ws, fast.limit_bytes, total_t,
         static_cast<double>(updates) / total_t, hits, timeline.back().migrated_mb * (1 << 20),
         (timeline.back().migrated_mb - migrated_at_move) * (1 << 20),
         recovered_t < 0 ? "null" : std::to_string(recovered_t).c_str(), engine_cpu);
  for (size_t i = 0; i < timeline.size(); ++i)
    printf("%s[%.2f, %.4f, %.3f, %.2f]", i ? ", " : "", timeline[i].t, timeline[i].hit, timeline[i].mups,
           timeline[i].migrated_mb);
  printf("]}\n");
  for (char* b : blocks) tieralloc_free(b);
  return 0;
}

// Runs this program again for one mode, with the environment that mode needs; returns its line.
std::string run_mode(const char* self, const Args& a, const std::string& mode, bool real_tiers) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (strncmp(*e, "TIERALLOC_", 10) != 0) env.push_back(*e);
  const uint64_t mb = a.ws >> 20;
  uint64_t fast_mb = mode == "all-fast" ? 2 * mb + 64 : mb / 4;
  if (real_tiers) env.push_back("TIERALLOC_FAST_LIMIT=" + std::to_string(fast_mb) + "M");
  else env.push_back("TIERALLOC_TIERS=emulate:fast=" + std::to_string(fast_mb) + "M,slow=" + std::to_string(4 * mb + 256) + "M");
  env.push_back(std::string("TIERALLOC_POLICY=") + (mode == "tieralloc" ? "auto" : "static"));
  if (mode == "tieralloc") env.push_back("TIERALLOC_SAMPLER=on");
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string secs = std::to_string(a.seconds), ws = std::to_string(a.ws >> 20) + "M", delay = std::to_string(a.slow_delay_ns);
  const char* argv[] = {self, "--child", mode.c_str(), "--seconds", secs.c_str(), "--ws", ws.c_str(), "--slow-delay-ns", delay.c_str(), nullptr};
  int pipefd[2];
  if (pipe(pipefd) != 0) return "";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, pipefd[0]);
  pid_t pid;
  int rc = posix_spawn(&pid, self, &fa, nullptr, const_cast<char**>(argv), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(pipefd[1]);
  if (rc != 0) {
    close(pipefd[0]);
    return "";
  }
  std::string out;
  char buf[65536];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return "";
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  if (!a.child.empty()) return run_child(a);
  // Real tiers when the machine has them; an emulated fast/slow split otherwise.
  bool real_tiers = tieralloc_tier_count() >= 2;
  printf("tieralloc_gups: W=%" PRIu64 " MiB, hot set 10%% of W taking 90%% of updates, fast budget 25%% of W, hot set "
         "moves at %.1f s; %s\n",
         a.ws >> 20, a.seconds / 2,
         real_tiers ? "real tiers" : "EMULATED tiers (one node), slow-tier updates delayed by --slow-delay-ns");
  printf("%-13s %12s %9s %12s %11s %11s\n", "placement", "Mupdates/s", "fast-hit", "migrated", "recovery", "engine CPU");
  std::string json = "{\"benchmark\": \"gups\", \"results\": [";
  bool ok = true;
  for (size_t i = 0; i < a.modes.size(); ++i) {
    std::string line = run_mode("/proc/self/exe", a, a.modes[i], real_tiers);
    if (line.empty()) {
      fprintf(stderr, "tieralloc_gups: mode %s failed\n", a.modes[i].c_str());
      ok = false;
      continue;
    }
    json += (i ? ", " : "") + line;
    const char* d = line.c_str();
    double rec = stats_double(d, "recovery_s");
    bool has_rec = strstr(d, "\"recovery_s\": null") == nullptr;
    char recs[32];
    snprintf(recs, sizeof recs, has_rec ? "%.1f s" : "never", rec);
    printf("%-13s %12.2f %8.1f%% %9.1f MiB %11s %10.2f%%\n", a.modes[i].c_str(), stats_double(d, "updates_per_s") / 1e6,
           100 * stats_double(d, "fast_hit_ratio"), stats_double(d, "migrated_bytes") / (1 << 20), recs,
           stats_double(d, "engine_cpu_percent"));
    fflush(stdout);
  }
  json += "]}\n";
  if (!a.json.empty()) {
    FILE* f = fopen(a.json.c_str(), "w");
    if (!f || fputs(json.c_str(), f) < 0 || fclose(f) != 0) {
      fprintf(stderr, "tieralloc_gups: cannot write %s: %s\n", a.json.c_str(), strerror(errno));
      return 2;
    }
  }
  return ok ? 0 : 1;
}
