// The C and C++ API, linked (not preloaded). ctest runs this binary twice: on the machine's real
// topology, and with TIERALLOC_TIERS=emulate:fast=64M,slow=1G, where budgets and spill show.
#include <errno.h>
#include <numaif.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <cstring>
#include <memory_resource>
#include <string>
#include <unordered_map>
#include <vector>

#include "tieralloc/tieralloc.h"
#include "tieralloc/tieralloc.hpp"
#include "tests/support/stats_json.h"

namespace {

using tieralloc::testing::stats_json;

// Under ASan or TSan the sanitizer's malloc comes first in the process; tieralloc then serves only
// its API.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kMallocIsTieralloc = false;
#else
constexpr bool kMallocIsTieralloc = true;
#endif

bool emulated() {
  struct tieralloc_tier_info info;
  return tieralloc_tier_info(0, &info) == 0 && info.emulated;
}

int last_tier() { return tieralloc_tier_count() - 1; }

// The node the kernel says holds the page at p (after it is touched).
int kernel_node(void* p) {
  int node = -1;
  long rc = syscall(SYS_get_mempolicy, &node, nullptr, 0, p, MPOL_F_NODE | MPOL_F_ADDR);
  return rc == 0 ? node : -1;
}

bool tier_has_node(int tier, int node) {
  struct tieralloc_tier_info info;
  if (tieralloc_tier_info(tier, &info) != 0) return false;
  for (int i = 0; i < info.nnodes; ++i)
    if (info.nodes[i] == node) return true;
  return false;
}

TEST(Placement, EachTierGetsItsMemory) {
  ASSERT_GE(tieralloc_tier_count(), 1);
  for (int t = 0; t < tieralloc_tier_count(); ++t) {
    for (size_t size : {size_t{64}, size_t{5000}, size_t{300000}, size_t{8} << 20}) {
      char* p = static_cast<char*>(tieralloc_mallocx(size, TIERALLOC_TIER(t)));
      ASSERT_NE(p, nullptr) << "tier " << t << " size " << size;
      std::memset(p, 0x5a, size);
      EXPECT_EQ(tieralloc_tier_of(p), t) << size;
      EXPECT_EQ(tieralloc_tier_of(p + size - 1), t) << size;
      int node = kernel_node(p);
      EXPECT_TRUE(tier_has_node(t, node)) << "page on node " << node << ", tier " << t;
      tieralloc_free(p);
    }
  }
}

TEST(Placement, PlainMallocIsTieralloc) {
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  // Linking libtieralloc makes it the process allocator: malloc'd memory is in the page map.
  void* p = malloc(100);
  ASSERT_NE(p, nullptr);
  EXPECT_GE(tieralloc_usable_size(p), 100u);
  EXPECT_EQ(tieralloc_tier_of(p), 0);
  free(p);
  std::string* s = new std::string(1000, 'x');
  EXPECT_GE(tieralloc_usable_size(s->data()), 1000u);
  delete s;
}

extern "C" int mallctl(const char*, void*, size_t*, void*, size_t);

TEST(Placement, JemallocRunsWithTierallocsConfiguration) {
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  size_t tcache_max = 0, sz = sizeof tcache_max;
  ASSERT_EQ(mallctl("opt.tcache_max", &tcache_max, &sz, nullptr, 0), 0);
  EXPECT_EQ(tcache_max, size_t{1} << 20);
  uint64_t gc_incr = 0;
  sz = sizeof gc_incr;
  ASSERT_EQ(mallctl("opt.tcache_gc_incr_bytes", &gc_incr, &sz, nullptr, 0), 0);
  EXPECT_EQ(gc_incr, uint64_t{4} << 20);
}

uint64_t jemalloc_allocated() {
  uint64_t epoch = 1;
  size_t sz = sizeof epoch;
  mallctl("epoch", &epoch, &sz, &epoch, sz);
  size_t allocated = 0;
  sz = sizeof allocated;
  return mallctl("stats.allocated", &allocated, &sz, nullptr, 0) == 0 ? allocated : 0;
}

// Plain free keeps a thread's large blocks for its next plain malloc of the size (alloc/large_cache.h).
// A block of a tier's arena must not be one of them: plain malloc would hand the slow tier's
// memory to a default allocation.
TEST(LargeBlocks, PlainFreeOfATierBlockNeverServesPlainMalloc) {
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  if (tieralloc_tier_count() < 2) GTEST_SKIP() << "needs two tiers: run by the emulated instance";
  constexpr size_t kSize = 64 << 10;
  void* cold = tieralloc_mallocx(kSize, TIERALLOC_TIER(last_tier()));
  ASSERT_NE(cold, nullptr);
  std::memset(cold, 1, kSize);
  free(cold);
  void* p = malloc(kSize);
  ASSERT_NE(p, nullptr);
  std::memset(p, 2, kSize);
  EXPECT_NE(p, cold);
  EXPECT_EQ(tieralloc_tier_of(p), 0);
  free(p);
}

// The blocks a thread keeps go back to jemalloc when it exits; otherwise every thread that ever
// freed a large block would leak up to the cache's size.
TEST(LargeBlocks, AThreadGivesItsBlocksBackWhenItExits) {
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  constexpr size_t kSize = 1 << 20;
  const uint64_t before = jemalloc_allocated();
  std::thread([] {
    for (size_t size : {kSize, kSize / 2, kSize / 4}) {
      void* p = malloc(size);
      ASSERT_NE(p, nullptr);
      std::memset(p, 1, size);
      free(p);
    }
  }).join();
  const uint64_t after = jemalloc_allocated();
  EXPECT_LT(after, before + kSize / 2) << "an exited thread's freed blocks are still allocated";
}

// A block kept by the cache is still jemalloc's to lose: freeing it twice must not make two owners.
TEST(LargeBlocks, DoubleFreeIsCaughtNotHandedOutTwice) {
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        void* volatile p = malloc(100 << 10);
        free(p);
        free(p);
        void* a = malloc(100 << 10);
        void* b = malloc(100 << 10);
        if (a == b) fprintf(stderr, "handed out twice\n");
      },
      "double free");
}

