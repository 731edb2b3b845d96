/* Forced into every file of tieralloc's jemalloc build (alloc/CMakeLists.txt). jemalloc's fast
   paths (malloc, free, sdallocx and the C++ operators) fall back to these three functions; made
   weak, the calls become relocations that the link resolves to tieralloc's definitions
   (alloc/preload.cc), and the compiler assumes nothing about their bodies. */
#pragma weak je_malloc_default
#pragma weak je_free_default
#pragma weak je_sdallocx_default
