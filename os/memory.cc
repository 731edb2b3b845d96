#include "os/memory.h"

#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>

namespace tieralloc::os {

void* map_anonymous(size_t size, size_t alignment, void* hint) {
  if (hint) {
    void* p = ::mmap(hint, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    if (p != hint) {  // kernels before 4.17 treat the flag as a hint
      ::munmap(p, size);
      errno = EEXIST;
      return nullptr;
    }
    return p;
  }
  if (alignment < kPageSize) alignment = kPageSize;
  size_t span = size + alignment - kPageSize;
  if (span < size) {
    errno = ENOMEM;
    return nullptr;
  }
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + alignment - 1) & ~(alignment - 1);
  if (aligned > start) ::munmap(raw, aligned - start);
  uintptr_t end = start + span, want_end = aligned + size;
  if (end > want_end) ::munmap(reinterpret_cast<void*>(want_end), end - want_end);
  return reinterpret_cast<void*>(aligned);
}

bool protect(void* addr, size_t size, Access access) {
  int prot = access == Access::kNone ? PROT_NONE : access == Access::kRead ? PROT_READ : PROT_READ | PROT_WRITE;
  return ::mprotect(addr, size, prot) == 0;
}

bool move_mapping(void* from, void* to, size_t size) {
  void* p = ::mremap(from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to);
  return p == to;
}

namespace {
// pid << 32 | fd of the open /proc/self/mem, or 0.
constinit std::atomic<uint64_t> g_self_mem{0};
}  // namespace

long read_own_memory(void* dst, const void* src, size_t size) {
  const uint64_t pid = static_cast<uint64_t>(::syscall(SYS_getpid));
  uint64_t cur = g_self_mem.load(std::memory_order_acquire);
  if (cur >> 32 != pid) {
    int fd = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    uint64_t mine = pid << 32 | static_cast<uint32_t>(fd);
    // A descriptor inherited through fork still reads the parent's memory: close our copy.
    if (g_self_mem.compare_exchange_strong(cur, mine, std::memory_order_acq_rel)) {
      if (cur) ::close(static_cast<int>(cur & 0xffffffffu));
      cur = mine;
    } else {
      ::close(fd);
      if (cur >> 32 != pid) return -EAGAIN;
    }
  }
  const int fd = static_cast<int>(cur & 0xffffffffu);
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, static_cast<char*>(dst) + done, size - done,
                        static_cast<off_t>(reinterpret_cast<uintptr_t>(src) + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return done ? static_cast<long>(done) : -errno;
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<long>(done);
}

long read_pagemap(uintptr_t vaddr, uint64_t* entries, size_t n) {
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t got = ::pread(fd, entries, n * sizeof(uint64_t), static_cast<off_t>(vaddr / kPageSize * sizeof(uint64_t)));
  int err = errno;
  ::close(fd);
  return got < 0 ? -err : got / static_cast<long>(sizeof(uint64_t));
}

long read_pagemap_of(int pid, uintptr_t vaddr, uint64_t* entries, size_t n) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t got = ::pread(fd, entries, n * sizeof(uint64_t), static_cast<off_t>(vaddr / kPageSize * sizeof(uint64_t)));
  int err = errno;
  ::close(fd);
  return got < 0 ? -err : got / static_cast<long>(sizeof(uint64_t));
}

bool unmap(void* addr, size_t size) { return ::munmap(addr, size) == 0; }

bool discard(void* addr, size_t size) { return ::madvise(addr, size, MADV_DONTNEED) == 0; }

bool advise_huge_pages(void* addr, size_t size) { return ::madvise(addr, size, MADV_HUGEPAGE) == 0; }

int bind(void* addr, size_t size, const int* nodes, int n, BindMode mode, bool move) {
  constexpr int kMaxNode = 1024;
  unsigned long mask[kMaxNode / (8 * sizeof(unsigned long))] = {};
  for (int i = 0; i < n; ++i) {
    if (nodes[i] < 0 || nodes[i] >= kMaxNode) return -EINVAL;
    mask[nodes[i] / (8 * sizeof(unsigned long))] |= 1ul << (nodes[i] % (8 * sizeof(unsigned long)));
  }
  int policy = mode == BindMode::kBind ? MPOL_BIND : mode == BindMode::kInterleave ? MPOL_INTERLEAVE : MPOL_PREFERRED;
  // MPOL_PREFERRED_MANY (5.15+) keeps fallback semantics for a multi-node tier; older kernels get
  // the first (nearest) node preferred.
  if (mode == BindMode::kPreferred && n > 1) policy = 5 /* MPOL_PREFERRED_MANY */;
  unsigned flags = move ? MPOL_MF_MOVE : 0;
  long rc = syscall(SYS_mbind, addr, size, policy, mask, kMaxNode + 1, flags);
  if (rc != 0 && errno == EINVAL && policy == 5) {
    policy = MPOL_PREFERRED;
    std::memset(mask, 0, sizeof mask);
    mask[nodes[0] / (8 * sizeof(unsigned long))] |= 1ul << (nodes[0] % (8 * sizeof(unsigned long)));
    rc = syscall(SYS_mbind, addr, size, policy, mask, kMaxNode + 1, flags);
  }
  return rc == 0 ? 0 : -errno;
}

long move_pages(size_t count, void** pages, const int* nodes, int* status) {
  long rc = syscall(SYS_move_pages, 0, count, pages, nodes, status, nodes ? MPOL_MF_MOVE : 0);
  return rc < 0 ? -errno : rc;
}

int node_of(const void* addr) {
  void* page = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(addr) & ~(kPageSize - 1));
  int status = -ENOENT;
  long rc = move_pages(1, &page, nullptr, &status);
  if (rc < 0) return static_cast<int>(rc);
  return status;
}

int current_cpu() { return sched_getcpu(); }

long long node_free_bytes(int node) {
  char path[96];
  std::strcpy(path, "/sys/devices/system/node/node");
  char* p = path + std::strlen(path);
  char digits[12];
  int nd = 0;
  unsigned v = static_cast<unsigned>(node);
  do digits[nd++] = static_cast<char>('0' + v % 10), v /= 10; while (v);
  while (nd) *p++ = digits[--nd];
  std::strcpy(p, "/meminfo");
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[2048];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  const char* at = std::strstr(buf, "MemFree:");
  if (!at) return -1;
  at += 8;
  while (*at == ' ') ++at;
  long long kb = 0;
  bool any = false;
  while (*at >= '0' && *at <= '9') kb = kb * 10 + (*at++ - '0'), any = true;
  return any ? kb * 1024 : -1;
}

}  // namespace tieralloc::os
