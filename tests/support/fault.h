// Real fault signals for tests: the calling thread sends itself SIGBUS/SIGSEGV with the si_code,
// si_addr and si_addr_lsb a machine check or a page fault would carry (rt_tgsigqueueinfo lets a
// process forge kernel codes for itself only).
#pragma once

#include <signal.h>

#include <cstdint>

namespace tieralloc::testing {

// 0, or -errno from the syscall. The signal is delivered before this returns unless blocked.
int send_fault(int signo, int si_code, void* addr, short addr_lsb);

// The handler the kernel has for signo, read with the raw syscall past every interposition.
uintptr_t kernel_handler(int signo);

// Forks, runs body in the child and returns its wait status (exit code of body() when it returns).
int in_child(int (*body)());

}  // namespace tieralloc::testing
