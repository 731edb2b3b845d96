"""Shared by the CLI tests: a check that records failures, the closing summary line, and an
environment free of tieralloc settings inherited from the caller."""
import os
import sys

failures = 0


def check(cond, what):
    global failures
    print(("ok      " if cond else "FAILED  ") + what)
    if not cond:
        failures += 1


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERALLOC_") and k != "LD_PRELOAD"}
    env.update(extra)
    return env


def finish(name):
    print("%s: %d failure(s)" % (name, failures))
    sys.exit(1 if failures else 0)
