// The fault-signal layer on its own (os/signals.h): tieralloc's dispatcher in front, the
// application's handlers -- installed through os::application_sigaction, the body of the
// interposed sigaction() -- behind it. ctest runs every test in a fresh process, so each one
// starts with the kernel's default dispositions.
#include "os/signals.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "tests/support/fault.h"
#include "tests/support/kernel_default_actions.h"

namespace {

using tieralloc::os::add_fault_filter;
using tieralloc::os::application_sigaction;
using tieralloc::testing::in_child;
using tieralloc::testing::kernel_handler;
using tieralloc::testing::send_fault;

constexpr size_t kPage = 4096;

std::atomic<int> g_filter_calls{0};
std::atomic<int> g_app_calls{0};
std::atomic<int> g_app_code{0};
std::atomic<int> g_app_lsb{0};
std::atomic<void*> g_app_addr{nullptr};
std::atomic<char*> g_owned_page{nullptr};
std::atomic<bool> g_mask_ok{false};

char* guard_page() {
  void* p = mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
}

bool declining_filter(int, siginfo_t*, void*) {
  g_filter_calls.fetch_add(1);
  return false;
}

// Takes faults on g_owned_page only, and makes the page accessible so the access resumes.
bool owning_filter(int, siginfo_t* info, void*) {
  char* page = g_owned_page.load();
  char* at = static_cast<char*>(info->si_addr);
  if (!page || at < page || at >= page + kPage) return false;
  mprotect(page, kPage, PROT_READ | PROT_WRITE);
  return true;
}

bool guarded_copy_filter(int, siginfo_t*, void* uc) { return tieralloc::os::redirect_guarded_copy(uc); }

void app_handler(int signo, siginfo_t* info, void*) {
  g_app_calls.fetch_add(1);
  g_app_code.store(info->si_code);
  g_app_lsb.store(info->si_addr_lsb);
  g_app_addr.store(info->si_addr);
  if (signo == SIGSEGV) {
    uintptr_t page = reinterpret_cast<uintptr_t>(info->si_addr) & ~(kPage - 1);
    mprotect(reinterpret_cast<void*>(page), kPage, PROT_READ | PROT_WRITE);
  }
}

void masking_handler(int signo, siginfo_t* info, void* uc) {
  sigset_t now;
  pthread_sigmask(SIG_SETMASK, nullptr, &now);
  g_mask_ok.store(sigismember(&now, SIGUSR1) == 1 && sigismember(&now, SIGSEGV) == 1);
  app_handler(signo, info, uc);
}

int install_app(int signo, void (*fn)(int, siginfo_t*, void*), int extra_flags = 0) {
  struct sigaction sa = {};
  sa.sa_sigaction = fn;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_SIGINFO | extra_flags;
  return application_sigaction(signo, &sa, nullptr);
}

int install_app_disposition(int signo, sighandler_t disposition) {
  struct sigaction sa = {};
  sa.sa_handler = disposition;
  sigemptyset(&sa.sa_mask);
  return application_sigaction(signo, &sa, nullptr);
}

void touch(char* p) { *reinterpret_cast<volatile char*>(p) = 1; }

TEST(FaultSignals, ApplicationHandlerInstalledAfterReceivesGuardPageFault) {
  ASSERT_TRUE(add_fault_filter(SIGSEGV, declining_filter));
  ASSERT_EQ(install_app(SIGSEGV, app_handler), 0);
  EXPECT_NE(kernel_handler(SIGSEGV), reinterpret_cast<uintptr_t>(&app_handler)) << "dispatcher was replaced";
  char* page = guard_page();
  ASSERT_NE(page, nullptr);
  touch(page + 100);
  EXPECT_EQ(g_app_calls.load(), 1);
  EXPECT_EQ(g_app_addr.load(), page + 100);
  EXPECT_EQ(g_app_code.load(), SEGV_ACCERR);
  EXPECT_EQ(g_filter_calls.load(), 1);
  struct sigaction old = {};
  ASSERT_EQ(application_sigaction(SIGSEGV, nullptr, &old), 0);
  EXPECT_EQ(old.sa_sigaction, &app_handler);
  EXPECT_TRUE(old.sa_flags & SA_SIGINFO);
  EXPECT_TRUE(tieralloc::os::application_handles(SIGSEGV));
  munmap(page, kPage);
}

TEST(FaultSignals, ApplicationHandlerInstalledBeforeIsChained) {
  ASSERT_EQ(install_app(SIGSEGV, app_handler), 0);  // straight to the kernel: no dispatcher yet
  EXPECT_EQ(kernel_handler(SIGSEGV), reinterpret_cast<uintptr_t>(&app_handler));
  ASSERT_TRUE(add_fault_filter(SIGSEGV, declining_filter));
  EXPECT_NE(kernel_handler(SIGSEGV), reinterpret_cast<uintptr_t>(&app_handler));
  char* page = guard_page();
  touch(page);
  EXPECT_EQ(g_app_calls.load(), 1);
  EXPECT_EQ(g_filter_calls.load(), 1);
  // Replacing it reports the one installed before the dispatcher as the previous handler.
  struct sigaction none = {}, old = {};
  none.sa_handler = SIG_DFL;
  ASSERT_EQ(application_sigaction(SIGSEGV, &none, &old), 0);
  EXPECT_EQ(old.sa_sigaction, &app_handler);
  EXPECT_FALSE(tieralloc::os::application_handles(SIGSEGV));
  munmap(page, kPage);
}

TEST(FaultSignals, FilterThatTakesTheFaultHidesItFromTheApplication) {
  ASSERT_TRUE(add_fault_filter(SIGSEGV, declining_filter));
  ASSERT_TRUE(add_fault_filter(SIGSEGV, owning_filter));
  ASSERT_TRUE(add_fault_filter(SIGSEGV, owning_filter));  // once only
  ASSERT_EQ(install_app(SIGSEGV, app_handler), 0);
  char* owned = guard_page();
  char* other = guard_page();
  g_owned_page.store(owned);
  touch(owned);
  EXPECT_EQ(g_app_calls.load(), 0);
  touch(other);
  EXPECT_EQ(g_app_calls.load(), 1);
  EXPECT_EQ(g_app_addr.load(), other);
  EXPECT_EQ(g_filter_calls.load(), 2);
}

TEST(FaultSignals, AtMostFourFiltersPerSignal) {
  auto f1 = +[](int, siginfo_t*, void*) { return false; };
  auto f2 = +[](int, siginfo_t*, void*) { return false; };
  auto f3 = +[](int, siginfo_t*, void*) { return false; };
  EXPECT_TRUE(add_fault_filter(SIGBUS, declining_filter));
  EXPECT_TRUE(add_fault_filter(SIGBUS, f1));
  EXPECT_TRUE(add_fault_filter(SIGBUS, f2));
  EXPECT_TRUE(add_fault_filter(SIGBUS, f3));
  EXPECT_FALSE(add_fault_filter(SIGBUS, owning_filter));
  EXPECT_FALSE(add_fault_filter(SIGUSR1, declining_filter));
  EXPECT_FALSE(add_fault_filter(SIGBUS, nullptr));
}

TEST(FaultSignals, MachineCheckSigbusReachesApplicationWithItsDetails) {
  ASSERT_TRUE(add_fault_filter(SIGBUS, declining_filter));
  ASSERT_EQ(install_app(SIGBUS, app_handler), 0);
  static char line[64];
  ASSERT_EQ(send_fault(SIGBUS, BUS_MCEERR_AR, line, 6), 0);
  EXPECT_EQ(g_app_calls.load(), 1);
  EXPECT_EQ(g_app_code.load(), BUS_MCEERR_AR);
  EXPECT_EQ(g_app_lsb.load(), 6);
  EXPECT_EQ(g_app_addr.load(), line);
  EXPECT_EQ(g_filter_calls.load(), 1);
}

TEST(FaultSignals, ApplicationMaskAndDeferApply) {
  ASSERT_TRUE(add_fault_filter(SIGSEGV, declining_filter));
  struct sigaction sa = {};
  sa.sa_sigaction = masking_handler;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGUSR1);
  sa.sa_flags = SA_SIGINFO;
  ASSERT_EQ(application_sigaction(SIGSEGV, &sa, nullptr), 0);
  char* page = guard_page();
  touch(page);
  EXPECT_EQ(g_app_calls.load(), 1);
  EXPECT_TRUE(g_mask_ok.load());
  sigset_t after;
  pthread_sigmask(SIG_SETMASK, nullptr, &after);
  EXPECT_FALSE(sigismember(&after, SIGUSR1));
  EXPECT_FALSE(sigismember(&after, SIGSEGV));
}

