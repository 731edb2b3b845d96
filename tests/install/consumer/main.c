/* A program outside the project that uses the installed C API. */
#include <stdio.h>
#include <tieralloc/tieralloc.h>

int main(void) {
  int n = tieralloc_tier_count();
  printf("tiers: %d\n", n);
  for (int i = 0; i < n; i++) {
    struct tieralloc_tier_info info;
    if (tieralloc_tier_info(i, &info) != 0) return 1;
    printf("tier %d: %s, %d node(s), %llu bytes%s\n", info.rank, info.kind, info.nnodes,
           (unsigned long long)info.capacity_bytes, info.emulated ? " (emulated)" : "");
  }
  return n > 0 ? 0 : 1;
}
