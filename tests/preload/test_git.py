#!/usr/bin/env python3
"""git under LD_PRELOAD=libtieralloc.so on a scratch repository: init, add a few hundred files,
commit (several times), log, gc, fsck. The same script runs once without the preload; with fixed
dates and identities, every object id (commits, trees) must be the same, fsck must be clean, and
the log and the files must be what was written. git's helpers (pack-objects, repack, ...) inherit
the preload, so they are exercised too.

usage: test_git.py LIBTIERALLOC"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_common import check, check_stats, log, main, plain_env, preload_env, require_program, run

NFILES = 400
NCOMMITS = 5


def content(i, rev):
    return "".join(f"file {i} revision {rev} line {j} {'x' * (j % 37)}\n" for j in range(i % 60 + 1))


def scenario(git, repo, env_for, label):
    """Runs every git command with env_for(step) as its environment; returns what to compare."""
    steps = iter(range(1000))

    def g(*args, timeout=60):
        return run([git, "-C", repo, *args], env_for(next(steps)), timeout, f"{label}: git {args[0]}")

    os.makedirs(repo)
    g("init", "-q", "-b", "main")
    g("config", "gc.auto", "0")              # no detached background gc
    g("config", "maintenance.auto", "false")
    heads = []
    for rev in range(NCOMMITS):
        for i in range(NFILES):
            if rev == 0 or i % (rev + 1) == 0:
                path = os.path.join(repo, f"dir{i % 13}", f"sub{i % 5}", f"f{i:04d}.txt")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(content(i, rev))
        g("add", "-A")
        g("commit", "-q", "-m", f"revision {rev}\n\nchanged files of revision {rev}")
        heads.append(g("rev-parse", "HEAD").stdout.decode().strip())

    log_out = g("log", "--format=%H %s").stdout.decode().splitlines()
    check(len(log_out) == NCOMMITS, f"{label}: git log shows {len(log_out)} commits, expected {NCOMMITS}:\n{log_out}")
    check([l.split()[0] for l in log_out] == heads[::-1],
          f"{label}: git log order/ids {log_out} differ from the commits made {heads}")
    check([l.split(" ", 1)[1] for l in log_out] == [f"revision {r}" for r in reversed(range(NCOMMITS))],
          f"{label}: git log subjects wrong: {log_out}")
    files = g("ls-files").stdout.decode().split()
    check(len(files) == NFILES, f"{label}: git ls-files lists {len(files)} files, expected {NFILES}")
    for i in (0, 1, 7, 120, NFILES - 1):
        path = f"dir{i % 13}/sub{i % 5}/f{i:04d}.txt"
        last = max(r for r in range(NCOMMITS) if r == 0 or i % (r + 1) == 0)
        blob = g("show", f"HEAD:{path}").stdout.decode()
        check(blob == content(i, last), f"{label}: git show HEAD:{path} is not revision {last} of the file")
        old = g("show", f"{heads[0]}:{path}").stdout.decode()
        check(old == content(i, 0), f"{label}: git show {heads[0][:12]}:{path} is not revision 0 of the file")
    diffstat = g("diff", "--shortstat", heads[0], heads[-1]).stdout.decode().strip()

    g("gc", "-q", "--prune=now", "--aggressive", timeout=90)
    counts = dict(l.split(": ") for l in g("count-objects", "-v").stdout.decode().splitlines())
    check(counts["count"] == "0" and int(counts["in-pack"]) > NFILES and counts["packs"] == "1",
          f"{label}: after git gc expected everything in one pack: {counts}")
    fsck = g("fsck", "--full", "--strict", "--no-progress")
    check(fsck.stdout.strip() == b"" and fsck.stderr.strip() == b"",
          f"{label}: git fsck reported problems:\n{fsck.stdout.decode()}{fsck.stderr.decode()}")
    tree = g("rev-parse", "HEAD^{tree}").stdout.decode().strip()
    return {"heads": heads, "tree": tree, "diffstat": diffstat, "in-pack": counts["in-pack"]}


def body(lib, work):
    git = require_program("git")
    fixed = {
        "HOME": work, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C",
        "GIT_AUTHOR_NAME": "Tier Alloc", "GIT_AUTHOR_EMAIL": "tieralloc@example.invalid",
        "GIT_COMMITTER_NAME": "Tier Alloc", "GIT_COMMITTER_EMAIL": "tieralloc@example.invalid",
        "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    }
    expected = scenario(git, os.path.join(work, "plain"), lambda step: plain_env(**fixed), "without preload")
    stats = {}

    def env_for(step):
        stats[step] = os.path.join(work, f"stats-{step}.json")
        return preload_env(lib, stats[step], **fixed)

    got = scenario(git, os.path.join(work, "preload"), env_for, "with preload")
    check(got == expected, f"git with preload produced different objects:\n{got}\nexpected:\n{expected}")
    log(f"  identical history with and without preload: HEAD {got['heads'][-1]}, {got['diffstat']}")
    # Every git command wrote its own stats file (its helpers write the same one before it).
    for step, path in sorted(stats.items()):
        check_stats(path, f"git command #{step} with preload", quiet=True)
    log(f"  all {len(stats)} git commands with preload: tieralloc served memory")


if __name__ == "__main__":
    main(body)