int die_on_guard_page_without_handler() {
  if (!add_fault_filter(SIGSEGV, declining_filter)) return 10;
  touch(guard_page());
  return 11;  // survived
}

TEST(FaultSignals, DefaultActionKillsWithSigsegv) {
  int status = in_child(die_on_guard_page_without_handler);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
}

int die_on_consumed_poison_without_handler() {
  if (!add_fault_filter(SIGBUS, declining_filter)) return 10;
  static char line[64];
  send_fault(SIGBUS, BUS_MCEERR_AR, line, 6);
  return 11;
}

TEST(FaultSignals, DefaultActionKillsWithSigbus) {
  int status = in_child(die_on_consumed_poison_without_handler);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
}

int second_fault_after_resethand() {
  if (!add_fault_filter(SIGSEGV, declining_filter)) return 10;
  if (install_app(SIGSEGV, app_handler, SA_RESETHAND) != 0) return 12;
  char* a = guard_page();
  char* b = guard_page();
  touch(a);
  if (g_app_calls.load() != 1) return 13;
  struct sigaction now = {};
  application_sigaction(SIGSEGV, nullptr, &now);
  if (now.sa_handler != SIG_DFL) return 14;
  touch(b);
  return 11;
}

TEST(FaultSignals, ResetHandRunsOnceThenDefault) {
  int status = in_child(second_fault_after_resethand);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit code " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
}

