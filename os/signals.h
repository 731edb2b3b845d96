// Fault signals (SIGSEGV, SIGBUS) shared by every part of tieralloc that takes faults: the poison
// subsystem (machine-check SIGBUS, stray loads on quarantined pages) and the tiering sampler
// (hinting faults). One dispatcher per signal consults tieralloc's filters in order; a fault no
// filter takes goes to the application's own disposition, exactly as the kernel would have
// delivered it.
//
// The application keeps believing it owns these signals: libtieralloc.so exports sigaction(),
// signal(), bsd_signal(), sysv_signal() and sigset() (as the JVM's libjsig does). Once tieralloc's
// dispatcher is installed for a signal, the application's calls for that signal record its
// handler (and report the previous one as oldact) instead of replacing the dispatcher; for every
// other signal, and before the dispatcher exists, they go straight to libc.
//
// Everything here is async-signal-safe and allocation-free: filters may be added from inside a
// signal handler, and the interposed calls may run before the heap exists.
#pragma once

#include <signal.h>

#include <sys/types.h>

#include <atomic>
#include <cstddef>

namespace tieralloc::os {

// Called first by the library's constructor: sanitizer runtimes have started by then (they start
// from the program's preinit array, and may call the interposed sigaction while they do).
void note_library_started();

// A lock for state shared with signal handlers: holders block every signal (so a handler never
// waits for its own thread) and spin briefly. The word holds the holder's pid, so a child forked
// while another thread held it takes it over instead of deadlocking (no pthread_atfork, which may
// allocate). Never hold it across a call that can fault.
class SignalSafeLock {
 public:
  explicit SignalSafeLock(std::atomic<pid_t>& word);
  ~SignalSafeLock();
  SignalSafeLock(const SignalSafeLock&) = delete;
  SignalSafeLock& operator=(const SignalSafeLock&) = delete;

 private:
  std::atomic<pid_t>& word_;
  sigset_t saved_;
};

// Returns true when the fault was tieralloc's and is resolved (the instruction may resume or the
// filter has redirected the context); false passes it on.
using FaultFilter = bool (*)(int signo, siginfo_t* info, void* ucontext);

// Installs tieralloc's dispatcher for signo (SIGSEGV or SIGBUS) once, and adds filter (up to 4 per
// signal, consulted in order). Application handlers -- installed before or after, through the
// interposed sigaction()/signal() exported by libtieralloc.so -- are chained for faults no filter
// takes, with the application's sa_flags/sa_mask semantics (SA_SIGINFO, SA_RESETHAND, SIG_DFL => re-raise
// with default action, SIG_IGN). Async-signal-safe, allocation-free. Returns false on failure.
bool add_fault_filter(int signo, FaultFilter filter);

// The body of the interposed sigaction(): same contract as sigaction(2) (0, or -1 + errno).
int application_sigaction(int signo, const struct sigaction* act, struct sigaction* oldact);

// True when the application has a handler (not SIG_DFL/SIG_IGN) for signo, as it sees it.
bool application_handles(int signo);

// The libc sigaction, bypassing the interposition (for tieralloc's own handlers).
int libc_sigaction(int signo, const struct sigaction* act, struct sigaction* oldact);

// A memcpy that survives faults on the source: returns the number of bytes copied before the
// first byte that faulted (n when none did). It only recovers when a fault filter that sees the
// fault calls redirect_guarded_copy(); the poison filters do, for SIGBUS and SIGSEGV.
size_t guarded_copy(void* dst, const void* src, size_t n);
// When the fault described by ucontext happened inside guarded_copy, makes the copy return early
// (the context resumes at its exit) and returns true; else false and the context is untouched.
bool redirect_guarded_copy(void* ucontext);

}  // namespace tieralloc::os
