// A program for tests/poison/journal_cli_test.py: libtieralloc.so linked, one scenario per run, so
// that each starts as a real process does (reading TIERALLOC_QUARANTINE_FILE and the badblocks
// lists in the library's constructor) and ends as one does (normally, or killed by a machine
// check). It prints what the test needs on stdout, one "key value" per line.
//
//   consume   a page's frame, then a forged SIGBUS BUS_MCEERR_AR on one of its lines, with no
//             SIGBUS handler: the process dies by SIGBUS
//   report    a page's frame, then tieralloc_poison_report of one line; exits normally
//   repair    the same, then a repair write of the line
//   scan      a page's address and frame, waits for a line on stdin (meanwhile the test puts the
//             frame in the journal), calls tieralloc_poison_scan, and says whether the page moved
//             to another frame with its contents intact
//   start     allocates and checks 20000 objects after start-up (the library may have moved
//             pages off known-bad frames meanwhile)
// Every scenario ends by printing the statistics document ("stats {...}").
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/support/fault.h"
#include "tieralloc/tieralloc.h"

namespace {

constexpr size_t kPage = 4096;

uint64_t frame_of(const void* p) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  uint64_t e = 0;
  if (fd < 0 || pread(fd, &e, sizeof e, static_cast<off_t>(reinterpret_cast<uintptr_t>(p) / kPage * 8)) != 8) e = 0;
  if (fd >= 0) close(fd);
  return (e >> 63) ? (e & ((1ull << 55) - 1)) * kPage : 0;
}

char* pattern_page() {
  auto* p = static_cast<char*>(tieralloc_mallocx(kPage, TIERALLOC_ALIGN(kPage)));
  for (size_t i = 0; i < kPage; ++i) p[i] = static_cast<char>(i * 7 + 3);
  return p;
}

bool pattern_intact(const char* p) {
  for (size_t i = 0; i < kPage; ++i)
    if (p[i] != static_cast<char>(i * 7 + 3)) return false;
  return true;
}

void print_stats() {
  std::vector<char> buf(1 << 16);
  tieralloc_stats_json(buf.data(), buf.size());
  std::printf("stats %s\n", buf.data());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "consume") {
    char* p = pattern_page();
    std::printf("frame 0x%llx\n", static_cast<unsigned long long>(frame_of(p)));
    std::fflush(stdout);
    tieralloc::testing::send_fault(SIGBUS, BUS_MCEERR_AR, p + 5 * 64 + 9, 6);
    std::printf("survived\n");  // not reached: the default action of SIGBUS
    return 3;
  }
  if (mode == "report" || mode == "repair") {
    char* p = pattern_page();
    std::printf("frame 0x%llx\n", static_cast<unsigned long long>(frame_of(p)));
    int rc = tieralloc_poison_report(p + 2 * 64, 64);
    std::printf("report %d\n", rc);
    if (mode == "repair") {
      char fix[64];
      std::memset(fix, 'R', sizeof fix);
      std::printf("repair %d\n", tieralloc_repair_write(p + 2 * 64, fix, sizeof fix));
    }
    print_stats();
    return rc == 0 ? 0 : 1;
  }
  if (mode == "scan") {
    char* p = pattern_page();
    const uint64_t before = frame_of(p);
    std::printf("page %p\nframe 0x%llx\n", static_cast<void*>(p), static_cast<unsigned long long>(before));
    std::fflush(stdout);
    char line[64];
    if (!std::fgets(line, sizeof line, stdin)) return 4;
    int n = tieralloc_poison_scan();
    std::printf("scan %d errno %d\n", n, n < 0 ? errno : 0);
    const uint64_t after = frame_of(p);
    std::printf("moved %d\nintact %d\nquarantined %d\n", after != before && after != 0, pattern_intact(p) ? 1 : 0,
                tieralloc_poison_check(p, kPage));
    p[100] = 'w';  // still writable at the same address
    print_stats();
    return 0;
  }
  if (mode == "start") {
    std::vector<std::string*> v;
    for (int i = 0; i < 20000; ++i) v.push_back(new std::string(static_cast<size_t>(i % 300), static_cast<char>('a' + i % 26)));
    bool ok = true;
    for (int i = 0; i < 20000; ++i) ok = ok && *v[static_cast<size_t>(i)] == std::string(static_cast<size_t>(i % 300), static_cast<char>('a' + i % 26));
    for (auto* s : v) delete s;
    std::printf("objects %s\n", ok ? "ok" : "CORRUPT");
    print_stats();
    return ok ? 0 : 1;
  }
  std::fprintf(stderr, "journal_probe: unknown mode '%s'\n", mode.c_str());
  return 2;
}
