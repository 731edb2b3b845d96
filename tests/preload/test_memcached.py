#!/usr/bin/env python3
"""memcached under LD_PRELOAD=libtieralloc.so (its slab pages, hash table and connection buffers
come from malloc). A text-protocol client sets 5000 keys with values of varied sizes (up to
100 KB) over four concurrent connections, gets them all back (single and multi-key gets), appends,
deletes some and checks the misses, checks memcached's own stats (no evictions); then SIGTERM
must stop the server with status 0 and the stats file must show memcached's memory in tieralloc.

usage: test_memcached.py LIBTIERALLOC"""
import hashlib
import os
import signal
import socket
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_common import check, check_stats, fail, log, main, preload_env, require_program, with_server

NKEYS = 5000
NCONN = 4


def value(i):
    """Varied sizes: mostly small, every 50th 20..100 KB; distinctive bytes, binary included."""
    n = 20_000 + i * 7919 % 80_001 if i % 50 == 0 else 1 + i * 104729 % 4000
    seed = hashlib.sha256(b"memcached-%d" % i).digest()
    return (seed * (n // 32 + 1))[:n]


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            fail("memcached closed the connection")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def store(self, cmd, key, data, flags=0):
        self.sock.sendall(b"%s %s %d 0 %d\r\n%s\r\n" % (cmd, key, flags, len(data), data))
        return self.line()

    def get(self, *keys):
        """{key: (flags, value)} of the keys found."""
        self.sock.sendall(b"get " + b" ".join(keys) + b"\r\n")
        found = {}
        while True:
            l = self.line()
            if l == b"END":
                return found
            parts = l.split()
            check(len(parts) == 4 and parts[0] == b"VALUE", f"unexpected reply to get: {l!r}")
            data = self.exact(int(parts[3]) + 2)
            check(data.endswith(b"\r\n"), f"value of {parts[1]!r} not followed by CRLF")
            found[parts[1]] = (int(parts[2]), data[:-2])

    def command(self, text):
        self.sock.sendall(text + b"\r\n")
        return self.line()

    def stats(self):
        self.sock.sendall(b"stats\r\n")
        out = {}
        while (l := self.line()) != b"END":
            _, k, v = l.decode().split(" ", 2)
            out[k] = v
        return out


def key(i):
    return b"key:%05d" % i


def in_threads(port, fn):
    """Runs fn(client, share) for shares 0..NCONN-1 on parallel connections; re-raises failures."""
    errors = []

    def worker(share):
        c = Client(port)
        try:
            fn(c, share)
        except Exception as e:  # TestFailure or a socket error
            errors.append(f"connection {share}: {type(e).__name__}: {e}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(NCONN)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail("\n".join(errors))


def exercise(port):
    def setter(c, share):
        for i in range(share, NKEYS, NCONN):
            r = c.store(b"set", key(i), value(i), flags=i % 65536)
            check(r == b"STORED", f"set {key(i)!r} ({len(value(i))} bytes): {r!r}")

    in_threads(port, setter)
    total = sum(len(value(i)) for i in range(NKEYS))
    log(f"  set {NKEYS} keys, {total >> 20} MiB, values 1 B .. {max(len(value(i)) for i in range(NKEYS)) >> 10} KiB")

    def getter(c, share):
        mine = list(range(share, NKEYS, NCONN))
        for i in mine[: len(mine) // 2]:  # one key per get
            got = c.get(key(i))
            check(got == {key(i): (i % 65536, value(i))}, f"get {key(i)!r}: wrong or missing value")
        rest = mine[len(mine) // 2:]
        for j in range(0, len(rest), 50):  # multi-key gets
            batch = rest[j:j + 50]
            got = c.get(*[key(i) for i in batch])
            bad = [i for i in batch if got.get(key(i)) != (i % 65536, value(i))]
            check(not bad and len(got) == len(batch), f"multi-get: {len(bad)} keys wrong, e.g. {bad[:5]}")

    in_threads(port, getter)
    log(f"  got all {NKEYS} keys back identical (single and multi-key gets, {NCONN} connections)")

    c = Client(port)
    try:
        for i in range(0, NKEYS, 100):
            check(c.store(b"append", key(i), b"+tail") == b"STORED", f"append {key(i)!r} failed")
        deleted = list(range(3, NKEYS, 7))
        for i in deleted:
            check(c.command(b"delete " + key(i)) == b"DELETED", f"delete {key(i)!r} failed")
        check(c.command(b"delete " + key(3)) == b"NOT_FOUND", "deleting a deleted key did not say NOT_FOUND")
        check(c.get(key(NKEYS + 1)) == {}, "a key never set was found")
        gone = set(deleted)
        for j in range(0, NKEYS, 100):
            batch = range(j, min(j + 100, NKEYS))
            got = c.get(*[key(i) for i in batch])
            for i in batch:
                want = None if i in gone else (i % 65536, value(i) + (b"+tail" if i % 100 == 0 else b""))
                check(got.get(key(i)) == want, f"after deletes/appends: {key(i)!r} is "
                      f"{'missing' if key(i) not in got else 'wrong'}, expected {'a miss' if want is None else 'a hit'}")
        st = c.stats()
        check(st["curr_items"] == str(NKEYS - len(deleted)), f"stats curr_items {st['curr_items']}, "
              f"expected {NKEYS - len(deleted)}")
        check(st["evictions"] == "0", f"stats: {st['evictions']} evictions (values should fit in -m 64)")
        log(f"  {len(deleted)} deleted keys miss, appends applied; memcached stats: curr_items {st['curr_items']}, "
            f"bytes {st['bytes']}, get_hits {st['get_hits']}, get_misses {st['get_misses']}, evictions 0")
    finally:
        c.close()


def body(lib, work):
    memcached = require_program("memcached")
    stats = os.path.join(work, "stats.json")
    def command(port):
        cmd = [memcached, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-t", "4"]
        return cmd + (["-u", "root"] if os.geteuid() == 0 else [])  # memcached refuses root otherwise

    def use(port, server):
        exercise(port)
        server.proc.send_signal(signal.SIGTERM)
        rc = server.wait_exit(30)
        check(rc is not None, "memcached still running 30 s after SIGTERM")
        check(rc == 0, f"memcached exited with status {rc} after SIGTERM")

    with_server("memcached", command, preload_env(lib, stats), work, use)
    # Slab pages holding ~20 MB of values must have come from tieralloc.
    check_stats(stats, "memcached", min_peak_bytes=16 << 20)


if __name__ == "__main__":
    main(body)