int ignored_action_optional_then_forced() {
  if (!add_fault_filter(SIGBUS, declining_filter)) return 10;
  if (install_app_disposition(SIGBUS, SIG_IGN) != 0) return 12;
  static char line[64];
  send_fault(SIGBUS, BUS_MCEERR_AO, line, 6);  // ignorable: the process lives on
  if (g_filter_calls.load() != 1) return 13;
  send_fault(SIGBUS, BUS_MCEERR_AR, line, 6);  // forced by the kernel even when ignored
  return 11;
}

TEST(FaultSignals, IgnoredDispositionIgnoresOnlyWhatTheKernelWould) {
  int status = in_child(ignored_action_optional_then_forced);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit code " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
}

TEST(FaultSignals, OtherSignalsPassStraightToTheKernel) {
  ASSERT_TRUE(add_fault_filter(SIGSEGV, declining_filter));
  ASSERT_EQ(install_app(SIGUSR2, app_handler), 0);
  EXPECT_EQ(kernel_handler(SIGUSR2), reinterpret_cast<uintptr_t>(&app_handler));
  raise(SIGUSR2);
  EXPECT_EQ(g_app_calls.load(), 1);
  EXPECT_EQ(g_filter_calls.load(), 0);
}

TEST(FaultSignals, GuardedCopyStopsAtTheFaultingPage) {
  ASSERT_TRUE(add_fault_filter(SIGSEGV, guarded_copy_filter));
  auto* src = static_cast<char*>(mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(src, MAP_FAILED);
  for (size_t i = 0; i < 2 * kPage; ++i) src[i] = static_cast<char>(i * 7);
  char dst[2 * kPage] = {};
  EXPECT_EQ(tieralloc::os::guarded_copy(dst, src, sizeof dst), sizeof dst);
  EXPECT_EQ(std::memcmp(dst, src, sizeof dst), 0);
  std::memset(dst, 0, sizeof dst);
  ASSERT_EQ(mprotect(src + kPage, kPage, PROT_NONE), 0);
  EXPECT_EQ(tieralloc::os::guarded_copy(dst, src + 10, sizeof dst - 10), kPage - 10);
  EXPECT_EQ(std::memcmp(dst, src + 10, kPage - 10), 0);
  munmap(src, 2 * kPage);
}

}  // namespace
