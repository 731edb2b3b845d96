#include "os/signals.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>

// glibc's public alias of its sigaction: reaching libc without going through the interposed
// sigaction() (ours, or a sanitizer's in front of it) and without dlsym, which may allocate.
extern "C" int __sigaction(int signo, const struct sigaction* act, struct sigaction* oldact);

#if defined(TIERALLOC_TSAN)
// This file is built without TSan's instrumentation (os/CMakeLists.txt), so TSan cannot see the
// lock below and would report every access it guards as a race. Telling it about each acquire and
// release keeps its view of the code that uses the lock (instrumented) right -- once TSan's runtime
// runs: it calls the interposed sigaction while it starts (see note_library_started).
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace {
std::atomic<bool> g_tsan_running{false};
void tsan_acquire(void* addr) {
  if (g_tsan_running.load(std::memory_order_relaxed)) __tsan_acquire(addr);
}
void tsan_release(void* addr) {
  if (g_tsan_running.load(std::memory_order_relaxed)) __tsan_release(addr);
}
}  // namespace
#else
namespace {
void tsan_acquire(void*) {}
void tsan_release(void*) {}
}  // namespace
#endif

namespace tieralloc::os {
namespace {

constexpr int kMaxFilters = 4;
constexpr size_t kMaskWords = sizeof(sigset_t) / sizeof(uint64_t);

// The application's disposition for one signal, as it believes it installed it. Written under
// g_lock with every signal blocked; read by the dispatcher without a lock (a seqlock over atomic
// fields: a reader on another thread retries, a reader on the writing thread cannot exist).
struct ApplicationAction {
  std::atomic<uint32_t> seq{0};
  std::atomic<uintptr_t> handler{0};  // sa_handler or sa_sigaction (the same union member)
  std::atomic<int> flags{0};
  std::atomic<uintptr_t> restorer{0};
  std::atomic<uint64_t> mask[kMaskWords] = {};
};

struct FaultSignal {
  std::atomic<bool> installed{false};
  std::atomic<int> nfilters{0};
  std::atomic<FaultFilter> filters[kMaxFilters] = {};
  ApplicationAction app;
};

constinit FaultSignal g_segv, g_bus;

// Serialises installation and the application's updates.
constinit std::atomic<pid_t> g_lock_owner{0};

FaultSignal* fault_signal(int signo) {
  if (signo == SIGSEGV) return &g_segv;
  if (signo == SIGBUS) return &g_bus;
  return nullptr;
}

void dispatch(int signo, siginfo_t* info, void* ucontext);

// Caller holds g_lock.
void store_application_action(ApplicationAction& a, const struct sigaction& act) {
  a.seq.fetch_add(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  uintptr_t h = act.sa_flags & SA_SIGINFO ? reinterpret_cast<uintptr_t>(act.sa_sigaction)
                                          : reinterpret_cast<uintptr_t>(act.sa_handler);
  // Our own dispatcher is never the application's (a second install after exec-less re-init).
  if (h == reinterpret_cast<uintptr_t>(&dispatch)) h = reinterpret_cast<uintptr_t>(SIG_DFL);
  a.handler.store(h, std::memory_order_relaxed);
  a.flags.store(act.sa_flags, std::memory_order_relaxed);
  a.restorer.store(reinterpret_cast<uintptr_t>(act.sa_restorer), std::memory_order_relaxed);
  uint64_t words[kMaskWords];
  std::memcpy(words, &act.sa_mask, sizeof words);
  for (size_t i = 0; i < kMaskWords; ++i) a.mask[i].store(words[i], std::memory_order_relaxed);
  a.seq.fetch_add(1, std::memory_order_release);
}

void load_application_action(const ApplicationAction& a, struct sigaction* out) {
  uint64_t words[kMaskWords];
  uintptr_t h, restorer;
  int flags;
  for (;;) {
    uint32_t s1 = a.seq.load(std::memory_order_acquire);
    if (s1 & 1) {
      sched_yield();
      continue;
    }
    h = a.handler.load(std::memory_order_relaxed);
    flags = a.flags.load(std::memory_order_relaxed);
    restorer = a.restorer.load(std::memory_order_relaxed);
    for (size_t i = 0; i < kMaskWords; ++i) words[i] = a.mask[i].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (a.seq.load(std::memory_order_relaxed) == s1) break;
  }
  std::memset(out, 0, sizeof *out);
  if (flags & SA_SIGINFO) out->sa_sigaction = reinterpret_cast<void (*)(int, siginfo_t*, void*)>(h);
  else out->sa_handler = reinterpret_cast<void (*)(int)>(h);
  out->sa_flags = flags;
  out->sa_restorer = reinterpret_cast<void (*)()>(restorer);
  std::memcpy(&out->sa_mask, words, sizeof words);
}

pid_t thread_id() { return static_cast<pid_t>(syscall(SYS_gettid)); }

// The kernel forces synchronous faults through a blocked or ignored disposition (the default
// action then runs); only an action-optional machine check or a signal sent by a process can be
// ignored.
bool forced(int signo, const siginfo_t* info) {
  if (info->si_code <= 0) return false;  // SI_USER, SI_QUEUE, SI_TKILL: sent, not a fault
  return !(signo == SIGBUS && info->si_code == BUS_MCEERR_AO);
}

void install_dispatcher(int signo) {
  struct sigaction ours = {};
  ours.sa_sigaction = dispatch;
  sigemptyset(&ours.sa_mask);
  // SA_NODEFER: the application's own sa_mask and SA_NODEFER are applied when it is chained to,
  // so nothing must be blocked on the way there. SA_ONSTACK: stack-overflow handlers need the
  // application's alternate stack.
  ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
  __sigaction(signo, &ours, nullptr);
}

// Ends the process the way the default disposition would: the same signal, with the same
// information, delivered with SIG_DFL in place (so the exit status and core dump name it).
void die_by_default_action(int signo, siginfo_t* info) {
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  __sigaction(signo, &dfl, nullptr);
  siginfo_t copy = *info;
  const pid_t pid = static_cast<pid_t>(syscall(SYS_getpid));
  if (syscall(SYS_rt_tgsigqueueinfo, pid, thread_id(), signo, &copy) != 0) syscall(SYS_tgkill, pid, thread_id(), signo);
  sigset_t just;
  sigemptyset(&just);
  sigaddset(&just, signo);
  pthread_sigmask(SIG_UNBLOCK, &just, nullptr);
  // Still alive: some other code changed the disposition meanwhile. Take the signal back.
  install_dispatcher(signo);
}

void chain_to_application(FaultSignal& s, int signo, siginfo_t* info, void* ucontext) {
  struct sigaction app;
  load_application_action(s.app, &app);
  const uintptr_t h = reinterpret_cast<uintptr_t>(app.sa_handler);
  if (h == reinterpret_cast<uintptr_t>(SIG_IGN) && !forced(signo, info)) return;
  if (h == reinterpret_cast<uintptr_t>(SIG_DFL) || h == reinterpret_cast<uintptr_t>(SIG_IGN)) {
    die_by_default_action(signo, info);
    return;
  }
  if (app.sa_flags & SA_RESETHAND) {
    SignalSafeLock lock(g_lock_owner);
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    store_application_action(s.app, dfl);
  }
  // The mask the kernel would have set for the application's handler: the interrupted code's
  // mask, plus the handler's sa_mask, plus the signal itself unless SA_NODEFER. The kernel's
  // ucontext carries the first 64 signals only.
  sigset_t during, ours;
  sigemptyset(&during);
  if (ucontext) std::memcpy(&during, &static_cast<ucontext_t*>(ucontext)->uc_sigmask, sizeof(uint64_t));
  sigorset(&during, &during, &app.sa_mask);
  if (!(app.sa_flags & SA_NODEFER)) sigaddset(&during, signo);
  pthread_sigmask(SIG_SETMASK, &during, &ours);
  if (app.sa_flags & SA_SIGINFO) app.sa_sigaction(signo, info, ucontext);
  else app.sa_handler(signo);
  pthread_sigmask(SIG_SETMASK, &ours, nullptr);
}

void dispatch(int signo, siginfo_t* info, void* ucontext) {
  const int saved_errno = errno;
  FaultSignal* s = fault_signal(signo);
  if (s) {
    const int n = s->nfilters.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) {
      FaultFilter f = s->filters[i].load(std::memory_order_acquire);
      if (f && f(signo, info, ucontext)) {
        errno = saved_errno;
        return;
      }
    }
    chain_to_application(*s, signo, info, ucontext);
  }
  errno = saved_errno;
}

}  // namespace

void note_library_started() {
#if defined(TIERALLOC_TSAN)
  g_tsan_running.store(true);
#endif
}

SignalSafeLock::SignalSafeLock(std::atomic<pid_t>& word) : word_(word) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &saved_);
  const pid_t me = static_cast<pid_t>(syscall(SYS_getpid));
  for (;;) {
    pid_t cur = 0;
    if (word_.compare_exchange_weak(cur, me, std::memory_order_acquire)) break;
    // Any pid but ours was written before a fork: that holder does not exist in this process.
    if (cur != 0 && cur != me && word_.compare_exchange_weak(cur, me, std::memory_order_acquire)) break;
    sched_yield();
  }
  tsan_acquire(&word_);
}

