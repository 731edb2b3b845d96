// Included once by each test program that checks the kernel's default actions for SIGSEGV and
// SIGBUS (death by the signal). ASan and TSan install their own reporters for both before main;
// tieralloc would rightly chain to them as the previous disposition, so these programs ask the
// sanitizers to leave the two signals alone.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() { return "handle_segv=0:handle_sigbus=0"; }
#endif
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() { return "handle_segv=0:handle_sigbus=0"; }
#endif
