// Stress and semantics checks of the malloc family, run by test_stress.py with and without
// LD_PRELOAD=libtieralloc.so. Deliberately NOT linked to tieralloc: whatever malloc the process
// has is the one tested. Exits 1 with a message on the first failed check.
//
//   stress semantics        prints one line per implementation-defined behaviour (realloc(p, 0),
//                           ...); the driver requires the same lines with and without the preload
//   stress all DSO [SECS]   every check below, with worker threads, forks, dlopen and C++ new
//
// Compiled with -fno-builtin so the compiler cannot fold or elide malloc/free pairs.
#include <dlfcn.h>
#include <stdarg.h>
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <deque>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

[[noreturn]] void die(const char* file, int line, const std::string& msg) {
  fprintf(stderr, "FAIL stress.cc:%d: %s\n", line, msg.c_str());
  (void)file;
  fflush(stderr);
  _exit(1);
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// Semantics checks record a failure and go on, so one run reports every deviation.
std::atomic<int> g_failures{0};
#define EXPECT(cond, ...)                                                                          \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "FAIL stress.cc:%d: %s: %s\n", __LINE__, #cond, fmt(__VA_ARGS__).c_str()); \
      g_failures.fetch_add(1);                                                                     \
    }                                                                                              \
  } while (0)

#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond)) die(__FILE__, __LINE__, std::string(#cond ": ") + fmt(__VA_ARGS__)); \
  } while (0)

// Sizes and pointers the optimiser must not see through.
volatile size_t v_huge = SIZE_MAX / 2;
volatile size_t v_zero = 0;

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
};

// The pattern of a block: word i is f(seed, i); a tail shorter than a word gets the low bytes.
inline uint64_t pat(uint64_t seed, size_t i) { return (seed ^ (i * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull; }

void fill(void* p, size_t n, uint64_t seed) {
  auto* w = static_cast<unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = pat(seed, i / 8);
    memcpy(w + i, &v, 8);
  }
  uint64_t v = pat(seed, i / 8);
  for (size_t k = 0; i < n; ++i, ++k) w[i] = static_cast<unsigned char>(v >> (8 * k));
}

// Checks the first n bytes carry seed's pattern; returns the first bad offset or SIZE_MAX.
size_t verify(const void* p, size_t n, uint64_t seed) {
  auto* w = static_cast<const unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    memcpy(&v, w + i, 8);
    if (v != pat(seed, i / 8)) return i;
  }
  uint64_t v = pat(seed, i / 8);
  for (size_t k = 0; i < n; ++i, ++k)
    if (w[i] != static_cast<unsigned char>(v >> (8 * k))) return i;
  return SIZE_MAX;
}

#define CHECK_PATTERN(p, n, seed, what)                                                                  \
  do {                                                                                                   \
    size_t bad_ = verify((p), (n), (seed));                                                              \
    CHECK(bad_ == SIZE_MAX, "%s: block %p of %zu bytes corrupted at offset %zu", what, (void*)(p), (size_t)(n), bad_); \
  } while (0)