SignalSafeLock::~SignalSafeLock() {
  tsan_release(&word_);
  word_.store(0, std::memory_order_release);
  pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
}

int libc_sigaction(int signo, const struct sigaction* act, struct sigaction* oldact) {
  return __sigaction(signo, act, oldact);
}

bool add_fault_filter(int signo, FaultFilter filter) {
  FaultSignal* s = fault_signal(signo);
  if (!s || !filter) return false;
  SignalSafeLock lock(g_lock_owner);
  const int n = s->nfilters.load(std::memory_order_relaxed);
  for (int i = 0; i < n; ++i)
    if (s->filters[i].load(std::memory_order_relaxed) == filter) return true;
  if (n == kMaxFilters) return false;
  if (!s->installed.load(std::memory_order_relaxed)) {
    // Whatever is installed now (the application's handler, a sanitizer's, or SIG_DFL) becomes
    // the disposition that faults no filter takes are chained to.
    struct sigaction previous;
    if (__sigaction(signo, nullptr, &previous) != 0) return false;
    store_application_action(s->app, previous);
    install_dispatcher(signo);
    s->installed.store(true, std::memory_order_release);
  }
  s->filters[n].store(filter, std::memory_order_release);
  s->nfilters.store(n + 1, std::memory_order_release);
  return true;
}

