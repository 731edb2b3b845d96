#!/usr/bin/env python3
"""redis-server under LD_PRELOAD=libtieralloc.so. Debian's Redis links libjemalloc.so.2 and calls
jemalloc's own API (mallocx, dallocx, mallctl, malloc_stats_print); with the preload those calls
must reach the one jemalloc inside libtieralloc.so. Checks: INFO memory names jemalloc and its
allocator figures (from mallctl) match Redis's own count; redis-benchmark; a few thousand keys
written with redis-cli --pipe and all read back; MEMORY DOCTOR/STATS/MALLOC-STATS/PURGE; a
BGSAVE (fork of the preloaded server); SHUTDOWN NOSAVE with exit status 0; the stats file shows
the dataset in tieralloc's tiers. redis-cli and redis-benchmark (jemalloc-linked too) also run
under the preload.

usage: test_redis.py LIBTIERALLOC"""
import hashlib
import os
import re
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_common import check, check_stats, log, main, preload_env, require_program, run, tail, with_server

NSTRINGS = 4000
NLISTS = 200
NHASHES = 200


def value(i):
    """A distinctive value, 20 B .. ~12 KB, of [0-9a-f:-] (no spaces or newlines)."""
    h = hashlib.sha256(str(i).encode()).hexdigest()
    n = 20 + i * 7919 % 12000
    return f"v{i}-" + (h * (n // 64 + 1))[:n]


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def dataset():
    strings = {f"str:{i:05d}": value(i) for i in range(NSTRINGS)}
    lists = {f"list:{i:04d}": [value(i * 100 + j)[:40 + j] for j in range(20)] for i in range(NLISTS)}
    hashes = {f"hash:{i:04d}": {f"f{j}": value(i * 1000 + j)[:30 + 3 * j] for j in range(10)} for i in range(NHASHES)}
    return strings, lists, hashes


def info(cli, port, env, section):
    out = run([cli, "-h", "127.0.0.1", "-p", str(port), "INFO", section], env, 30, f"redis-cli INFO {section}").stdout
    return dict(l.split(":", 1) for l in out.decode().replace("\r", "").splitlines() if ":" in l and not l.startswith("#"))


def exercise(lib, work, port, server):
    cli, bench = require_program("redis-cli"), require_program("redis-benchmark")
    # The clients link jemalloc too: run them preloaded, each with its own stats file.
    client_stats = []

    def cenv():
        client_stats.append(os.path.join(work, f"client-stats-{len(client_stats)}.json"))
        return preload_env(lib, client_stats[-1])

    def rcli(*args, stdin=None, timeout=60):
        return run([cli, "-h", "127.0.0.1", "-p", str(port), *args], cenv(), timeout,
                   f"redis-cli {' '.join(args)[:40] or '(commands on stdin)'}", input=stdin).stdout.decode().replace("\r", "")

    check(rcli("PING").strip() == "PONG", "redis did not answer PING")
    mem = info(cli, port, cenv(), "memory")
    log(f"  mem_allocator: {mem.get('mem_allocator')}")
    check("jemalloc" in mem.get("mem_allocator", ""), f"INFO memory: mem_allocator is not jemalloc: {mem}")

    p = run([bench, "-h", "127.0.0.1", "-p", str(port), "-q", "-n", "20000", "-t", "set,get,lpush,lpop",
             "-d", "128", "--threads", "2"], cenv(), 60, "redis-benchmark")
    results = [l.strip() for l in re.split(r"[\r\n]", p.stdout.decode()) if "requests per second" in l]
    log("  " + "\n  ".join(results))
    for t in ("SET", "GET", "LPUSH", "LPOP"):
        check(any(l.startswith(t + ":") for l in results),
              f"redis-benchmark printed no result for {t}:\n{tail(p.stdout)}\n{tail(p.stderr)}")
    check(rcli("FLUSHALL").strip() == "OK", "FLUSHALL failed")

    # Write everything in one RESP stream.
    strings, lists, hashes = dataset()
    stream = [resp("SET", k, v) for k, v in strings.items()]
    stream += [resp("RPUSH", k, *v) for k, v in lists.items()]
    stream += [resp("HSET", k, *[x for kv in v.items() for x in kv]) for k, v in hashes.items()]
    out = rcli("--pipe", stdin=b"".join(stream), timeout=120)
    ncmd = NSTRINGS + NLISTS + NHASHES
    check(f"errors: 0, replies: {ncmd}" in out, f"redis-cli --pipe: expected 0 errors and {ncmd} replies:\n{out}")
    check(rcli("DBSIZE").strip() == str(ncmd), f"DBSIZE is not {ncmd}")

    # Read everything back in one redis-cli session: MGET batches, LRANGE, HGETALL.
    keys = list(strings)
    cmds = [" ".join(["MGET"] + keys[i:i + 500]) for i in range(0, len(keys), 500)]
    cmds += [f"LRANGE {k} 0 -1" for k in lists]
    cmds += [f"HGETALL {k}" for k in hashes]
    lines = rcli(stdin=("\n".join(cmds) + "\n").encode(), timeout=120).split("\n")
    pos = 0

    def take(n):
        nonlocal pos
        chunk = lines[pos:pos + n]
        pos += n
        return chunk

    bad = [k for k, got in zip(keys, take(len(keys))) if strings[k] != got]
    for k, v in lists.items():
        if take(len(v)) != v:
            bad.append(k)
    for k, v in hashes.items():
        flat = take(2 * len(v))
        if dict(zip(flat[::2], flat[1::2])) != v:
            bad.append(k)
    check(not bad, f"{len(bad)} keys read back wrong, e.g. {bad[:5]}")
    check(pos == len(lines) - 1 and lines[-1] == "", f"unexpected extra output after {pos} lines: {lines[pos:pos + 3]}")
    log(f"  {ncmd} keys written with redis-cli --pipe and read back identical")

    # jemalloc's own API, as Redis uses it. allocator_allocated comes from mallctl("stats.allocated"):
    # if Redis's mallctl reached a different jemalloc than its malloc, it would not see the data.
    mem = info(cli, port, cenv(), "memory")
    used, alloc = int(mem["used_memory"]), int(mem["allocator_allocated"])
    log(f"  used_memory {used}, allocator_allocated {alloc}, allocator_resident {mem.get('allocator_resident')}")
    check(used > 16 << 20, f"used_memory {used} too small for the dataset")
    check(used / 2 < alloc < used * 2, f"allocator_allocated {alloc} (mallctl) does not match used_memory {used}")
    doctor = rcli("MEMORY", "DOCTOR")
    check(len(doctor.strip()) > 20 and not doctor.startswith("ERR"), f"MEMORY DOCTOR: {doctor!r}")
    st = rcli("MEMORY", "STATS").split("\n")
    for key in ("allocator.allocated", "allocator.resident", "total.allocated", "dataset.bytes"):
        check(key in st and int(st[st.index(key) + 1]) > 0, f"MEMORY STATS: no positive {key}:\n{st}")
    mstats = rcli("MEMORY", "MALLOC-STATS")
    check("Begin jemalloc statistics" in mstats and "End jemalloc statistics" in mstats,
          f"MEMORY MALLOC-STATS (malloc_stats_print) output unexpected:\n{tail(mstats)}")
    check(rcli("MEMORY", "PURGE").strip() == "OK", "MEMORY PURGE failed")
    check(rcli("GET", "str:00042").strip() == strings["str:00042"], "value wrong after MEMORY PURGE")

    # BGSAVE: the preloaded server forks a child that writes the dataset.
    check("Background saving started" in rcli("BGSAVE"), "BGSAVE did not start")
    deadline = time.monotonic() + 60
    while True:
        pers = info(cli, port, cenv(), "persistence")
        if pers.get("rdb_bgsave_in_progress") == "0":
            break
        check(time.monotonic() < deadline, "BGSAVE still running after 60 s")
        time.sleep(0.2)
    check(pers.get("rdb_last_bgsave_status") == "ok", f"BGSAVE failed: {pers}")
    rdb = os.path.join(work, "dump.rdb")
    check(os.path.exists(rdb) and os.path.getsize(rdb) > 256 << 10, "BGSAVE wrote no (or a too small) dump.rdb")

    rcli("SHUTDOWN", "NOSAVE")
    rc = server.wait_exit(30)
    check(rc is not None, "redis-server still running 30 s after SHUTDOWN NOSAVE")
    check(rc == 0, f"redis-server exited with status {rc}\nlog:\n{tail(server.log_text())}")
    for path in client_stats:
        check_stats(path, "redis client", quiet=True)
    log(f"  {len(client_stats)} redis-cli/redis-benchmark runs with preload: tieralloc served memory")


def body(lib, work):
    server_bin = require_program("redis-server")
    stats = os.path.join(work, "server-stats.json")
    with_server("redis-server",
                lambda port: [server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--daemonize", "no", "--dir", work, "--logfile", ""],
                preload_env(lib, stats), work, lambda port, server: exercise(lib, work, port, server))
    # The dataset (~25 MB) must be in tieralloc's tiers: Redis's jemalloc calls reached it.
    check_stats(stats, "redis-server", min_peak_bytes=24 << 20)


if __name__ == "__main__":
    main(body)