bool is_aligned(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

long rss_kib() {
  long size = 0, resident = 0;
  if (FILE* f = fopen("/proc/self/statm", "r")) {
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    fclose(f);
  }
  return resident * static_cast<long>(kPage / 1024);
}

// ---------------------------------------------------------------------------------------------
// Semantics: behaviour the standards fix is asserted; implementation-defined behaviour is
// printed ("semantics: ..." lines) for the driver to compare with glibc's.

void semantics(bool print) {
  auto say = [&](const std::string& s) {
    if (print) printf("semantics: %s\n", s.c_str());
  };
  // Behaviour outside what the standards and glibc's manual promise: shown, not compared.
  auto info = [&](const std::string& s) {
    if (print) printf("info: %s\n", s.c_str());
  };

  // malloc(0): glibc returns a unique, freeable, non-NULL pointer.
  void* a = malloc(v_zero);
  void* b = malloc(v_zero);
  EXPECT(a && b && a != b, "malloc(0) gave %p and %p (want two distinct non-NULL pointers)", a, b);
  free(a);
  free(b);
  say("malloc(0): unique non-NULL");

  // realloc(p, 0): glibc (REALLOC_ZERO_BYTES_FREES) frees p and returns NULL. Other allocators
  // may return a minimum-size block instead; the driver compares this line with glibc's.
  void* p = malloc(100);
  CHECK(p, "malloc(100) failed");
  errno = 0;
  void* q = realloc(p, v_zero);
  if (q) {
    say("realloc(p, 0): non-NULL minimum block (p freed, block must be freed)");
    free(q);
  } else {
    say("realloc(p, 0): NULL, p freed");
  }
  // realloc(NULL, 0) is malloc(0).
  q = realloc(nullptr, v_zero);
  EXPECT(q, "realloc(NULL, 0) returned NULL (want malloc(0)'s unique pointer)");
  free(q);
  say("realloc(NULL, 0): non-NULL");

  // Failures: NULL + ENOMEM, and the original block left intact.
  errno = 0;
  p = malloc(v_huge);
  EXPECT(!p && errno == ENOMEM, "malloc(SIZE_MAX/2) = %p errno %d (want NULL, ENOMEM)", p, errno);
  errno = 0;
  p = calloc(v_huge, 4);
  EXPECT(!p && errno == ENOMEM, "calloc(SIZE_MAX/2, 4) = %p errno %d (want NULL, ENOMEM)", p, errno);
  errno = 0;
  p = calloc(v_huge / 2, 2);  // no overflow, but far too big
  EXPECT(!p && errno == ENOMEM, "calloc(SIZE_MAX/4, 2) = %p errno %d (want NULL, ENOMEM)", p, errno);
  void* keep = malloc(1000);
  CHECK(keep, "malloc(1000) failed");
  fill(keep, 1000, 42);
  errno = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuse-after-free"  // a failed reallocarray/realloc leaves keep valid
  q = reallocarray(keep, v_huge, 3);  // nmemb * size overflows
  EXPECT(!q && errno == ENOMEM, "reallocarray(p, SIZE_MAX/2, 3) = %p errno %d (want NULL, ENOMEM)", q, errno);
  if (q) keep = q;
  CHECK_PATTERN(keep, 1000, 42, "block after failed reallocarray");
  errno = 0;
  q = realloc(keep, v_huge);
  // jemalloc 5.3.0's realloc() returns NULL here without setting errno (fixed upstream after 5.3.0);
  // tieralloc's realloc wrapper sets it. glibc and POSIX: NULL with errno ENOMEM.
  EXPECT(!q && errno == ENOMEM, "realloc(p, SIZE_MAX/2) = %p errno %d (want NULL, ENOMEM)", q, errno);
  if (q) keep = q;
  CHECK_PATTERN(keep, 1000, 42, "block after failed realloc");
#pragma GCC diagnostic pop
  q = reallocarray(keep, 250, 8);
  CHECK(q, "reallocarray(p, 250, 8) failed");
  CHECK_PATTERN(q, 1000, 42, "block after reallocarray growth");
  free(q);
  say("malloc/calloc/realloc/reallocarray too big or overflowing: NULL, ENOMEM, block intact");

  // posix_memalign reports errors by return value; EINVAL for a bad alignment.
  void* r = reinterpret_cast<void*>(1);
  int rc = posix_memalign(&r, 24, 64);
  EXPECT(rc == EINVAL, "posix_memalign(align 24) returned %d (want EINVAL)", rc);
  rc = posix_memalign(&r, 0, 64);
  EXPECT(rc == EINVAL, "posix_memalign(align 0) returned %d (want EINVAL)", rc);
  rc = posix_memalign(&r, 64, v_huge);
  EXPECT(rc == ENOMEM, "posix_memalign(64, SIZE_MAX/2) returned %d (want ENOMEM)", rc);
  rc = posix_memalign(&r, 64, v_zero);
  EXPECT(rc == 0 && r && is_aligned(r, 64), "posix_memalign(64, 0) returned %d, %p", rc, r);
  free(r);
  say("posix_memalign: EINVAL for alignment 24 and 0, ENOMEM for SIZE_MAX/2");

  EXPECT(malloc_usable_size(nullptr) == 0, "malloc_usable_size(NULL) = %zu", malloc_usable_size(nullptr));
  free(nullptr);
  say("free(NULL): no-op; malloc_usable_size(NULL): 0");

  // pvalloc(0): glibc 2.36 gives a page-aligned minimum-size block, not a whole page.
  p = pvalloc(v_zero);
  EXPECT(p && is_aligned(p, kPage), "pvalloc(0) = %p", p);
  info(fmt("pvalloc(0): usable size %zu", malloc_usable_size(p)));
  free(p);
  p = pvalloc(kPage + 1);
  EXPECT(p && is_aligned(p, kPage) && malloc_usable_size(p) >= 2 * kPage, "pvalloc(page+1) = %p usable %zu", p,
        p ? malloc_usable_size(p) : 0);
  free(p);
  say("pvalloc: page aligned, rounded up to whole pages");

  p = calloc(v_zero, 16);
  EXPECT(p, "calloc(0, 16) returned NULL");
  free(p);
  say("calloc(0, n): non-NULL");

  // A big allocation touched at both ends must cost about two pages of memory, or fail cleanly
  // with ENOMEM (glibc on a machine with less memory than that).
  // This once cost tieralloc 41 MB of page-map entries (one per page mapped, touched or not).
  {
    const size_t big = size_t{32} << 30;
    long before = rss_kib();
    errno = 0;
    auto* b = static_cast<volatile char*>(malloc(big));
    if (!b) {
      EXPECT(errno == ENOMEM, "malloc(32 GiB) = NULL with errno %d (want ENOMEM)", errno);
    } else {
      b[0] = 1;
      b[big - 1] = 2;
      long grown = rss_kib() - before;
      free(const_cast<char*>(b));
      EXPECT(grown < 8 * 1024, "malloc(32 GiB) touched at both ends grew the resident set by %ld KiB (want < 8 MiB)",
             grown);
    }
  }

  // Alignments that are not powers of two (glibc < 2.38 rounds them up; C17 lets it fail).
  errno = 0;
  p = aligned_alloc(24, 48);
  info(fmt("aligned_alloc(24, 48): %s errno %d", p ? "non-NULL" : "NULL", p ? 0 : errno));
  free(p);
  errno = 0;
  p = memalign(24, 48);
  info(fmt("memalign(24, 48): %s errno %d", p ? "non-NULL" : "NULL", p ? 0 : errno));
  free(p);
}

// ---------------------------------------------------------------------------------------------
// Worker threads.

struct Block {
  void* p = nullptr;
  size_t n = 0;
  uint64_t seed = 0;
  int kind = 0;  // 0 malloc family, 1 new[]
};

std::mutex g_queue_lock;
// Blocks freed by a thread other than the one that allocated them. Never destroyed: a child that
// leaves through exit() may have forked while a worker was changing it.
std::deque<Block>& g_queue = *new std::deque<Block>;
std::atomic<bool> g_stop{false};
std::atomic<uint64_t> g_ops{0}, g_cross_frees{0}, g_bytes{0};

size_t pick_size(Rng& r) {
  size_t k = r.below(1000);
  if (k < 700) return 8 + r.below(249);                  // 8 B .. 256 B
  if (k < 900) return 257 + r.below(8 * 1024 - 256);     // .. 8 KiB
  if (k < 985) return 8 * 1024 + r.below(248 * 1024);    // .. 256 KiB
  return 256 * 1024 + r.below(4 * 1024 * 1024 - 256 * 1024 + 1);  // .. 4 MiB
}

void release(Block& b, const char* what) {
  if (!b.p) return;
  CHECK_PATTERN(b.p, b.n, b.seed, what);
  if (b.kind == 1) delete[] static_cast<unsigned char*>(b.p);
  else free(b.p);
  b.p = nullptr;
}

void check_usable(void* p, size_t n, const char* fn) {
  size_t u = malloc_usable_size(p);
  CHECK(u >= n, "%s(%zu): malloc_usable_size %zu < request", fn, n, u);
}

Block alloc_aligned(Rng& r, uint64_t seed) {
  static const size_t aligns[] = {8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192, 65536, 1 << 21};
  size_t a = aligns[r.below(sizeof aligns / sizeof *aligns)];
  size_t n = r.below(4) == 0 ? pick_size(r) : 1 + r.below(512);
  void* p = nullptr;
  const char* fn = "";
  switch (r.below(5)) {
    case 0: {
      fn = "posix_memalign";
      int rc = posix_memalign(&p, a, n);
      CHECK(rc == 0 && p, "posix_memalign(%zu, %zu) returned %d", a, n, rc);
      break;
    }
    case 1:
      fn = "aligned_alloc";
      n = (n + a - 1) / a * a;  // C11: size a multiple of the alignment
      p = aligned_alloc(a, n);
      break;
    case 2:
      fn = "memalign";
      p = memalign(a, n);
      break;
    case 3:
      fn = "valloc";
      a = kPage;
      p = valloc(n);
      break;
    default:
      fn = "pvalloc";
      a = kPage;
      p = pvalloc(n);
      CHECK(p == nullptr || malloc_usable_size(p) >= (n + kPage - 1) / kPage * kPage,
            "pvalloc(%zu): usable %zu not rounded up to pages", n, malloc_usable_size(p));
      break;
  }
  CHECK(p, "%s(align %zu, %zu) returned NULL (errno %d)", fn, a, n, errno);
  CHECK(is_aligned(p, a), "%s(align %zu, %zu) returned misaligned %p", fn, a, n, p);
  check_usable(p, n, fn);
  fill(p, n, seed);
  return Block{p, n, seed, 0};
}

struct alignas(256) Aligned256 {
  unsigned char bytes[300];
};

void cxx_round(Rng& r, uint64_t seed) {
  auto* one = new Aligned256;
  CHECK(is_aligned(one, 256), "new alignas(256) returned %p", static_cast<void*>(one));
  fill(one->bytes, sizeof one->bytes, seed);
  size_t count = 1 + r.below(20);
  auto* many = new Aligned256[count];
  CHECK(is_aligned(many, 256), "new alignas(256)[%zu] returned %p", count, static_cast<void*>(many));
  for (size_t i = 0; i < count; ++i) fill(many[i].bytes, sizeof many[i].bytes, seed + i);
  for (size_t i = 0; i < count; ++i) CHECK_PATTERN(many[i].bytes, sizeof many[i].bytes, seed + i, "new Aligned256[]");
  CHECK_PATTERN(one->bytes, sizeof one->bytes, seed, "new Aligned256");
  delete[] many;
  delete one;

  size_t a = size_t{1} << (4 + r.below(10));  // 16 .. 8192
  size_t n = 1 + r.below(100000);
  void* p = ::operator new(n, std::align_val_t(a));
  CHECK(is_aligned(p, a), "operator new(%zu, align %zu) returned %p", n, a, p);
  fill(p, n, seed);
  CHECK_PATTERN(p, n, seed, "operator new(align)");
  if (r.below(2)) ::operator delete(p, n, std::align_val_t(a));
  else ::operator delete(p, std::align_val_t(a));

  std::vector<std::string> v;
  std::map<int, std::string> m;
  for (int i = 0; i < 200; ++i) {
    v.emplace_back(static_cast<size_t>(i * 13 % 500), static_cast<char>('A' + i % 26));
    m[i * 7919 % 1000] = v.back();
  }
  for (int i = 0; i < 200; ++i) {
    const std::string& s = m.at(i * 7919 % 1000);
    CHECK(s.size() == static_cast<size_t>(i * 13 % 500) && (s.empty() || s[0] == 'A' + i % 26),
          "std::map<int, std::string> entry %d corrupted", i);
  }
}

void worker(int id, uint64_t iterations) {
  Rng r(static_cast<uint64_t>(id) + 1);
  std::vector<Block> slots(256);
  uint64_t seed = static_cast<uint64_t>(id) << 40;
  for (uint64_t it = 0; it < iterations && !g_stop.load(std::memory_order_relaxed); ++it) {
    Block& s = slots[r.below(slots.size())];
    ++seed;
    size_t op = r.below(100);
    if (op < 45) {  // malloc
      release(s, "malloc block before free");
      size_t n = pick_size(r);
      s.p = malloc(n);
      CHECK(s.p, "malloc(%zu) returned NULL", n);
      check_usable(s.p, n, "malloc");
      s.n = n, s.seed = seed, s.kind = 0;
      fill(s.p, n, seed);
      g_bytes += n;
    } else if (op < 55) {  // calloc: zero, even when recycling dirty memory
      release(s, "block before calloc");
      size_t n = pick_size(r);
      size_t nmemb = 1 + r.below(8);
      size_t each = (n + nmemb - 1) / nmemb;
      auto* p = static_cast<unsigned char*>(calloc(nmemb, each));
      CHECK(p, "calloc(%zu, %zu) returned NULL", nmemb, each);
      for (size_t i = 0; i < nmemb * each; ++i)
        CHECK(p[i] == 0, "calloc(%zu, %zu) = %p: byte %zu is %#x, not zero", nmemb, each, static_cast<void*>(p), i, p[i]);
      check_usable(p, nmemb * each, "calloc");
      s = Block{p, nmemb * each, seed, 0};
      fill(p, s.n, seed);
    } else if (op < 65) {  // realloc in place or moving, both directions
      if (!s.p || s.kind != 0) continue;
      size_t n = r.below(3) == 0 ? 1 + r.below(s.n) : pick_size(r);
      void* q = realloc(s.p, n);
      CHECK(q, "realloc(%p, %zu) returned NULL", s.p, n);
      CHECK_PATTERN(q, n < s.n ? n : s.n, s.seed, "realloc kept prefix");
      check_usable(q, n, "realloc");
      s.p = q, s.n = n, s.seed = seed;
      fill(q, n, seed);
    } else if (op < 73) {  // hand to another thread; free one another thread handed over
      Block theirs;
      {
        std::lock_guard<std::mutex> g(g_queue_lock);
        if (s.p) g_queue.push_back(s), s.p = nullptr;
        if (g_queue.size() > 64 || (!g_queue.empty() && r.below(2))) {
          theirs = g_queue.front();
          g_queue.pop_front();
        }
      }
      if (theirs.p) {
        release(theirs, "block freed by another thread");
        ++g_cross_frees;
      }
    } else if (op < 80) {  // aligned family
      release(s, "block before aligned alloc");
      s = alloc_aligned(r, seed);
    } else if (op < 85) {  // a realloc chain: grow from a few bytes to up to 4 MiB and back
      size_t n = 1 + r.below(64);
      void* p = malloc(n);
      CHECK(p, "malloc(%zu) failed", n);
      fill(p, n, seed);
      size_t top = size_t{64} << r.below(17);
      while (n < top) {
        size_t m = n * 2 + r.below(n + 1);
        p = realloc(p, m);
        CHECK(p, "realloc chain: realloc to %zu returned NULL", m);
        CHECK_PATTERN(p, n, seed, "realloc chain (growing)");
        fill(p, m, seed);
        n = m;
      }
      while (n > 16) {
        size_t m = n / 3;
        p = realloc(p, m);
        CHECK(p, "realloc chain: realloc to %zu returned NULL", m);
        CHECK_PATTERN(p, m, seed, "realloc chain (shrinking)");
        n = m;
      }
      free(p);
    } else if (op < 92) {  // C++
      release(s, "block before new[]");
      size_t n = pick_size(r);
      auto* p = new unsigned char[n];
      fill(p, n, seed);
      s = Block{p, n, seed, 1};
      if (r.below(16) == 0) cxx_round(r, seed);
    } else {  // write the whole usable size, as malloc_usable_size allows
      release(s, "block before usable-size write");
      size_t n = pick_size(r);
      void* p = malloc(n);
      CHECK(p, "malloc(%zu) returned NULL", n);
      size_t u = malloc_usable_size(p);
      CHECK(u >= n, "malloc(%zu): malloc_usable_size %zu", n, u);
      s = Block{p, u, seed, 0};
      fill(p, u, seed);
    }
    g_ops.fetch_add(1, std::memory_order_relaxed);
  }
  for (auto& b : slots) release(b, "block at thread end");
}

// ---------------------------------------------------------------------------------------------
// fork() while the workers allocate: the child must be able to allocate (no lock left held by a
// thread that does not exist in it), free memory inherited from the parent, start threads, exit.

void child_work(int round, Block& inherited) {
  Rng r(1000 + static_cast<uint64_t>(round));
  CHECK_PATTERN(inherited.p, inherited.n, inherited.seed, "block inherited across fork");
  free(inherited.p);
  std::vector<Block> blocks;
  for (int i = 0; i < 2000; ++i) {
    size_t n = pick_size(r);
    void* p = malloc(n);
    CHECK(p, "child: malloc(%zu) returned NULL", n);
    fill(p, n, static_cast<uint64_t>(i));
    blocks.push_back(Block{p, n, static_cast<uint64_t>(i), 0});
    if (r.below(2)) {
      Block& b = blocks[r.below(blocks.size())];
      release(b, "child block");
    }
  }
  std::thread t([] {
    for (int i = 0; i < 1000; ++i) {
      auto* v = new std::vector<int>(static_cast<size_t>(i % 300));
      delete v;
      free(malloc(static_cast<size_t>(i) * 997 % 300000 + 1));
    }
  });
  t.join();
  for (auto& b : blocks) release(b, "child block at exit");
}

void fork_rounds(int rounds) {
  for (int round = 0; round < rounds; ++round) {
    usleep(20000);
    Block inherited{malloc(5000), 5000, 77, 0};
    CHECK(inherited.p, "malloc(5000) failed");
    fill(inherited.p, inherited.n, inherited.seed);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed: %s", strerror(errno));
    if (pid == 0) {
      alarm(60);  // a deadlocked child dies of SIGALRM rather than hanging the test
      child_work(round, inherited);
      // Half the children leave through exit() (atexit handlers, tieralloc's statistics), half
      // through _exit().
      if (round % 2) exit(0);
      _exit(0);
    }
    int status = 0;
    pid_t w = -1;
    for (int waited_ms = 0; waited_ms < 60000; waited_ms += 10) {
      w = waitpid(pid, &status, WNOHANG);
      if (w != 0) break;
      usleep(10000);
    }
    if (w == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      die(__FILE__, __LINE__, fmt("fork round %d: child still running after 60 s (deadlock in malloc after fork?)", round));
    }
    CHECK(w == pid, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork round %d: child %s %d", round,
          WIFSIGNALED(status) ? "killed by signal" : "exited with status",
          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    CHECK_PATTERN(inherited.p, inherited.n, inherited.seed, "parent's block after fork");
    free(inherited.p);
  }
}

// ---------------------------------------------------------------------------------------------
// dlopen/dlclose of a library that allocates in its constructor, destructor and functions.

void dlopen_rounds(const char* dso, int rounds) {
  for (int round = 0; round < rounds; ++round) {
    void* h = dlopen(dso, RTLD_NOW | RTLD_LOCAL);
    CHECK(h, "dlopen(%s): %s", dso, dlerror());
    auto work = reinterpret_cast<long (*)(int)>(dlsym(h, "dso_work"));
    auto dup = reinterpret_cast<char* (*)(const char*)>(dlsym(h, "dso_strdup"));
    CHECK(work && dup, "dlsym in %s: %s", dso, dlerror());
    int n = 200 + round;
    long expect = 1000;  // the library's vector of strings
    for (int i = 0; i < n; ++i) expect += 2 * (i & 0xff) + (i % 1000) % 300 + 1;
    long got = work(n);
    CHECK(got == expect, "dso_work(%d) = %ld, want %ld", n, got, expect);
    char* s = dup("allocated inside the library, freed after dlclose");
    CHECK(dlclose(h) == 0, "dlclose: %s", dlerror());
    CHECK(strcmp(s, "allocated inside the library, freed after dlclose") == 0, "dso_strdup result corrupted");
    free(s);

    void* m = dlopen("libm.so.6", RTLD_NOW);
    CHECK(m, "dlopen(libm.so.6): %s", dlerror());
    auto c = reinterpret_cast<double (*)(double)>(dlsym(m, "cos"));
    CHECK(c && std::fabs(c(0.0) - 1.0) < 1e-12, "cos from libm.so.6 wrong");
    CHECK(dlclose(m) == 0, "dlclose(libm): %s", dlerror());
  }
}

void cxx_failures() {
  void* p = ::operator new(v_huge, std::nothrow);
  CHECK(p == nullptr, "operator new(SIZE_MAX/2, nothrow) = %p (want nullptr)", p);
  bool threw = false;
  try {
    p = ::operator new(v_huge);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  CHECK(threw, "operator new(SIZE_MAX/2) did not throw std::bad_alloc");
  threw = false;
  try {
    p = ::operator new(v_huge, std::align_val_t(4096));
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  CHECK(threw, "operator new(SIZE_MAX/2, align 4096) did not throw std::bad_alloc");
}

double seconds_since(const timespec& t0) {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec - t0.tv_sec) + static_cast<double>(t.tv_nsec - t0.tv_nsec) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: %s semantics | all DSO [ITERATIONS]\n", argv[0]);
    return 2;
  }
  // Which allocator serves this process: tieralloc exports tieralloc_stats_json.
  printf("allocator: %s\n", dlsym(RTLD_DEFAULT, "tieralloc_stats_json") ? "tieralloc" : "other");
  if (strcmp(argv[1], "semantics") == 0) {
    semantics(true);
    return g_failures.load() ? 1 : 0;
  }
  if (strcmp(argv[1], "all") != 0 || argc < 3) {
    fprintf(stderr, "usage: %s semantics | all DSO [ITERATIONS]\n", argv[0]);
    return 2;
  }
  const char* dso = argv[2];
  uint64_t iterations = argc > 3 ? strtoull(argv[3], nullptr, 10) : 25000;
  timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);

  semantics(false);
  cxx_failures();

  const int nthreads = 4;
  std::vector<std::thread> threads;
  for (int i = 0; i < nthreads; ++i) threads.emplace_back(worker, i, iterations);
  // While they run: forks, then dlopen rounds.
  fork_rounds(6);
  dlopen_rounds(dso, 20);
  for (auto& t : threads) t.join();
  size_t left = 0;
  for (auto& b : g_queue) release(b, "queued block at end"), ++left;
  g_queue.clear();
  printf("ok: %d threads, %llu operations, %llu cross-thread frees (%zu at the end), %llu MiB malloc'd, "
         "6 forks, 20 dlopen rounds, %.1f s\n",
         nthreads, static_cast<unsigned long long>(g_ops.load()), static_cast<unsigned long long>(g_cross_frees.load()),
         left, static_cast<unsigned long long>(g_bytes.load() >> 20), seconds_since(t0));
  if (int n = g_failures.load()) {
    fprintf(stderr, "FAIL: %d semantics check(s) failed (see above)\n", n);
    return 1;
  }
  return 0;
}
