// Facts about the guest kernel that tieralloc's poison handling is built on, checked without
// tieralloc in the process (this binary does not link it): madvise(MADV_HWPOISON) on a resident
// page makes the next access raise SIGBUS with BUS_MCEERR_AR and the exact faulting address, the
// kernel counts the frame in HardwareCorrupted, neighbours stay readable; PR_MCE_KILL_EARLY turns
// the signal into BUS_MCEERR_AO at injection time; discarding the page (MADV_DONTNEED) or mapping
// over it (MAP_FIXED) gives a fresh zeroed frame while the bad one stays retired, which is what a
// repair can build on. If a kernel update changes one of these, the
// poison tests built on them fail here first, with the reason.
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/guest/kernel_facts.h"

namespace {

using tieralloc::guest::kPage;
using tieralloc::guest::pfn_of;

#ifndef MADV_HWPOISON
constexpr int MADV_HWPOISON = 100;
#endif

sigjmp_buf g_jump;
volatile sig_atomic_t g_signal;
volatile int g_code, g_lsb;
void* volatile g_addr;

void on_sigbus(int sig, siginfo_t* si, void*) {
  g_signal = sig;
  g_code = si->si_code;
  g_addr = si->si_addr;
  g_lsb = si->si_addr_lsb;
  siglongjmp(g_jump, 1);
}

class Hwpoison : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    ASSERT_EQ(sigaction(SIGBUS, &sa, &previous_), 0);
  }
  void TearDown() override {
    sigaction(SIGBUS, &previous_, nullptr);
    prctl(PR_MCE_KILL, PR_MCE_KILL_CLEAR, 0, 0, 0);
    // Software poison can be taken back: later cases in the same boot start from a clean count.
    for (uint64_t pfn : poisoned_) {
      FILE* f = fopen("/sys/kernel/debug/hwpoison/unpoison-pfn", "w");
      if (f) fprintf(f, "0x%llx\n", static_cast<unsigned long long>(pfn)), fclose(f);
    }
  }

  // Four pages bound to `node`, filled, resident.
  unsigned char* map_on(int node) {
    void* p = mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    unsigned long mask = 1ul << node;
    if (syscall(SYS_mbind, p, 4 * kPage, MPOL_BIND, &mask, sizeof(mask) * 8, 0) != 0) return nullptr;
    memset(p, 0xab, 4 * kPage);
    return static_cast<unsigned char*>(p);
  }

  // madvise(MADV_HWPOISON) with a jump target: some kernels (6.12) raise the SIGBUS inside it.
  int inject(void* page) {
    poisoned_.push_back(pfn_of(page));
    g_signal = 0;
    volatile int rc = -2;
    if (sigsetjmp(g_jump, 1) == 0) rc = madvise(page, kPage, MADV_HWPOISON);
    return rc;
  }

  // Reads one byte; true when a SIGBUS interrupted it.
  static bool faults(volatile unsigned char* p) {
    g_signal = 0;
    g_code = -1;
    g_addr = nullptr;
    if (sigsetjmp(g_jump, 1) == 0) {
      (void)*p;
      return false;
    }
    return true;
  }

  struct sigaction previous_ {};
  std::vector<uint64_t> poisoned_;
};

TEST_P(Hwpoison, ConsumingAPoisonedPageRaisesActionRequiredAtTheExactAddress) {
  int node = GetParam();
  ASSERT_GE(node, 0) << "TIERALLOC_GUEST_SLOW_NODE is not set: run inside the guest";
  unsigned char* p = map_on(node);
  ASSERT_NE(p, nullptr) << strerror(errno);
  unsigned char* victim = p + kPage;
  ASSERT_EQ(tieralloc::guest::page_nodes(victim, 1).at(0), node);
  ASSERT_NE(pfn_of(victim), 0u) << "pagemap gives no pfn (not root?)";
  long corrupted_before = tieralloc::guest::meminfo_kb("HardwareCorrupted");

  int rc = inject(victim);
  if (g_signal) {  // the kernel killed at injection time: then it is AR at the page start
    EXPECT_EQ(g_code, BUS_MCEERR_AR);
    EXPECT_EQ(g_addr, victim);
  } else {
    EXPECT_EQ(rc, 0) << strerror(errno);
  }
  EXPECT_EQ(tieralloc::guest::meminfo_kb("HardwareCorrupted"), corrupted_before + 4);

  ASSERT_TRUE(faults(victim + 100));
  EXPECT_EQ(g_signal, SIGBUS);
  EXPECT_EQ(g_code, BUS_MCEERR_AR);
  EXPECT_EQ(g_addr, victim + 100) << "si_addr is the faulting byte, not the page start";
  EXPECT_EQ(g_lsb, 12) << "si_addr_lsb says one 4 KiB page is lost";
  printf("node %d: poisoned %p (pfn 0x%llx); read at +100 -> SIGBUS si_code=%d si_addr=%p lsb=%d; "
         "HardwareCorrupted %ld -> %ld kB\n", node, static_cast<void*>(victim),
         static_cast<unsigned long long>(poisoned_.back()), static_cast<int>(g_code), g_addr,
         static_cast<int>(g_lsb), corrupted_before, tieralloc::guest::meminfo_kb("HardwareCorrupted"));
  EXPECT_FALSE(faults(p));
  EXPECT_FALSE(faults(p + 2 * kPage + kPage - 1));
  EXPECT_EQ(p[0], 0xab);
  EXPECT_EQ(p[2 * kPage], 0xab);
  munmap(p, 4 * kPage);
}