int g_new_handler_calls = 0;
void count_then_give_up() {
  ++g_new_handler_calls;
  std::set_new_handler(nullptr);
}

// operator new is tieralloc's (alloc/new.cc): a failed allocation calls the installed new-handler
// and tries again, and throws std::bad_alloc (nothrow: returns nullptr) once there is none.
TEST(Cxx, OperatorNewFollowsTheNewHandlerProtocol) {
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes operator new in this build";
  volatile size_t impossible = size_t{1} << 62;
  g_new_handler_calls = 0;
  std::set_new_handler(count_then_give_up);
  EXPECT_THROW((void)::operator new(impossible), std::bad_alloc);
  EXPECT_EQ(g_new_handler_calls, 1);
  g_new_handler_calls = 0;
  std::set_new_handler(count_then_give_up);
  EXPECT_EQ(::operator new(impossible, std::nothrow), nullptr);
  EXPECT_EQ(g_new_handler_calls, 1);
  std::set_new_handler(nullptr);
}

TEST(Placement, HintsPickFastestAndSlowest) {
  void* hot = tieralloc_mallocx(4096, TIERALLOC_HOT);
  void* cold = tieralloc_mallocx(4096, TIERALLOC_COLD);
  ASSERT_TRUE(hot && cold);
  std::memset(hot, 1, 4096);
  std::memset(cold, 1, 4096);
  EXPECT_EQ(tieralloc_tier_of(hot), 0);
  EXPECT_EQ(tieralloc_tier_of(cold), last_tier());
  tieralloc_free(hot);
  tieralloc_free(cold);
}

