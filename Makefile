# The two commands of the README, plus the pieces they are made of.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# Passed to every benchmark script, e.g. BENCH_FLAGS=--quick or BENCH_FLAGS="--rounds 5".
BENCH_FLAGS ?=

.PHONY: run test test-guest test-sanitizers bench deps bench-deps guest-deps configure build install clean

# The main job: what each placement costs on this machine (real tiers, or an emulated fast/slow
# split of a one-tier machine, as its first line says), about a minute; charts and tables land in
# tieralloc-results/.
run: build
	$(BUILD)/tool/tieralloc bench compare --plot tieralloc-results/

test: build guest-deps
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Only the guest-kernel tests (tests/guest/): real tiers and real poison under QEMU. `make test`
# runs them too.
test-guest: build guest-deps
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) -L guest

# The unit suites (topology, API, multi-threaded stress) in ASan+UBSan and TSan builds. Real
# programs under LD_PRELOAD are left out: a sanitized libtieralloc.so cannot be preloaded into
# unsanitized programs. jemalloc itself is prebuilt, so TSan is told to skip its internals.
SANITIZER_EXCLUDE = ^(tool_|install_|preload_|bench_
# Under TSan the signal layer is built uninstrumented (TSan's start-up calls the interposed
# sigaction) and tells TSan about its lock itself; the fork cases of the engine and site suites are
# left out there (tests/CMakeLists.txt).
test-sanitizers: deps
	@for s in address thread; do \
	  test -f $(BUILD)-$$s/build.ninja || cmake -S . -B $(BUILD)-$$s -G Ninja -DTIERALLOC_SANITIZE=$$s -DTIERALLOC_BUILD_BENCH=OFF || exit 1; \
	  cmake --build $(BUILD)-$$s -j $(JOBS) --target topology_test api_test hwloc_view_test signals_test poison_test poison_files_test policy_test damon_test engine_test sites_test || exit 1; \
	  TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp halt_on_error=1" \
	    ctest --test-dir $(BUILD)-$$s --output-on-failure -j $(JOBS) -E '$(SANITIZER_EXCLUDE))' || exit 1; \
	done

# Benchmarks (reports, not pass/fail), each figure a ratio against peers or baselines measured in the
# same run: the allocator comparison, redis, and the poison and migration micro-benchmarks, merged
# with the machine's description into one JSON.
BENCH_OUT = $(BUILD)/bench
bench: bench-deps build
	python3 bench/compare_allocators.py --build $(BUILD) --out $(BENCH_OUT)/allocators.json $(BENCH_FLAGS)
	python3 bench/redis_compare.py --build $(BUILD) --out $(BENCH_OUT)/redis.json $(BENCH_FLAGS)
	python3 bench/microbench.py --build $(BUILD) --out $(BENCH_OUT)/micro.json $(BENCH_FLAGS)
	python3 bench/merge_results.py --out $(BENCH_OUT)/bench.json allocators=$(BENCH_OUT)/allocators.json \
	  redis=$(BENCH_OUT)/redis.json micro=$(BENCH_OUT)/micro.json

deps:
	@scripts/install-deps.sh

bench-deps:
	@scripts/install-deps.sh --bench

guest-deps:
	@scripts/install-deps.sh --guest

configure: deps
	@test -f $(BUILD)/build.ninja || cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD)