TEST_P(Hwpoison, EarlyKillDeliversActionOptionalAtInjection) {
  int node = GetParam();
  ASSERT_GE(node, 0) << "TIERALLOC_GUEST_SLOW_NODE is not set: run inside the guest";
  ASSERT_EQ(prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0), 0);
  unsigned char* p = map_on(node);
  ASSERT_NE(p, nullptr) << strerror(errno);
  inject(p + kPage);
  EXPECT_EQ(g_signal, SIGBUS) << "no signal at injection time";
  EXPECT_EQ(g_code, BUS_MCEERR_AO);
  EXPECT_EQ(g_addr, p + kPage);
  ASSERT_TRUE(faults(p + kPage + 8));
  EXPECT_EQ(g_code, BUS_MCEERR_AR) << "consuming it later is still action-required";
  munmap(p, 4 * kPage);
}

TEST_P(Hwpoison, DiscardOrMapFixedReplacesThePoisonedFrame) {
  int node = GetParam();
  ASSERT_GE(node, 0) << "TIERALLOC_GUEST_SLOW_NODE is not set: run inside the guest";
  unsigned char* p = map_on(node);
  ASSERT_NE(p, nullptr) << strerror(errno);
  unsigned char *discarded = p + kPage, *mapped_over = p + 2 * kPage;
  long corrupted_before = tieralloc::guest::meminfo_kb("HardwareCorrupted");
  inject(discarded);
  inject(mapped_over);
  uint64_t bad_discarded = poisoned_[0], bad_mapped_over = poisoned_[1];

  ASSERT_EQ(madvise(discarded, kPage, MADV_DONTNEED), 0) << strerror(errno);
  ASSERT_FALSE(faults(discarded + 100)) << "si_code " << g_code;
  EXPECT_EQ(discarded[100], 0) << "a fresh page is zeroed";
  discarded[0] = 1;
  EXPECT_NE(pfn_of(discarded), bad_discarded);
  EXPECT_EQ(tieralloc::guest::page_nodes(discarded, 1).at(0), node) << "the mapping's policy still holds";

  void* again = mmap(mapped_over, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(again, static_cast<void*>(mapped_over)) << strerror(errno);
  ASSERT_FALSE(faults(mapped_over + 100)) << "si_code " << g_code;
  EXPECT_EQ(mapped_over[100], 0);
  mapped_over[0] = 1;
  EXPECT_NE(pfn_of(mapped_over), bad_mapped_over);

  EXPECT_EQ(tieralloc::guest::meminfo_kb("HardwareCorrupted"), corrupted_before + 8) << "both frames stay retired";
  EXPECT_EQ(p[0], 0xab);
  EXPECT_EQ(p[3 * kPage], 0xab);
  munmap(p, 4 * kPage);
}

// move_pages' status query on 6.1 (Debian 12): -EFAULT for an anonymous page never faulted in --
// the same answer as for an address with nothing mapped -- and -ENOENT for a present page it
// cannot reach (PROT_NONE, as the heat sampler leaves runs while it watches them). Current
// kernels answer -ENOENT for the first and the node for the second; tieralloc reads both errors
// as "no page there now" (os::absent_status).
TEST(MovePagesStatus, UnpopulatedIsEfaultAndUnreachableIsEnoent) {
  void* map = mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  auto* p = static_cast<unsigned char*>(map);
  p[0] = 1;  // page 0 present; pages 1-3 never touched, in the same page table
  ASSERT_EQ(munmap(p + 3 * kPage, kPage), 0);
  auto status = [](const void* page) { return tieralloc::guest::page_nodes(page, 1).at(0); };
  EXPECT_GE(status(p), 0);
  EXPECT_EQ(status(p + kPage), -EFAULT) << "never faulted in";
  EXPECT_EQ(status(p + 3 * kPage), -EFAULT) << "not mapped";
  ASSERT_EQ(mprotect(p, kPage, PROT_NONE), 0);
  EXPECT_EQ(status(p), -ENOENT) << "present, PROT_NONE";
  ASSERT_EQ(mprotect(p, kPage, PROT_READ | PROT_WRITE), 0);
  EXPECT_GE(status(p), 0);
  EXPECT_EQ(p[0], 1);
  munmap(p, 3 * kPage);
}

INSTANTIATE_TEST_SUITE_P(FastAndSlowNode, Hwpoison,
                         ::testing::Values(0, tieralloc::guest::expected_slow_node()),
                         [](const auto& info) {
                           return info.param >= 0 ? "node" + std::to_string(info.param) : std::string("slow_node_unset");
                         });

}  // namespace
