"""Shared pieces of the LD_PRELOAD integration tests (tests/preload/test_*.py).

Every test runs a real program with libtieralloc.so preloaded and TIERALLOC_STATS pointing at a
file, checks the program's own output, and then checks that file: tieralloc must have served
memory (some tier with peak_bytes > 0 and extents > 0). Servers are started on 127.0.0.1 on a
free port and always stopped, also when a check fails. Standard library only.
"""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


class TestFailure(Exception):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


def log(msg):
    print(msg, flush=True)


def require_program(name):
    path = shutil.which(name)
    check(path is not None,
          f"{name} not found on PATH; install the Debian packages with scripts/install-deps.sh")
    return path


def library_from_argv():
    if len(sys.argv) < 2:
        fail(f"usage: {sys.argv[0]} /path/to/libtieralloc.so [...]")
    lib = os.path.abspath(sys.argv[1])
    check(os.path.isfile(lib), f"{lib}: no such library")
    return lib


def plain_env(**extra):
    """The environment without any preload or tieralloc setting, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("TIERALLOC_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def preload_env(lib, stats_path, tiers=None, **extra):
    env = plain_env(**extra)
    env["LD_PRELOAD"] = lib
    env["TIERALLOC_STATS"] = stats_path
    if tiers:
        env["TIERALLOC_TIERS"] = tiers
    return env


def tail(text, n=3000):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text or ""
    return text if len(text) <= n else "...\n" + text[-n:]


def run(cmd, env, timeout, what=None, check_rc=True, **kw):
    """Runs cmd to completion, capturing output; fails with its output on a bad exit."""
    what = what or " ".join(map(str, cmd))
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        fail(f"{what}: did not finish in {timeout} s\nstdout:\n{tail(e.stdout)}\nstderr:\n{tail(e.stderr)}")
    if check_rc and p.returncode != 0:
        fail(f"{what}: exit status {p.returncode}\nstdout:\n{tail(p.stdout)}\nstderr:\n{tail(p.stderr)}")
    log(f"  {what}: exit {p.returncode} in {time.monotonic() - t0:.1f} s")
    return p


def read_stats(path, what):
    check(os.path.exists(path),
          f"{what}: no TIERALLOC_STATS file at {path}: libtieralloc.so was not loaded, or the "
          "program did not exit through exit()")
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        fail(f"{what}: TIERALLOC_STATS file {path} is not JSON ({e}):\n{tail(text)}")


def check_stats(path, what, min_peak_bytes=1, emulated=None, quiet=False):
    """Checks tieralloc served memory; returns the parsed document. Usage at exit says little (a
    program may free everything, and jemalloc decommits what it frees), so the tiers' peaks are
    what must reach min_peak_bytes."""
    doc = read_stats(path, what)
    tiers = doc.get("tiers") or []
    check(tiers, f"{what}: stats list no tiers: {doc}")
    peak = sum(t.get("peak_bytes", 0) for t in tiers)
    extents = sum(t.get("extents", 0) for t in tiers)
    check(peak > 0 and extents > 0,
          f"{what}: tieralloc served no memory (peak_bytes/extents all 0): {json.dumps(doc)}")
    check(peak >= min_peak_bytes,
          f"{what}: tieralloc's tiers peaked at {peak} bytes in all, expected at least {min_peak_bytes} "
          f"(the program's memory did not come from tieralloc?): {json.dumps(doc)}")
    check(doc.get("jemalloc", {}).get("allocated", 0) > 0,
          f"{what}: jemalloc inside tieralloc reports nothing allocated: {json.dumps(doc)}")
    if emulated is not None:
        check(doc.get("emulated") is emulated, f"{what}: expected emulated={emulated}: {json.dumps(doc)}")
    summary = ", ".join(f"tier {t['rank']} {t['kind']}: {t['used_bytes'] >> 20} MiB at exit, "
                        f"{t['peak_bytes'] >> 20} MiB peak, {t['extents']} extents"
                        for t in tiers)
    if not quiet:
        log(f"  {what}: tieralloc stats: {summary}")
    return doc


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout, what, logfile=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"{what}: exited with status {proc.returncode} before listening on port {port}"
                 + (f"\nlog:\n{tail(open(logfile, errors='replace').read())}" if logfile else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    fail(f"{what}: not listening on 127.0.0.1:{port} after {timeout} s")


def _die_with_parent():
    """In a server's child before exec: SIGKILL when the test dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Server:
    """A server process started with its output in a log file; stop() is always safe to call."""

    def __init__(self, cmd, env, logfile, what):
        self.what = what
        self.logfile = logfile
        self.log = open(logfile, "wb")
        log(f"  starting {what}: {' '.join(cmd)}")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def log_text(self):
        self.log.flush()
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """Kills the server if it still runs (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(10) is None:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def with_server(what, command, env, work, use, attempts=3):
    """Starts command(port) on a free port of 127.0.0.1, waits until it listens, runs
    use(port, server), and always stops the server. A server that lost a race for its port is
    started again on another; a failure carries the tail of the server's log."""
    for attempt in range(attempts):
        port = free_port()
        logfile = os.path.join(work, f"{what}-{attempt}.log")
        server = Server(command(port), env, logfile, what)
        try:
            try:
                wait_port(port, server.proc, 30, what, logfile)
            except TestFailure:
                if "Address already in use" in server.log_text() and attempt < attempts - 1:
                    continue
                raise
            use(port, server)
            return
        except TestFailure as e:
            fail(f"{e}\n{what} log:\n{tail(server.log_text())}")
        finally:
            server.stop()


def main(body):
    """Runs body(lib, workdir) with a scratch folder; exit status 0 only when it passes."""
    name = os.path.basename(sys.argv[0])
    t0 = time.monotonic()
    # SIGTERM (ctest's timeout, a CI cancel) unwinds like a failure: servers stopped, folder removed.
    signal.signal(signal.SIGTERM, lambda *_: fail("terminated by SIGTERM"))
    try:
        lib = library_from_argv()
        with tempfile.TemporaryDirectory(prefix="tieralloc-preload-") as work:
            body(lib, work)
    except TestFailure as e:
        print(f"FAIL {name}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    log(f"PASS {name} in {time.monotonic() - t0:.1f} s")