TEST(Budget, DefaultAllocationsSpillPastTheFastBudget) {
  if (!emulated()) GTEST_SKIP() << "budget spill is exercised by the emulated run of this binary";
  if (!kMallocIsTieralloc) GTEST_SKIP() << "a sanitizer interposes malloc in this build";
  struct tieralloc_tier_info fast;
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  ASSERT_NE(fast.limit_bytes, UINT64_MAX);
  std::vector<void*> blocks;
  int first_slow = -1;
  // Twice the budget, in 1 MiB blocks through plain malloc.
  for (size_t i = 0; i < 2 * fast.limit_bytes / (1 << 20); ++i) {
    void* p = malloc(1 << 20);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, 1 << 20);
    if (tieralloc_tier_of(p) == 1 && first_slow < 0) first_slow = static_cast<int>(i);
    blocks.push_back(p);
  }
  ASSERT_GT(first_slow, 0) << "nothing spilled to tier 1";
  for (int i = 0; i < first_slow; ++i) EXPECT_EQ(tieralloc_tier_of(blocks[static_cast<size_t>(i)]), 0);
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  EXPECT_LE(fast.used_bytes, fast.limit_bytes);
  struct tieralloc_tier_info slow;
  ASSERT_EQ(tieralloc_tier_info(1, &slow), 0);
  EXPECT_GT(slow.used_bytes, 0u);
  EXPECT_NE(stats_json().find("\"fallbacks\": "), std::string::npos);
  for (void* p : blocks) free(p);
}

TEST(Budget, StrictFailsWithEnomemAndNonStrictFallsBack) {
  if (!emulated()) GTEST_SKIP() << "needs a bounded tier: run by the emulated instance";
  std::vector<void*> blocks;
  void* p;
  errno = 0;
  while ((p = tieralloc_mallocx(4 << 20, TIERALLOC_TIER(0) | TIERALLOC_STRICT)) != nullptr) {
    blocks.push_back(p);
    ASSERT_LT(blocks.size(), 1000u) << "strict tier 0 never filled";
  }
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_FALSE(blocks.empty());
  // It failed because the tier is full, not because of address space jemalloc keeps in reserve
  // or cached memory the process freed: what the tier holds leaves no room for one more block.
  struct tieralloc_tier_info fast;
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  EXPECT_GT(fast.used_bytes + (4 << 20), fast.limit_bytes) << "strict request refused with room left on the tier";
  void* q = tieralloc_mallocx(4 << 20, TIERALLOC_TIER(0));
  ASSERT_NE(q, nullptr);
  std::memset(q, 2, 4 << 20);
  EXPECT_EQ(tieralloc_tier_of(q), 1) << "non-strict request should fall back to tier 1";
  tieralloc_free(q);
  for (void* b : blocks) tieralloc_free(b);
}

// A tier's usage is the memory committed on it, not address space jemalloc maps ahead or keeps
// after a free, so a tier freed of its blocks has its room back, and one strict block can take it.
TEST(Budget, FreedTierHasItsRoomBack) {
  if (!emulated()) GTEST_SKIP() << "needs a bounded tier: run by the emulated instance";
  struct tieralloc_tier_info fast;
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  std::vector<void*> blocks;
  for (size_t i = 0; i < fast.limit_bytes / 2 / (3 << 20); ++i) {
    blocks.push_back(tieralloc_mallocx(3 << 20, TIERALLOC_TIER(0) | TIERALLOC_STRICT));
    ASSERT_NE(blocks.back(), nullptr);
    std::memset(blocks.back(), 1, 3 << 20);
  }
  for (void* b : blocks) tieralloc_free(b);
  // What jemalloc caches after those frees still counts (it holds the memory) until a strict
  // request that needs it makes jemalloc give it back, as this impossible one does.
  ASSERT_EQ(tieralloc_mallocx(size_t{1} << 40, TIERALLOC_TIER(0) | TIERALLOC_STRICT), nullptr);
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  EXPECT_LT(fast.used_bytes, size_t{4} << 20) << "the tier still counts memory freed back to it";
  // Room left, less the slack jemalloc may add: a page of padding, and one size class step
  // (classes are four per doubling, so at most 25%) for a request that is not a class itself.
  const size_t room = fast.limit_bytes - fast.used_bytes;
  const size_t request = room / 5 * 4 - (64 << 10);
  void* block = tieralloc_mallocx(request, TIERALLOC_TIER(0) | TIERALLOC_STRICT);
  ASSERT_NE(block, nullptr) << "strict " << request << " bytes refused with " << room << " bytes of room";
  std::memset(block, 3, request);
  EXPECT_EQ(tieralloc_tier_of(block), 0);
  EXPECT_EQ(tieralloc_tier_of(static_cast<char*>(block) + request - 1), 0);
  ASSERT_EQ(tieralloc_tier_info(0, &fast), 0);
  EXPECT_LE(fast.used_bytes, fast.limit_bytes);
  tieralloc_free(block);
}

