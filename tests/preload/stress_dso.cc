// A small shared library that test_stress.py's stress program dlopen()s and dlclose()s many times:
// its constructor and destructor allocate and free (as many real plugins do), and its functions
// allocate with whatever malloc the process has -- under LD_PRELOAD, tieralloc's.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
std::vector<std::string>* g_strings;

__attribute__((constructor)) void dso_init() {
  g_strings = new std::vector<std::string>;
  for (int i = 0; i < 1000; ++i) g_strings->push_back(std::string(static_cast<size_t>(i % 300 + 1), static_cast<char>('a' + i % 26)));
}

__attribute__((destructor)) void dso_fini() {
  delete g_strings;
  g_strings = nullptr;
}
}  // namespace

extern "C" {
// Allocates, fills and frees n blocks of varied sizes; returns a checksum the caller recomputes.
__attribute__((visibility("default"))) long dso_work(int n) {
  long sum = 0;
  for (int i = 0; i < n; ++i) {
    size_t size = static_cast<size_t>(i) * 7919 % 200000 + 1;
    auto* p = static_cast<unsigned char*>(malloc(size));
    if (!p) return -1;
    memset(p, i & 0xff, size);
    sum += p[size - 1] + p[size / 2];
    char* s = strdup((*g_strings)[static_cast<size_t>(i) % g_strings->size()].c_str());
    sum += static_cast<long>(strlen(s));
    free(s);
    free(p);
  }
  return sum + static_cast<long>(g_strings->size());
}

// Memory handed out by the library and freed by the caller, after dlclose.
__attribute__((visibility("default"))) void* dso_strdup(const char* s) { return strdup(s); }
}
