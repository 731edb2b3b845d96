// The tiering engine on real nodes, inside the guest: a hot set placed on the slow node and kept
// busy by writer threads, and a cold set placed on node 0 and left alone, under a small fast-tier
// budget. The engine (TIERALLOC_POLICY=auto, TIERALLOC_SAMPLER, TIERALLOC_FAST_LIMIT, set by the
// guest case) must move the hot set up and the cold set down; every page is checked with the
// kernel's move_pages status query, and every word written is checked afterwards.
//
// The sampler takes access away from heap pages for short windows, and a system call that
// touches such a page fails with EFAULT. So nothing here hands heap memory to the kernel:
// stdout is unbuffered (printf formats on the stack), kernel_facts.h queries through stack
// buffers, and the writers only store.
//
// Transparent huge pages stay on (the guest's THP setting is "always", and the engine asks for them
// anyway): the engine decides and moves 2 MiB runs, a huge page each, so moving a run moves
// exactly what the engine records. The sets are whole runs, so neither shares a run with the
// other or with the test framework's memory.
#include <sys/mman.h>
#include <time.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/guest/kernel_facts.h"
#include "tests/support/stats_json.h"
#include "tieralloc/tieralloc.h"

namespace {

using tieralloc::guest::kPage;
using tieralloc::guest::page_nodes;
using tieralloc::testing::stats_figure;
using tieralloc::testing::stats_json;

constexpr size_t kRun = 2 << 20;  // the engine's unit of heat and migration
constexpr size_t kMiB = 1 << 20;
constexpr double kDeadlineS = 30;

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

void sleep_ms(long ms) {
  struct timespec t = {0, ms * 1000 * 1000};
  nanosleep(&t, nullptr);
}

uint64_t mix(uint64_t i, uint64_t generation) { return (i + 1) * 0x9e3779b97f4a7c15ull ^ (generation << 40); }

// Where the kernel has each page of [p, p+len). A page the sampler has armed (no access) or that
// is being migrated reads -ENOENT for a moment: such pages are asked again until they answer.
std::vector<int> settled_nodes(const void* p, size_t len) {
  std::vector<int> nodes = page_nodes(p, len);
  for (int tries = 0; tries < 50; ++tries) {
    bool pending = false;
    for (int n : nodes) pending |= n < 0;
    if (!pending) break;
    sleep_ms(5);  // sampling windows last a few milliseconds
    for (size_t i = 0; i < nodes.size(); ++i)
      if (nodes[i] < 0) nodes[i] = page_nodes(static_cast<const char*>(p) + i * kPage, 1).at(0);
  }
  return nodes;
}

struct Census {
  size_t on = 0, missing = 0, elsewhere = 0, pages = 0;
};
// Pages on `node`, pages the kernel never gave a node for, and pages on another node than `node`
// or `other`.
Census census(const void* p, size_t len, int node, int other) {
  Census c;
  for (int n : settled_nodes(p, len)) {
    ++c.pages;
    c.on += n == node;
    c.missing += n < 0;
    c.elsewhere += n >= 0 && n != node && n != other;
  }
  return c;
}

long sysctl_numa_balancing() {
  char buf[16] = {};
  int fd = open("/proc/sys/kernel/numa_balancing", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? std::strtol(buf, nullptr, 10) : -1;
}

// Writers own slices of the hot set and rewrite them in whole passes, word by word, each pass with
// its own generation: after they stop, every word must hold its slice's last generation, so a
// store lost while its page migrated shows.
class Writers {
 public:
  Writers(uint64_t* words, size_t nwords, int n) : words_(words), nwords_(nwords), last_(static_cast<size_t>(n)) {
    for (int w = 0; w < n; ++w) threads_.emplace_back([this, w, n] { run(w, n); });
  }
  ~Writers() { stop(); }
  void stop() {
    stop_.store(true);
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  uint64_t passes() const { return passes_.load(); }
  // Words that do not hold what their writer last wrote.
  size_t wrong_words() const {
    size_t wrong = 0, n = last_.size();
    for (size_t w = 0; w < n; ++w)
      for (size_t i = w * nwords_ / n; i < (w + 1) * nwords_ / n; ++i) wrong += words_[i] != mix(i, last_[w]);
    return wrong;
  }

 private:
  void run(int w, int n) {
    const size_t begin = static_cast<size_t>(w) * nwords_ / static_cast<size_t>(n);
    const size_t end = static_cast<size_t>(w + 1) * nwords_ / static_cast<size_t>(n);
    for (uint64_t g = 1; !stop_.load(std::memory_order_relaxed); ++g) {
      for (size_t i = begin; i < end; ++i) words_[i] = mix(i, g);
      last_[static_cast<size_t>(w)] = g;
      passes_.fetch_add(1, std::memory_order_relaxed);
      sleep_ms(5);  // two vCPUs: writers that never pause would starve the engine's thread
    }
  }
  uint64_t* words_;
  size_t nwords_;
  std::vector<uint64_t> last_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> passes_{0};
  std::vector<std::thread> threads_;
};

class Migration : public ::testing::Test {
 protected:
  void SetUp() override {
    slow_node_ = tieralloc::guest::expected_slow_node();
    ASSERT_GE(slow_node_, 1) << "TIERALLOC_GUEST_SLOW_NODE is not set: run inside the guest";
    tiers_ = tieralloc_tier_count();
    ASSERT_GE(tiers_, 2);
    const std::string doc = stats_json();
    ASSERT_NE(doc.find("\"engine\": \"running\""), std::string::npos)
        << "run with TIERALLOC_POLICY=auto and a heat source (TIERALLOC_SAMPLER, or DAMON on 6.12): " << doc;
    struct tieralloc_tier_info fast;
    ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
    ASSERT_NE(fast.limit_bytes, UINT64_MAX) << "run with TIERALLOC_FAST_LIMIT set";

    // Sizes from the budget and what tier 0 already holds (the test framework's memory, well
    // under a MiB): the cold set as large as still lands on tier 0 beside it (jemalloc commits a
    // page of padding per large block), and the
    // hot set so that tier 0 can hold it once the cold memory has left but not before. The engine
    // then has to shed about as much as the cold set from tier 0.
    const size_t used0 = fast.used_bytes, limit = fast.limit_bytes, high = limit / 100 * 95;
    ASSERT_GT(limit, used0 + 8 * kMiB) << "TIERALLOC_FAST_LIMIT leaves no room for the sets";
    // TIERALLOC_STRICT: a size that does not fit fails instead of spilling to the slow tier.
    cold_bytes_ = std::min<size_t>(16 * kMiB, (limit - used0 - 3 * kMiB) & ~(kRun - 1));
    while (!(cold_ = static_cast<uint64_t*>(tieralloc_mallocx(cold_bytes_, TIERALLOC_TIER(0) | TIERALLOC_STRICT | TIERALLOC_ALIGN(kRun)))))
      ASSERT_GE(cold_bytes_ -= kRun, 4 * kMiB) << "no cold set fits on tier 0";
    ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
    const size_t used1 = fast.used_bytes;
    hot_bytes_ = std::min<size_t>(16 * kMiB, (high - (used1 - cold_bytes_) - 2 * kMiB) & ~(kRun - 1));
    hot_ = static_cast<uint64_t*>(tieralloc_mallocx(hot_bytes_, TIERALLOC_TIER(tiers_ - 1) | TIERALLOC_ALIGN(kRun)));
    ASSERT_NE(hot_, nullptr);

    // The engine runs from the start and may already move a few runs while they are filled.
    for (size_t i = 0; i < cold_bytes_ / 8; ++i) cold_sum_ += cold_[i] = mix(i, 7);
    const Census c = census(cold_, cold_bytes_, 0, slow_node_);
    for (size_t i = 0; i < hot_bytes_ / 8; ++i) hot_[i] = mix(i, 0);
    const Census h = census(hot_, hot_bytes_, slow_node_, 0);
    printf("tier 0: %.1f MiB held at start, budget %.1f MiB; cold set %zu MiB placed: %zu/%zu pages on node 0; "
           "hot set %zu MiB: %zu/%zu pages on node %d\n", static_cast<double>(used0) / kMiB, static_cast<double>(limit) / kMiB,
           cold_bytes_ / kMiB, c.on, c.pages, hot_bytes_ / kMiB, h.on, h.pages, slow_node_);
    ASSERT_GE(c.on * 4, c.pages * 3) << "the cold set starts on node 0";
    ASSERT_GE(h.on * 4, h.pages * 3) << "the hot set starts on the slow node";
  }

  void TearDown() override {
    if (hot_) tieralloc_free(hot_);
    if (cold_) tieralloc_free(cold_);
  }

  uint64_t cold_sum() const {
    uint64_t s = 0;
    for (size_t i = 0; i < cold_bytes_ / 8; ++i) s += cold_[i];
    return s;
  }

  // Writers on the hot set until the kernel reports the hot set all on node 0 and the cold set
  // steady, at least a quarter of it on the slow node, and `done()` agrees, or the deadline
  // passes; `each` runs every round. The engine demotes only what the budget needs, coldest
  // first, and the process's other cold memory (jemalloc's metadata, the test framework's) goes
  // down with the cold set, so how much of the cold set leaves varies (about half of it here).
  // Then, with the writers stopped: every page where it belongs, no store lost, the cold set
  // unchanged, and tieralloc's idea of each page's tier the kernel's.
  template <typename Each, typename Done>
  void expect_engine_moves_both_sets(Each each, Done done) {
    Writers writers(hot_, hot_bytes_ / 8, 2);
    const double start = now_s();
    double elapsed = 0, printed = -1, cold_steady_since = 0;
    size_t last_cold = 0;
    for (;;) {
      each();
      const Census up = census(hot_, hot_bytes_, 0, slow_node_), down = census(cold_, cold_bytes_, slow_node_, 0);
      elapsed = now_s() - start;
      if (down.on != last_cold) last_cold = down.on, cold_steady_since = elapsed;
      if (elapsed - printed >= 1) {
        printed = elapsed;
        struct tieralloc_tier_info fast;
        tieralloc_tier_info(0, &fast);
        printf("  %4.1f s: hot set %4zu/%zu pages on node 0, cold set %4zu/%zu on node %d; tier 0 holds %.1f of %.1f MiB\n",
               elapsed, up.on, up.pages, down.on, down.pages, slow_node_, static_cast<double>(fast.used_bytes) / kMiB,
               static_cast<double>(fast.limit_bytes) / kMiB);
      }
      if (up.on == up.pages && down.on * 4 >= down.pages && elapsed - cold_steady_since > 2.5 && done()) break;
      if (elapsed > kDeadlineS) break;
      sleep_ms(100);
    }
    const uint64_t passes = writers.passes();
    writers.stop();
    const std::string doc = stats_json();
    const Census up = census(hot_, hot_bytes_, 0, slow_node_), down = census(cold_, cold_bytes_, slow_node_, 0);
    printf("after %.1f s: hot set %zu/%zu pages on node 0, cold set %zu/%zu on node %d; %llu writer passes; "
           "engine promoted %llu, demoted %llu bytes\n",
           elapsed, up.on, up.pages, down.on, down.pages, slow_node_, static_cast<unsigned long long>(passes),
           stats_figure(doc, "promoted_bytes"), stats_figure(doc, "demoted_bytes"));
    EXPECT_EQ(up.on, up.pages) << "every page of the hot set on node 0";
    EXPECT_GE(down.on * 4, down.pages) << "at least a quarter of the cold set on the slow node";
    EXPECT_EQ(up.missing + down.missing, 0u) << "pages of tieralloc's sets the kernel has no node for";
    EXPECT_EQ(up.elsewhere + down.elsewhere, 0u) << "pages on a node neither tier uses";
    EXPECT_GT(stats_figure(doc, "promoted_bytes"), 0u) << "the engine, not something else, promoted";
    EXPECT_GT(stats_figure(doc, "demoted_bytes"), 0u) << "the engine, not something else, demoted";
    EXPECT_GT(passes, 20u) << "the writers kept writing during the moves";
    EXPECT_EQ(writers.wrong_words(), 0u) << "a store was lost";
    EXPECT_EQ(cold_sum(), cold_sum_);
    struct tieralloc_tier_info fast;
    ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
    EXPECT_LE(fast.used_bytes, fast.limit_bytes) << "the engine brought tier 0 back within its budget";
    const std::vector<int> cold_nodes = settled_nodes(cold_, cold_bytes_);
    for (size_t i = 0; i < cold_nodes.size(); i += kRun / kPage) {
      const int tier = tieralloc_tier_of(reinterpret_cast<const char*>(cold_) + i * kPage);
      EXPECT_EQ(tier, cold_nodes[i] == 0 ? 0 : tiers_ - 1) << "cold set page " << i << " on node " << cold_nodes[i];
    }
    if (HasFailure()) printf("%s\n", doc.c_str());
  }

  int slow_node_ = -1, tiers_ = 0;
  uint64_t* hot_ = nullptr;
  uint64_t* cold_ = nullptr;
  size_t hot_bytes_ = 0, cold_bytes_ = 0;
  uint64_t cold_sum_ = 0;
};

TEST_F(Migration, EngineMovesTheHotSetUpAndTheColdSetDownWhileWritersWrite) {
  expect_engine_moves_both_sets([] {}, [] { return true; });
}

// With the kernel's NUMA balancing on (the balancing machine): tieralloc reports it, its engine
// still moves both sets (in this mode the kernel balances only memory without a policy, and every
// mapping tieralloc makes has one), and the kernel never takes tieralloc's pages back -- while, in
// the same window, it pulls a control region without a policy from the slow node to node 0.
class Balancing : public Migration {};

TEST_F(Balancing, EngineAndKernelBalancingShareTheMachineWithoutFighting) {
  ASSERT_EQ(sysctl_numa_balancing(), 1) << "run on a machine with numa_balancing=1";
  const std::string doc = stats_json();
  EXPECT_EQ(stats_figure(doc, "numa_balancing"), 1u) << doc;
  EXPECT_NE(doc.find("\"kernel_promotes\": false"), std::string::npos) << doc;

  const size_t control_len = 4 << 20;
  void* map = mmap(nullptr, control_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  auto* control = static_cast<unsigned char*>(map);
  std::memset(control, 1, control_len);
  constexpr size_t kBatch = 256;
  for (size_t off = 0; off < control_len; off += kBatch * kPage) {
    void* pages[kBatch];
    int nodes[kBatch], status[kBatch];
    for (size_t i = 0; i < kBatch; ++i) pages[i] = control + off + i * kPage, nodes[i] = slow_node_;
    ASSERT_EQ(syscall(SYS_move_pages, 0, kBatch, pages, nodes, status, MPOL_MF_MOVE), 0);
  }
  ASSERT_EQ(census(control, control_len, slow_node_, 0).on, control_len / kPage);
  const long migrated_before = tieralloc::guest::vmstat("numa_pages_migrated");

  // Node 0's CPUs use the control region every round; it counts as pulled back at half.
  size_t control_back = 0;
  expect_engine_moves_both_sets(
      [&] {
        for (size_t off = 0; off < control_len; off += kPage) control[off]++;
        control_back = census(control, control_len, 0, slow_node_).on;
      },
      [&] { return control_back * 2 > control_len / kPage; });
  const long migrated = tieralloc::guest::vmstat("numa_pages_migrated") - migrated_before;
  printf("control region without a policy: %zu/%zu pages pulled back to node 0; numa_pages_migrated +%ld\n",
         control_back, control_len / kPage, migrated);
  EXPECT_GT(control_back * 2, control_len / kPage) << "the kernel's balancing did not act in the window";
  EXPECT_GE(migrated, static_cast<long>(control_back));
  munmap(control, control_len);
}

// The kernel's memory tiering mode (numa_balancing=2, set by the guest case around this test):
// tieralloc reports it and its engine leaves promotion to the kernel, demoting only. Nothing is
// lost and no page goes missing. Where the hot set ends is printed, not asserted: on 6.1 the
// kernel's NUMA scanner skips every mapping with a policy that lacks MPOL_F_MOF, which is all of
// tieralloc's, so nobody promotes it (tests/guest/README.md).
class KernelPromotes : public Migration {};

TEST_F(KernelPromotes, EngineOnlyDemotesAndNothingIsLost) {
  ASSERT_EQ(sysctl_numa_balancing(), 2) << "run with numa_balancing=2";
  std::string doc = stats_json();
  EXPECT_EQ(stats_figure(doc, "numa_balancing"), 2u) << doc;
  EXPECT_NE(doc.find("\"kernel_promotes\": true"), std::string::npos) << doc;
  Writers writers(hot_, hot_bytes_ / 8, 2);
  const double start = now_s();
  while (now_s() - start < 5) sleep_ms(250);
  const uint64_t passes = writers.passes();
  writers.stop();
  doc = stats_json();
  const Census up = census(hot_, hot_bytes_, 0, slow_node_), down = census(cold_, cold_bytes_, slow_node_, 0);
  printf("after 5 s in tiering mode: hot set %zu/%zu pages on node 0, cold set %zu/%zu on node %d; engine promoted %llu, "
         "demoted %llu bytes\n", up.on, up.pages, down.on, down.pages, slow_node_, stats_figure(doc, "promoted_bytes"),
         stats_figure(doc, "demoted_bytes"));
  EXPECT_EQ(stats_figure(doc, "promoted_bytes"), 0u) << "the engine promoted although the kernel is to";
  EXPECT_EQ(up.missing + down.missing + up.elsewhere + down.elsewhere, 0u);
  EXPECT_GT(passes, 20u);
  EXPECT_EQ(writers.wrong_words(), 0u) << "a store was lost";
  EXPECT_EQ(cold_sum(), cold_sum_);
}

// DAMON as the heat source (the numa-6.12 machine, whose kernel monitors virtual addresses; the
// sampler off): the kernel's access monitor, not a fault, finds the hot set, and the engine moves
// both sets as it does with the sampler. The case checks after the process exits that its kdamond
// was given back.
//
// DAMON clears a page's accessed bit and looks whether the CPU set it again, which a CPU does only
// when it walks the page table, that is, on a TLB miss (x86 does not flush the TLB when the bit is
// cleared). A real CPU's TLB holds a few thousand entries and loses them constantly to the rest of
// the machine's work; QEMU's software TLB holds millions and loses none, so under TCG a page stays
// "unaccessed" for as long as its translation stays cached, however often it is written. A thread
// stands in for a real TLB's evictions: every 10 ms it maps and unmaps a 1 MiB scratch area, and
// the kernel flushes the process's whole TLB for an unmap of more than 33 pages.
class TlbPressure {
 public:
  TlbPressure()
      : thread_([this] {
          while (!stop_.load()) {
            void* p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
            if (p != MAP_FAILED) munmap(p, 1 << 20);
            sleep_ms(10);
          }
        }) {}
  ~TlbPressure() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class Damon : public Migration {};

TEST_F(Damon, KernelAccessMonitorDrivesTheEngine) {
  std::string doc = stats_json();
  ASSERT_NE(doc.find("\"source\": \"damon\""), std::string::npos) << "DAMON is not the heat source: " << doc;
  EXPECT_GT(stats_figure(doc, "kdamond_pid"), 0u) << doc;
  TlbPressure evictions;
  expect_engine_moves_both_sets([] {}, [] { return true; });
  doc = stats_json();
  EXPECT_GT(stats_figure(doc, "reads"), 0u) << doc;
  const size_t at = doc.find("\"damon\": ");
  printf("%s\n", at == std::string::npos ? doc.c_str() : doc.substr(at).c_str());
  EXPECT_NE(doc.find("\"error\": \"\""), std::string::npos) << "a DAMON read failed: " << doc;
}

}  // namespace

int main(int argc, char** argv) {
  // printf then formats on the stack and writes from there: stdout's buffer would be heap memory.
  setvbuf(stdout, nullptr, _IONBF, 0);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