TEST(Flags, AlignmentAndZeroing) {
  for (size_t align : {size_t{16}, size_t{64}, size_t{4096}, size_t{1} << 16, size_t{1} << 21}) {
    void* p = tieralloc_mallocx(100, TIERALLOC_ALIGN(align));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % align, 0u) << align;
    tieralloc_free(p);
  }
  // Dirty a block, free it, and ask for zeroed memory of the same size class: it must be zero.
  for (int round = 0; round < 50; ++round) {
    unsigned char* d = static_cast<unsigned char*>(tieralloc_mallocx(512, TIERALLOC_TIER(0)));
    std::memset(d, 0xff, 512);
    tieralloc_free(d);
    unsigned char* z = static_cast<unsigned char*>(tieralloc_mallocx(512, TIERALLOC_TIER(0) | TIERALLOC_ZERO));
    ASSERT_NE(z, nullptr);
    for (int i = 0; i < 512; ++i) ASSERT_EQ(z[i], 0) << i;
    tieralloc_free(z);
  }
}

TEST(Realloc, MovesAcrossTiersAndKeepsContents) {
  int slow = last_tier();
  auto* p = static_cast<unsigned char*>(tieralloc_mallocx(10000, TIERALLOC_TIER(0)));
  ASSERT_NE(p, nullptr);
  for (int i = 0; i < 10000; ++i) p[i] = static_cast<unsigned char>(i * 7);
  auto* q = static_cast<unsigned char*>(tieralloc_reallocx(p, 20000, TIERALLOC_TIER(slow)));
  ASSERT_NE(q, nullptr);
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(q[i], static_cast<unsigned char>(i * 7)) << i;
  std::memset(q + 10000, 1, 10000);
  EXPECT_EQ(tieralloc_tier_of(q), slow);
  // Shrinking in place keeps contents too.
  auto* r = static_cast<unsigned char*>(tieralloc_reallocx(q, 100, TIERALLOC_TIER(slow)));
  ASSERT_NE(r, nullptr);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(r[i], static_cast<unsigned char>(i * 7));
  tieralloc_free(r);
  void* fresh = tieralloc_reallocx(nullptr, 50, 0);
  EXPECT_NE(fresh, nullptr);
  tieralloc_free(fresh);
}

TEST(UsableSize, AtLeastTheRequest) {
  for (size_t n : {size_t{1}, size_t{17}, size_t{4097}, size_t{1} << 20}) {
    void* p = tieralloc_mallocx(n, 0);
    EXPECT_GE(tieralloc_usable_size(p), n);
    tieralloc_free(p);
  }
  void* z = tieralloc_mallocx(0, 0);
  EXPECT_NE(z, nullptr);
  tieralloc_free(z);
}

TEST(Move, PagesChangeTierAndKeepContents) {
  int slow = last_tier();
  size_t len = 64 * 4096;
  auto* p = static_cast<unsigned char*>(tieralloc_mallocx(len, TIERALLOC_TIER(0) | TIERALLOC_ALIGN(4096)));
  ASSERT_NE(p, nullptr);
  for (size_t i = 0; i < len; ++i) p[i] = static_cast<unsigned char>(i % 251);
  struct tieralloc_tier_info before0, before_slow;
  tieralloc_tier_info(0, &before0);
  tieralloc_tier_info(slow, &before_slow);
  ASSERT_EQ(tieralloc_move(p, len, slow), 0) << strerror(errno);
  EXPECT_EQ(tieralloc_tier_of(p), slow);
  EXPECT_EQ(tieralloc_tier_of(p + len - 1), slow);
  EXPECT_TRUE(tier_has_node(slow, kernel_node(p)));
  for (size_t i = 0; i < len; ++i) ASSERT_EQ(p[i], static_cast<unsigned char>(i % 251)) << i;
  if (slow != 0) {
    struct tieralloc_tier_info after0;
    tieralloc_tier_info(0, &after0);
    EXPECT_LE(after0.used_bytes + len, before0.used_bytes + (64u << 20));  // moved bytes left tier 0
  }
  ASSERT_EQ(tieralloc_move(p, len, 0), 0);
  EXPECT_EQ(tieralloc_tier_of(p), 0);
  EXPECT_NE(stats_json().find("\"moves\": {\"calls\": "), std::string::npos);
  tieralloc_free(p);
}

