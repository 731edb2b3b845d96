// Allocator micro-benchmarks. The program calls plain malloc/free so that the allocator under test
// is whichever one the process binds them to (LD_PRELOAD); bench/compare_allocators.py runs it
// under each allocator in the same session. Built a second time with -DUSE_MEMKIND, it calls
// memkind's API instead, since memkind is not a malloc replacement.
#include <dlfcn.h>

#include <benchmark/benchmark.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>

#ifdef USE_MEMKIND
#include <memkind.h>
#endif

namespace {

#ifdef USE_MEMKIND
void* bench_alloc(size_t n) { return memkind_malloc(MEMKIND_DEFAULT, n); }
void bench_free(void* p) { memkind_free(MEMKIND_DEFAULT, p); }
#else
void* bench_alloc(size_t n) { return std::malloc(n); }
void bench_free(void* p) { std::free(p); }
#endif

// An allocator may hand out address space it has not backed yet; writing a byte makes each
// allocation cost what a real user of it pays, and keeps the compiler from eliding the pair.
inline void* alloc_touched(size_t n) {
  void* p = bench_alloc(n);
  if (p == nullptr) std::abort();
  static_cast<volatile char*>(p)[0] = 1;
  benchmark::DoNotOptimize(p);
  return p;
}

// Waits for the other side of the ring. Spinning alone would burn a whole time slice whenever the
// other thread is descheduled (2 CPUs, shared with the benchmark runner and the rest of the
// machine); after a short spin the waiter gives its CPU away.
class Backoff {
 public:
  void wait() {
    if (++spins_ < 64) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
  void reset() { spins_ = 0; }

 private:
  unsigned spins_ = 0;
};

void BM_MallocFree(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  for (auto _ : state) bench_free(alloc_touched(n));
  state.SetItemsProcessed(state.iterations());
}

// Bounded single-producer single-consumer ring; head and tail on their own cache lines so the
// benchmark measures the allocator's cross-thread free, not false sharing in the queue.
class SpscRing {
 public:
  static constexpr size_t kCapacity = 1024;  // power of two

  bool push(void* p) {
    size_t t = tail_.load(std::memory_order_relaxed);
    if (t - head_cache_ == kCapacity) {
      head_cache_ = head_.load(std::memory_order_acquire);
      if (t - head_cache_ == kCapacity) return false;
    }
    slots_[t & (kCapacity - 1)] = p;
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }

  // Hands every queued item to f once at least min_items are queued; returns how many. Taking
  // them in batches keeps the consumer off the cache lines the producer is writing: popping one
  // item at a time from a near-empty ring makes the two threads trade each slot and the indexes
  // per item, a queue cost that would swamp the allocator's and flip between runs.
  template <typename F>
  size_t drain(size_t min_items, F&& f) {
    size_t h = head_.load(std::memory_order_relaxed);
    size_t t = tail_.load(std::memory_order_acquire);
    if (t - h < min_items || t == h) return 0;
    for (size_t i = h; i != t; ++i) f(slots_[i & (kCapacity - 1)]);
    head_.store(t, std::memory_order_release);
    return t - h;
  }

 private:
  static constexpr size_t kLine = 64;
  alignas(kLine) std::atomic<size_t> head_{0};
  alignas(kLine) std::atomic<size_t> tail_{0};
  alignas(kLine) size_t head_cache_ = 0;  // producer's view of head_
  alignas(kLine) void* slots_[kCapacity] = {};
};

// The benchmark thread allocates, a second thread frees: every object is freed by a thread that
// did not allocate it, the path where allocators hand memory back across thread caches.
void BM_CrossThreadFree(benchmark::State& state) {
  constexpr size_t kBatch = SpscRing::kCapacity / 16;
  const auto n = static_cast<size_t>(state.range(0));
  SpscRing ring;
  std::atomic<bool> done{false};
  std::thread consumer([&] {
    Backoff backoff;
    for (;;) {
      // done is read before draining: once it is seen set, a drain that finds nothing means
      // the last push has been consumed.
      bool finishing = done.load(std::memory_order_acquire);
      if (ring.drain(finishing ? 1 : kBatch, bench_free)) {
        backoff.reset();
      } else if (finishing) {
        return;
      } else {
        backoff.wait();
      }
    }
  });
  Backoff backoff;
  for (auto _ : state) {
    void* p = alloc_touched(n);
    while (!ring.push(p)) backoff.wait();
    backoff.reset();
  }
  done.store(true, std::memory_order_release);
  consumer.join();
  state.SetItemsProcessed(state.iterations());
}

// Real time throughout: with threads, items/s is then the process's aggregate throughput and the
// reported time per iteration its inverse, both comparable across allocators.
void sizes(benchmark::internal::Benchmark* b) {
  for (long n : {16L, 64L, 256L, 1L << 10, 4L << 10, 16L << 10, 64L << 10, 256L << 10, 1L << 20}) b->Arg(n);
  b->UseRealTime();
}

BENCHMARK(BM_MallocFree)->Apply(sizes);
BENCHMARK(BM_MallocFree)->Apply(sizes)->Threads(2);
BENCHMARK(BM_CrossThreadFree)->Arg(64)->Arg(4 << 10)->UseRealTime();

// Which library malloc is bound to, recorded in the JSON context so that the comparison script
// can tell a preload that silently did not take effect from one that did.
std::string malloc_provider() {
#ifdef USE_MEMKIND
  return "memkind";
#else
  Dl_info info{};
  void* sym = dlsym(RTLD_DEFAULT, "malloc");
  if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "unknown";
  return info.dli_fname;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("malloc_provider", malloc_provider());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
