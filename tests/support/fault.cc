#include "tests/support/fault.h"

#include <errno.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace tieralloc::testing {

int send_fault(int signo, int si_code, void* addr, short addr_lsb) {
  siginfo_t si = {};
  si.si_signo = signo;
  si.si_code = si_code;
  si.si_addr = addr;
  si.si_addr_lsb = addr_lsb;
  long rc = syscall(SYS_rt_tgsigqueueinfo, getpid(), static_cast<pid_t>(syscall(SYS_gettid)), signo, &si);
  return rc == 0 ? 0 : -errno;
}

int in_child(int (*body)()) {
  pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = -1;
  if (pid > 0) waitpid(pid, &status, 0);
  return status;
}

uintptr_t kernel_handler(int signo) {
  struct {
    uintptr_t handler;
    unsigned long flags;
    uintptr_t restorer;
    uint64_t mask;
  } k = {};
  syscall(SYS_rt_sigaction, signo, nullptr, &k, sizeof k.mask);
  return k.handler;
}

}  // namespace tieralloc::testing