TEST(Stats, SnprintfSemantics) {
  std::string full = stats_json();
  ASSERT_GT(full.size(), 20u);
  EXPECT_EQ(full.front(), '{');
  EXPECT_EQ(full.back(), '}');
  EXPECT_NE(full.find("\"used_bytes\""), std::string::npos);
  EXPECT_NE(full.find("\"limit_bytes\""), std::string::npos);
  char small[10];
  int n = tieralloc_stats_json(small, sizeof small);
  EXPECT_GE(n, static_cast<int>(full.size()) - 64);  // the figures move between calls
  EXPECT_EQ(std::strlen(small), 9u);
  EXPECT_EQ(std::string(small), full.substr(0, 9));
}

TEST(Errors, EveryMisuseGivesAnErrorCode) {
  int n = tieralloc_tier_count();
  struct Case {
    int flags;
    const char* what;
  } cases[] = {
      {TIERALLOC_TIER(n), "tier == count"},
      {TIERALLOC_TIER(1000), "tier far out of range"},
      {TIERALLOC_TIER(-1), "negative tier"},
      {TIERALLOC_ALIGN(3), "alignment not a power of two"},
      {TIERALLOC_ALIGN(0), "alignment zero"},
      {TIERALLOC_HOT | TIERALLOC_COLD, "hot and cold"},
      {TIERALLOC_STRICT, "strict without a tier"},
      {1 << 12, "unknown flag bit"},
      {static_cast<int>(0x80000000u), "sign bit"},
  };
  for (const auto& c : cases) {
    errno = 0;
    EXPECT_EQ(tieralloc_mallocx(16, c.flags), nullptr) << c.what;
    EXPECT_EQ(errno, EINVAL) << c.what;
    void* p = tieralloc_mallocx(16, 0);
    errno = 0;
    EXPECT_EQ(tieralloc_reallocx(p, 32, c.flags), nullptr) << c.what;
    EXPECT_EQ(errno, EINVAL) << c.what;
    tieralloc_free(p);
  }
  errno = 0;
  EXPECT_EQ(tieralloc_mallocx(SIZE_MAX - 4096, 0), nullptr);
  EXPECT_EQ(errno, ENOMEM);

  tieralloc_free(nullptr);  // no-op
  int on_stack = 0;
  errno = 0;
  tieralloc_free(&on_stack);  // reported, not freed
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(tieralloc_reallocx(&on_stack, 64, 0), nullptr);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(tieralloc_usable_size(nullptr), 0u);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(tieralloc_usable_size(&on_stack), 0u);

  errno = 0;
  EXPECT_EQ(tieralloc_tier_of(nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(tieralloc_tier_of(reinterpret_cast<void*>(4096)), -1);  // not mapped
  EXPECT_TRUE(errno == EFAULT || errno == ENOENT) << errno;

  void* p = tieralloc_mallocx(4096, 0);
  errno = 0;
  EXPECT_EQ(tieralloc_move(p, 4096, n), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(tieralloc_move(p, 4096, -1), -1);
  EXPECT_EQ(tieralloc_move(nullptr, 4096, 0), -1);
  EXPECT_EQ(tieralloc_move(p, 0, 0), 0);
  tieralloc_free(p);

  struct tieralloc_tier_info info;
  errno = 0;
  EXPECT_EQ(tieralloc_tier_info(n, &info), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(tieralloc_tier_info(0, nullptr), -1);
  errno = 0;
  EXPECT_EQ(tieralloc_stats_json(nullptr, 5), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST(Cxx, PmrUnorderedMapLivesOnTheSlowTier) {
  int slow = last_tier();
  tieralloc::TierResource* res = tieralloc::tier_resource(slow);
  ASSERT_NE(res, nullptr);
  std::pmr::unordered_map<int, std::pmr::string> map(res);
  for (int i = 0; i < 20000; ++i) map.emplace(i, std::pmr::string(40, static_cast<char>('a' + i % 26)));
  int checked = 0;
  for (auto& [k, v] : map) {
    ASSERT_EQ(tieralloc_tier_of(&k), slow);
    ASSERT_EQ(tieralloc_tier_of(v.data()), slow);
    ASSERT_EQ(v[0], static_cast<char>('a' + k % 26));
    ++checked;
  }
  EXPECT_EQ(checked, 20000);
  EXPECT_EQ(tieralloc::tier_resource(tieralloc_tier_count()), nullptr);
}

TEST(Cxx, AllocatorUniquePtrAndBuffer) {
  int slow = last_tier();
  std::vector<long, tieralloc::allocator<long>> v{tieralloc::allocator<long>(tieralloc::Placement::tier(slow))};
  for (long i = 0; i < 100000; ++i) v.push_back(i);
  EXPECT_EQ(tieralloc_tier_of(v.data()), slow);
  EXPECT_EQ(v[99999], 99999);
  auto up = tieralloc::make_unique<std::pair<int, double>>(tieralloc::Placement::hot(), 7, 2.5);
  EXPECT_EQ(up->first, 7);
  EXPECT_EQ(tieralloc_tier_of(up.get()), 0);
  tieralloc::Buffer b(1 << 20, tieralloc::Placement::cold());
  std::memset(b.data(), 3, b.size());
  EXPECT_EQ(b.tier(), slow);
  tieralloc::Buffer moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.tier(), slow);
  EXPECT_THROW(tieralloc::Buffer(1 << 20, tieralloc::Placement::tier(tieralloc_tier_count())), std::bad_alloc);
}

// Threads allocate across every tier and size class, check contents, and free each other's
// blocks: run in the ASan+UBSan and TSan builds too.
TEST(Stress, MixedSizesAcrossThreadsAndTiers) {
#if defined(__SANITIZE_THREAD__)
  constexpr int kThreads = 4, kOps = 1500;  // TSan runs this ~50x slower
#else
  constexpr int kThreads = 4, kOps = 6000;
#endif
  struct Block {
    unsigned char* p;
    size_t n;
    unsigned char tag;
  };
  std::mutex m;
  std::vector<Block> shared;  // handed from one thread to another for freeing
  std::atomic<int> bad{0};
  auto check_free = [&](const Block& b) {
    for (size_t i = 0; i < b.n; i += 997)
      if (b.p[i] != b.tag) bad.fetch_add(1);
    if (b.p[b.n - 1] != b.tag) bad.fetch_add(1);
    tieralloc_free(b.p);
  };
  auto worker = [&](int id) {
    std::mt19937_64 rng(static_cast<uint64_t>(id) * 7919);
    std::vector<Block> mine;
    for (int op = 0; op < kOps; ++op) {
      unsigned r = static_cast<unsigned>(rng());
      if (mine.size() < 64 || (r % 3 && mine.size() < 256)) {
        // Sizes log-uniform from 8 B to 4 MiB.
        size_t n = size_t{8} << (r % 20);
        n += rng() % n;
        if (n > (size_t{4} << 20)) n = size_t{4} << 20;
        int flags = (r >> 8) % 4 == 0 ? 0 : TIERALLOC_TIER(static_cast<int>((r >> 10) % static_cast<unsigned>(tieralloc_tier_count())));
        auto* p = static_cast<unsigned char*>(tieralloc_mallocx(n, flags));
        if (!p) {
          bad.fetch_add(1);
          continue;
        }
        auto tag = static_cast<unsigned char>(rng());
        std::memset(p, tag, n);
        mine.push_back({p, n, tag});
      } else {
        size_t i = rng() % mine.size();
        Block b = mine[i];
        mine[i] = mine.back();
        mine.pop_back();
        if (r & 16) {
          std::lock_guard<std::mutex> g(m);
          shared.push_back(b);
        } else {
          check_free(b);
        }
      }
      if (op % 64 == 0) {
        std::vector<Block> take;
        {
          std::lock_guard<std::mutex> g(m);
          take.swap(shared);
        }
        for (const Block& b : take) check_free(b);
      }
    }
    for (const Block& b : mine) check_free(b);
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  for (const Block& b : shared) check_free(b);
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
