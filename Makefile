# The two commands of the README, plus the pieces they are made of.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# Passed to both comparison scripts, e.g. BENCH_FLAGS=--quick or BENCH_FLAGS="--rounds 5".
BENCH_FLAGS ?=

.PHONY: run test bench deps bench-deps configure build install clean

run: build
	$(BUILD)/tool/tieralloc topology

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Allocator comparison (reports, not pass/fail): ratios against peers measured in the same run.
bench: bench-deps build
	python3 bench/compare_allocators.py --build $(BUILD) --out $(BUILD)/bench/allocators.json $(BENCH_FLAGS)
	python3 bench/redis_compare.py --build $(BUILD) --out $(BUILD)/bench/redis.json $(BENCH_FLAGS)

deps:
	@scripts/install-deps.sh

bench-deps:
	@scripts/install-deps.sh --bench

configure: deps
	@test -f $(BUILD)/build.ninja || cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD)