int application_sigaction(int signo, const struct sigaction* act, struct sigaction* oldact) {
  FaultSignal* s = fault_signal(signo);
  if (!s) return __sigaction(signo, act, oldact);
  SignalSafeLock lock(g_lock_owner);
  if (!s->installed.load(std::memory_order_relaxed)) return __sigaction(signo, act, oldact);
  struct sigaction previous;
  load_application_action(s->app, &previous);
  if (act) store_application_action(s->app, *act);
  if (oldact) *oldact = previous;
  return 0;
}

bool application_handles(int signo) {
  FaultSignal* s = fault_signal(signo);
  struct sigaction app;
  if (s && s->installed.load(std::memory_order_acquire)) load_application_action(s->app, &app);
  else if (__sigaction(signo, nullptr, &app) != 0) return false;
  const uintptr_t h = reinterpret_cast<uintptr_t>(app.sa_handler);
  return h != reinterpret_cast<uintptr_t>(SIG_DFL) && h != reinterpret_cast<uintptr_t>(SIG_IGN);
}

}  // namespace tieralloc::os

#if defined(__x86_64__)
// rep movsb leaves rcx = bytes still to copy and rip on itself when the source faults, so a
// filter that moves rip to the fixup makes the copy return how much was left (the kernel's
// copy_mc does the same). ERMS makes it about as fast as memcpy for the sizes recovery reads use.
asm(R"(
  .text
  .p2align 4
  .globl tieralloc_guarded_copy
  .hidden tieralloc_guarded_copy
  .type tieralloc_guarded_copy, @function
tieralloc_guarded_copy:
  mov %rdx, %rcx
  .globl tieralloc_guarded_copy_insn
  .hidden tieralloc_guarded_copy_insn
tieralloc_guarded_copy_insn:
  rep movsb
  xor %eax, %eax
  ret
  .globl tieralloc_guarded_copy_fixup
  .hidden tieralloc_guarded_copy_fixup
tieralloc_guarded_copy_fixup:
  mov %rcx, %rax
  ret
  .size tieralloc_guarded_copy, .-tieralloc_guarded_copy
)");

// Returns the number of bytes not copied.
extern "C" __attribute__((visibility("hidden"))) size_t tieralloc_guarded_copy(void* dst, const void* src, size_t n);
extern "C" __attribute__((visibility("hidden"))) char tieralloc_guarded_copy_insn[];
extern "C" __attribute__((visibility("hidden"))) char tieralloc_guarded_copy_fixup[];

namespace tieralloc::os {

size_t guarded_copy(void* dst, const void* src, size_t n) {
  return n - tieralloc_guarded_copy(dst, src, n);
}

bool redirect_guarded_copy(void* ucontext) {
  if (!ucontext) return false;
  auto* uc = static_cast<ucontext_t*>(ucontext);
  if (static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]) != reinterpret_cast<uintptr_t>(tieralloc_guarded_copy_insn)) return false;
  uc->uc_mcontext.gregs[REG_RIP] = reinterpret_cast<greg_t>(tieralloc_guarded_copy_fixup);
  return true;
}

}  // namespace tieralloc::os
#else
#error "guarded_copy is implemented for x86-64 only"
#endif
