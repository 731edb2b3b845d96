#!/usr/bin/env python3
"""Debian's redis-server, plainly and with LD_PRELOAD=libtieralloc.so, under redis-benchmark.

The two servers alternate (plain, tieralloc, then tieralloc, plain, ...), each run on a fresh
server, so that drift of the machine does not favour either; the reported figure per test is the
median requests/s over rounds and the ratio tieralloc/plain (above 1: tieralloc faster). Debian's
redis-server is itself linked with Debian's jemalloc, so "plain" is jemalloc 5.3 and the ratio
compares tieralloc with the allocator it embeds.

Servers listen on 127.0.0.1 only, on a free port, with persistence off, and are always stopped:
on errors, on SIGINT/SIGTERM/SIGHUP, and, through PR_SET_PDEATHSIG, even if this script is killed.

Exit status: 0 when the report was produced; 1 on errors (redis missing, a server that does not
start or dies, a preload that did not take effect).
"""
import argparse
import csv
import ctypes
import datetime
import io
import json
import os
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_command(port, *args, timeout=2.0):
    """One command over RESP; returns the raw reply."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            # Simple replies end with the first CRLF; a bulk reply ($len) once len bytes arrived.
            if data.startswith(b"$") and b"\r\n" in data:
                n = int(data[1:data.index(b"\r\n")])
                if n < 0 or len(data) >= data.index(b"\r\n") + 2 + n + 2:
                    break
            elif data.endswith(b"\r\n") or not chunk:
                break
        return data.decode(errors="replace")


def pin_and_die_with_parent(cpus):
    def setup():
        # The server must not outlive this script, whatever ends it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


class Server:
    def __init__(self, exe, lib, cpus, workdir):
        self.exe, self.lib, self.cpus, self.workdir = exe, lib, cpus, workdir
        self.proc = None
        self.port = None
        self.label = "tieralloc" if lib else "plain"
        self.log = os.path.join(workdir, f"redis-{self.label}.log")

    def start(self):
        self.port = free_port()
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if self.lib:
            env["LD_PRELOAD"] = self.lib
        cmd = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.workdir,
               "--logfile", self.log]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=pin_and_die_with_parent(self.cpus))
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} redis-server exited with status {self.proc.returncode} at start:\n"
                                 f"{self.proc.stderr.read().decode(errors='replace')}{self.log_tail()}")
            try:
                if redis_command(self.port, "PING").startswith("+PONG"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} redis-server did not answer PING on 127.0.0.1:{self.port} "
                                 f"within 15 s{self.log_tail()}")
            time.sleep(0.05)
        with open(f"/proc/{self.proc.pid}/maps") as f:
            loaded = "libtieralloc" in f.read()
        if loaded != bool(self.lib):
            raise BenchError(f"{self.label} redis-server: libtieralloc.so is {'' if loaded else 'not '}mapped "
                             f"(LD_PRELOAD={self.lib or 'unset'})")
        info = redis_command(self.port, "INFO", "server", "memory")
        self.allocator = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                               if l.startswith("mem_allocator:")), "unknown")
        self.version = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                             if l.startswith("redis_version:")), "unknown")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self):
        try:
            with open(self.log) as f:
                return "\n" + "".join(f.readlines()[-10:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        self.proc = None


def run_benchmark(tool, server, args, cpus):
    cmd = [tool, "-h", "127.0.0.1", "-p", str(server.port), "--csv", "-n", str(args.requests),
           "-t", args.tests, "-P", str(args.pipeline), "-d", str(args.data_size)]
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                       preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    seconds = time.monotonic() - start
    if p.returncode != 0:
        raise BenchError(f"redis-benchmark against the {server.label} server exited with status {p.returncode}:\n"
                         f"{p.stderr.strip()}")
    if not server.alive():
        raise BenchError(f"the {server.label} redis-server died during the benchmark "
                         f"(status {server.proc.returncode}){server.log_tail()}")
    rps = {}
    for row in csv.DictReader(io.StringIO(p.stdout)):
        if row.get("test") and row.get("rps"):
            rps[row["test"]] = float(row["rps"])
    if not rps:
        raise BenchError(f"redis-benchmark printed no results:\n{p.stdout}{p.stderr}")
    return rps, seconds, " ".join(cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build tree (default: build)")
    ap.add_argument("--out", help="JSON report (default: BUILD/bench/redis.json)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two servers (default 3)")
    ap.add_argument("--requests", type=int, default=3000000,
                    help="requests per test (default 3000000: 10-20 s per run on an idle 2-core VM; "
                         "LPUSH grows one list to that many elements, about 0.8 GiB)")
    ap.add_argument("--tests", default="set,get,lpush,lpop")
    ap.add_argument("--pipeline", type=int, default=16)
    ap.add_argument("--data-size", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="one round of 50000 requests (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests = 1, 50000
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    out = args.out or os.path.join(args.build, "bench", "redis.json")

    # SIGTERM/SIGHUP as exceptions, so that the finally below stops the servers.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    servers = []
    workdir = tempfile.mkdtemp(prefix="tieralloc-redis-")
    try:
        exe, tool = shutil.which("redis-server"), shutil.which("redis-benchmark")
        if not exe or not tool:
            raise BenchError("redis-server and redis-benchmark are needed: install the Debian packages redis-server "
                             "and redis-tools (scripts/install-deps.sh --bench)")
        lib = os.path.abspath(os.path.join(args.build, "alloc", "libtieralloc.so"))
        if not os.path.exists(lib):
            raise BenchError(f"{lib} not found (build first: cmake --build {args.build})")
        # Server and client on different CPUs when there are two, so they do not take turns on one.
        cpus = sorted(os.sched_getaffinity(0))
        server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (None, None)
        plain = Server(exe, None, server_cpus, workdir)
        tier = Server(exe, lib, server_cpus, workdir)
        servers = [plain, tier]
        runs = {"plain": [], "tieralloc": []}
        command = None
        for r in range(args.rounds):
            for server in (servers if r % 2 == 0 else servers[::-1]):
                print(f"round {r + 1}/{args.rounds}: {server.label}", file=sys.stderr, flush=True)
                server.start()
                try:
                    rps, seconds, command = run_benchmark(tool, server, args, client_cpus)
                finally:
                    server.stop()
                runs[server.label].append(dict(rps=rps, seconds=round(seconds, 2)))
    except BenchError as e:
        print(f"redis_compare: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"redis_compare: interrupted ({e or 'SIGINT'}); servers stopped", file=sys.stderr)
        return 130
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    # Tests every run reported (redis-benchmark names them, e.g. LPUSH, in its own order).
    tests = [t for t in runs["plain"][0]["rps"] if all(t in run["rps"] for k in runs for run in runs[k])]
    rows = []
    for t in tests:
        samples = {k: [run["rps"][t] for run in runs[k]] for k in runs}
        med = {k: statistics.median(v) for k, v in samples.items()}
        noise = max((max(v) - min(v)) / med[k] for k, v in samples.items())
        rows.append(dict(test=t, rps=med, samples=samples, noise=noise,
                         ratio_tieralloc_over_plain=med["tieralloc"] / med["plain"]))

    doc = dict(
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        description="rps: median requests/s over rounds; ratio above 1: tieralloc faster",
        redis=dict(version=plain.version, plain_allocator=plain.allocator, preload=lib),
        command=command, rounds=args.rounds, server_cpus=sorted(server_cpus or []),
        client_cpus=sorted(client_cpus or []), runs=runs, tests=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    print(f"redis {plain.version} (plain = its {plain.allocator}), median of {args.rounds} alternating runs")
    print(f"{'test':<10}{'plain rps':>14}{'tieralloc rps':>16}{'t/plain':>9}{'noise':>7}")
    for row in rows:
        print(f"{row['test']:<10}{row['rps']['plain']:>14,.0f}{row['rps']['tieralloc']:>16,.0f}"
              f"{row['ratio_tieralloc_over_plain']:>9.3f}{row['noise'] * 100:>6.0f}%")
    print("t/plain: tieralloc's requests/s over plain redis's (above 1: tieralloc faster); "
          "noise: (max-min)/median within each server")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
