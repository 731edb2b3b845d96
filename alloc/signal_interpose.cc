// The application's view of SIGSEGV and SIGBUS while tieralloc's fault dispatcher owns them (see
// os/signals.h): the signal-installing calls of libc, exported by libtieralloc.so so they come
// before libc's whether the library is preloaded or linked. glibc's signal() and friends call
// its sigaction internally, past any interposition, so each is re-implemented here on top of
// os::application_sigaction with glibc's own flags.
#include <signal.h>

#include "os/signals.h"

namespace {

sighandler_t install(int signo, sighandler_t handler, int flags, bool block_self) {
  struct sigaction act = {}, old = {};
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  if (block_self && signo > 0 && signo < NSIG) sigaddset(&act.sa_mask, signo);
  act.sa_flags = flags;
  if (handler == SIG_ERR || tieralloc::os::application_sigaction(signo, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

}  // namespace

extern "C" {
sighandler_t bsd_signal(int signo, sighandler_t handler);

__attribute__((visibility("default"))) int sigaction(int signo, const struct sigaction* act,
                                                     struct sigaction* oldact) noexcept {
  return tieralloc::os::application_sigaction(signo, act, oldact);
}

// BSD semantics, as glibc's signal(): the handler stays, the signal is blocked while it runs,
// interrupted system calls restart.
__attribute__((visibility("default"))) sighandler_t signal(int signo, sighandler_t handler) noexcept {
  return install(signo, handler, SA_RESTART, true);
}

__attribute__((visibility("default"))) sighandler_t bsd_signal(int signo, sighandler_t handler) {
  return install(signo, handler, SA_RESTART, true);
}

// System V semantics, as glibc's sysv_signal(): one-shot, not blocked while running.
__attribute__((visibility("default"))) sighandler_t sysv_signal(int signo, sighandler_t handler) noexcept {
  return install(signo, handler, SA_RESETHAND | SA_NODEFER, false);
}

// System V sigset(): SIG_HOLD blocks the signal; anything else installs it and unblocks it. The
// result is SIG_HOLD when the signal was blocked before, else the previous disposition.
__attribute__((visibility("default"))) sighandler_t sigset(int signo, sighandler_t disposition) noexcept {
  sigset_t just, before;
  if (sigemptyset(&just) != 0 || sigaddset(&just, signo) != 0) return SIG_ERR;
  struct sigaction old = {};
  if (disposition == SIG_HOLD) {
    if (tieralloc::os::application_sigaction(signo, nullptr, &old) != 0) return SIG_ERR;
    if (pthread_sigmask(SIG_BLOCK, &just, &before) != 0) return SIG_ERR;
  } else {
    sighandler_t previous = install(signo, disposition, 0, false);
    if (previous == SIG_ERR) return SIG_ERR;
    old.sa_handler = previous;
    if (pthread_sigmask(SIG_UNBLOCK, &just, &before) != 0) return SIG_ERR;
  }
  return sigismember(&before, signo) ? SIG_HOLD : old.sa_handler;
}
}
