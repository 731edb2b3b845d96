#!/usr/bin/env python3
"""Guest-kernel tests: boots a Debian kernel under QEMU on machines with real memory tiers (a
CPU-less node with HMAT figures, a kmem-onlined NVDIMM) and real hardware-poison injection, none of
which the build machine has, and turns what the guest prints into ctest verdicts.

Subcommands (run by ctest, see CMakeLists.txt here):
  image  --cache DIR --out DIR --payload FILE --cases-dir DIR
         fetch the guest kernel and tools from Debian into DIR (once), then build the initramfs
         with the project's guest programs and their libraries.
  boot   --image DIR --machine NAME --log FILE
         boot one machine, run its cases, keep the result channel in FILE.
  check  --log FILE --case NAME [--checker SCRIPT]
         the verdict of one case: its exit status inside the guest, then the host-side checker.

Exit status 77 (ctest's SKIP_RETURN_CODE) only when this machine cannot run QEMU at all.
"""
import argparse
import gzip
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
SKIP_MARKER = "skipped.txt"  # written into the image folder when QEMU cannot run here

# Packages unpacked for the guest (never installed on the host). Kernels are resolved from
# metapackages, so each is the current one of its line: bookworm's own (6.1) for most machines, and
# the 6.12 line bookworm also carries for what 6.1 lacks (DAMON, the kernel's access monitor, is not
# built into Debian's 6.1). busybox (the dynamically linked build) exists because LD_PRELOAD cannot
# reach into busybox-static.
KERNELS = {"6.1": "linux-image-amd64", "6.12": "linux-image-6.12-amd64"}
GUEST_PACKAGES = ["ndctl", "daxctl", "numactl", "hwloc-nox", "kmod", "busybox"]
GUEST_TOOLS = ["usr/bin/ndctl", "usr/bin/daxctl", "usr/bin/numactl", "usr/bin/lstopo-no-graphics",
               "usr/bin/hwloc-info", "bin/kmod"]
# Libraries the guest gets from the host's glibc instead of a second copy: the project's programs
# are built against the host's.
HOST_PROVIDED = {"libc6", "libgcc-s1", "libstdc++6"}

# Kernel modules the guest loads at boot (their dependencies come along): NVDIMM -> devdax -> kmem,
# and the debugfs hwpoison injector.
GUEST_MODULES = ["hwpoison-inject", "nfit", "nd_pmem", "dax_pmem", "device_dax", "kmem"]

# The machines. Each is QEMU's NUMA description plus what the guest does before the cases: the
# kernel command line (numa_balancing is always set deliberately: left on, the kernel migrates
# test pages back to node 0 within about a second) and setup steps, which are shell functions in
# ./init. slow_node is the node a test expects the slowest tier on.
HMAT_DRAM = ["-numa", "hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-latency,latency=100",
             "-numa", "hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-bandwidth,bandwidth=20G"]
HMAT_SLOW_RAM = ["-numa", "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=300",
                 "-numa", "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-bandwidth,bandwidth=4G"]
TWO_NODES = ["-smp", "2",
             "-object", "memory-backend-ram,id=m0,size=512M", "-object", "memory-backend-ram,id=m1,size=512M",
             "-numa", "node,nodeid=0,cpus=0-1,memdev=m0", "-numa", "node,nodeid=1,memdev=m1,initiator=0",
             "-numa", "dist,src=0,dst=1,val=20"] + HMAT_DRAM + HMAT_SLOW_RAM
NVDIMM_SIZE = 512 << 20

MACHINES = {
    # node 1: CPU-less RAM that HMAT calls 3x slower with 1/5 of the bandwidth.
    "numa": {
        "qemu": ["-machine", "q35,hmat=on", "-m", "1G"] + TWO_NODES,
        "numa_balancing": 0,
        "setup": [],
        "slow_node": 1,
    },
    # The numa machine on Linux 6.12, whose DAMON monitors virtual addresses.
    "numa-6.12": {
        "kernel": "6.12",
        "qemu": ["-machine", "q35,hmat=on", "-m", "1G"] + TWO_NODES,
        "numa_balancing": 0,
        "setup": [],
        "slow_node": 1,
    },
    # The numa machine with the kernel's NUMA balancing on: tieralloc must coexist with it.
    "balancing": {
        "qemu": ["-machine", "q35,hmat=on", "-m", "1G"] + TWO_NODES,
        "numa_balancing": 1,
        "setup": [],
        "slow_node": 1,
    },
    # node 2: only an emulated NVDIMM, which the guest turns into devdax and onlines with
    # `daxctl reconfigure-device --mode=system-ram`: a kmem node in the kernel's memory_tier22.
    "nvdimm": {
        "qemu": ["-machine", "q35,hmat=on,nvdimm=on", "-m", "1G,slots=2,maxmem=2G"] + TWO_NODES + [
            "-numa", "node,nodeid=2,initiator=0",
            "-numa", "dist,src=0,dst=2,val=30", "-numa", "dist,src=1,dst=2,val=30",
            "-numa", "hmat-lb,initiator=0,target=2,hierarchy=memory,data-type=access-latency,latency=500",
            "-numa", "hmat-lb,initiator=0,target=2,hierarchy=memory,data-type=access-bandwidth,bandwidth=2G",
            "-object", "memory-backend-file,id=nv0,share=on,mem-path={nvdimm_file},size=%d,align=2M" % NVDIMM_SIZE,
            "-device", "nvdimm,id=nvdimm0,memdev=nv0,node=2"],
        "numa_balancing": 0,
        "setup": ["nvdimm_kmem"],
        "slow_node": 2,
    },
}


def log(msg):
    print("guest: " + msg, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def qemu_unusable_reason():
    """Why this machine cannot run the x86-64 guests at all, or None."""
    if platform.system() != "Linux":
        return "not a Linux host"
    if not shutil.which("qemu-system-x86_64"):
        return ("qemu-system-x86_64 is not installed and could not be installed here "
                "(scripts/install-deps.sh --guest installs it when run as root)")
    return None


# ---------------------------------------------------------------------------------------------
# Fetching: apt-get download + dpkg -x into the cache, no root needed.

def apt_records(packages):
    """Candidate-version records of the packages, one apt-cache call: {name: {field: value}}."""
    out = subprocess.run(["apt-cache", "show", "--no-all-versions"] + sorted(packages),
                         capture_output=True, text=True)
    records = {}
    for paragraph in out.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", paragraph, re.M))
        if "Package" in fields:
            records[fields["Package"]] = fields
    unknown = set(packages) - set(records)
    if unknown:
        raise SystemExit("guest: apt-cache knows no package %s; the package lists are missing or stale "
                         "(scripts/install-deps.sh --guest runs apt-get update as root)" % " ".join(sorted(unknown)))
    return records


def depends(record):
    """First alternative of every Depends/Pre-Depends entry, without versions."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for entry in record.get(field, "").split(","):
            name = entry.split("|")[0].strip().split(" ")[0].split(":")[0]
            if name:
                names.append(name)
    return names


def guest_packages(cache):
    """({package: version}, {kernel line: kernel package}): the kernel images and the tools, with
    the libraries they need (recursively), minus what the host's glibc provides. Resolved again only
    when the apt package lists change (apt-cache is slow)."""
    lists = "/var/lib/apt/lists"
    lists_mtime = max((os.path.getmtime(os.path.join(lists, f)) for f in os.listdir(lists)), default=0)
    saved = os.path.join(cache, "packages.json")
    if os.path.exists(saved):
        with open(saved) as f:
            s = json.load(f)
        if s["lists_mtime"] == lists_mtime and s["wanted"] == [GUEST_PACKAGES, KERNELS]:
            return s["packages"], s["kernels"]
    metas = apt_records(list(KERNELS.values()))
    kernels = {}
    for line, meta in KERNELS.items():
        named = [d for d in depends(metas[meta]) if d.startswith("linux-image-")]
        if len(named) != 1:
            raise SystemExit("guest: %s does not name one kernel package: %s" % (meta, named))
        kernels[line] = named[0]
    packages, level = {}, set(kernels.values()) | set(GUEST_PACKAGES)
    while level:
        records = apt_records(level)
        for name, record in records.items():
            packages[name] = record["Version"]
        level = {d for name in level if not name.startswith("linux-image-")
                 for d in depends(records[name]) if d.startswith("lib")} - set(packages) - HOST_PROVIDED
    with open(saved, "w") as f:
        json.dump({"lists_mtime": lists_mtime, "wanted": [GUEST_PACKAGES, KERNELS], "packages": packages,
                   "kernels": kernels}, f, indent=1)
    return packages, kernels


def fetch(cache):
    """Downloads what is missing and unpacks it into cache/root (the kernels side by side, each
    with its own boot/vmlinuz-VERSION and lib/modules/VERSION). Returns (root, {line: version})."""
    debs, root = os.path.join(cache, "debs"), os.path.join(cache, "root")
    os.makedirs(debs, exist_ok=True)
    versions, kernels = guest_packages(cache)
    packages = sorted(versions)

    def deb_name(p):  # apt-get download's file name; the epoch's ':' becomes %3a
        return "%s_%s_amd64.deb" % (p, versions[p].replace(":", "%3a"))

    def present(p):
        return os.path.exists(os.path.join(debs, deb_name(p))) or \
            os.path.exists(os.path.join(debs, deb_name(p).replace("_amd64", "_all")))

    missing = [p for p in packages if not present(p)]
    if missing:
        log("downloading %d Debian packages: %s" % (len(missing), " ".join(missing)))
        opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        run(["apt-get", "download", "-qq"] + opts + missing, cwd=debs)
    stamps = os.path.join(cache, "unpacked")
    os.makedirs(stamps, exist_ok=True)
    for p in packages:
        deb = next(f for f in (deb_name(p), deb_name(p).replace("_amd64", "_all"))
                   if os.path.exists(os.path.join(debs, f)))
        stamp = os.path.join(stamps, deb)
        if not os.path.exists(stamp):
            run(["dpkg", "-x", os.path.join(debs, deb), root])
            open(stamp, "w").close()
    return root, {line: pkg[len("linux-image-"):] for line, pkg in kernels.items()}


def depmod(root, tree, kver):
    """The unpacked kmod's depmod on the module tree under `tree` (kmod picks the applet by the
    name it is called by): modprobe in the guest resolves dependencies from its output."""
    link = os.path.join(root, "depmod")
    if not os.path.lexists(link):
        os.symlink(os.path.join("bin", "kmod"), link)
    run([link, "-b", tree, kver], env=root_env(root))


def root_env(root):
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(os.path.join(root, d) for d in
                                      ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
    return env


# ---------------------------------------------------------------------------------------------
# The initramfs.

def library_closure(binaries, env):
    """Every shared library the binaries load, resolved by ldd (the unpacked Debian libraries
    first, then the host's)."""
    libs = set()
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True, env=env)
        if "not a dynamic executable" in out.stdout + out.stderr:
            continue
        for line in out.stdout.splitlines():
            if "not found" in line:
                raise SystemExit("guest: %s needs a library nobody provides: %s" % (b, line.strip()))
            m = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+)", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


def read_module(path):
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def module_closure(modules_dir, names):
    """{path relative to modules_dir: uncompressed module} for the named modules and everything
    they depend on, from each module's own depends= field (running depmod over the whole tree
    instead would cost about a minute)."""
    paths = {}
    for folder, _, files in os.walk(os.path.join(modules_dir, "kernel")):
        for f in files:
            if ".ko" in f:
                paths[f.split(".ko")[0].replace("-", "_")] = os.path.relpath(os.path.join(folder, f), modules_dir)
    out, pending = {}, [n.replace("-", "_") for n in names]
    while pending:
        name = pending.pop()
        if name not in paths:
            raise SystemExit("guest: the kernel has no module %s" % name)
        if paths[name] in out:
            continue
        data = read_module(os.path.join(modules_dir, paths[name]))
        out[paths[name]] = data
        m = re.search(rb"(?:^|\0)depends=([\w,-]*)\0", data)
        pending += [d.decode().replace("-", "_") for d in (m.group(1).split(b",") if m else []) if d]
    return out


def copy_file(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst, follow_symlinks=True)


def build_image(cache, out, payload, cases_dir):
    root, kvers = fetch(cache)
    stage = os.path.join(out, "stage")
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "run", "etc/ndctl.conf.d",
              "etc/daxctl.conf.d", "lib/x86_64-linux-gnu", "lib64", "guest/cases"):
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    os.symlink("../lib", os.path.join(stage, "usr", "lib"))

    busybox_static = "/bin/busybox"  # from busybox-static: the guest's shell runs before any library
    ldd = subprocess.run(["ldd", busybox_static], capture_output=True, text=True)
    if "not a dynamic executable" not in ldd.stdout + ldd.stderr:
        raise SystemExit("guest: /bin/busybox is not statically linked; install busybox-static")
    copy_file(busybox_static, os.path.join(stage, "bin", "busybox"))
    copy_file(os.path.join(HERE, "init"), os.path.join(stage, "init"))
    os.chmod(os.path.join(stage, "init"), 0o755)

    # Modules, uncompressed (the guest's kmod loads .xz too, but complains about the ELF header
    # first), in their tree so modprobe resolves dependencies after depmod. One initramfs serves
    # every kernel: each finds its own tree by `uname -r`.
    nmods = 0
    for kver in kvers.values():
        src_modules = os.path.join(root, "lib", "modules", kver)
        dst_modules = os.path.join(stage, "lib", "modules", kver)
        mods = module_closure(src_modules, GUEST_MODULES)
        nmods += len(mods)
        for m, data in mods.items():
            dst = os.path.join(dst_modules, re.sub(r"\.(xz|zst|gz)$", "", m))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(data)
        for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            copy_file(os.path.join(src_modules, f), os.path.join(dst_modules, f))
        depmod(root, stage, kver)

    # Tools from the unpacked packages and the project's programs (payload: one path per line,
    # written by CMake), with their library closures, into /usr/bin and the multiarch lib folder.
    tools = [os.path.join(root, t) for t in GUEST_TOOLS] + [os.path.join(root, "bin", "busybox")]
    with open(payload) as f:
        programs = [line.strip() for line in f if line.strip()]
    for t in tools + programs:
        name = os.path.basename(t)
        if re.match(r"lib.*\.so", name):
            copy_file(t, os.path.join(stage, "lib", "x86_64-linux-gnu", name))
        elif t.endswith("/bin/busybox"):  # the dynamic one; /bin/busybox is the static shell
            copy_file(t, os.path.join(stage, "usr", "bin", "busybox-dynamic"))
        else:
            copy_file(t, os.path.join(stage, "usr", "bin", name))
    for a in ("modprobe", "insmod", "lsmod", "rmmod", "modinfo", "depmod"):
        os.symlink("/usr/bin/kmod", os.path.join(stage, "sbin", a))
    for lib in library_closure(tools + programs, root_env(root)):
        if os.path.basename(lib).startswith("ld-linux"):
            copy_file(lib, os.path.join(stage, "lib64", os.path.basename(lib)))
        else:
            copy_file(lib, os.path.join(stage, "lib", "x86_64-linux-gnu", os.path.basename(lib)))
    for f in os.listdir(cases_dir):
        copy_file(os.path.join(cases_dir, f), os.path.join(stage, "guest", "cases", f))

    image = os.path.join(out, "initramfs.cpio.gz")
    files = subprocess.run(["find", "."], cwd=stage, capture_output=True, check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "--owner=0:0"], cwd=stage, input=files,
                          capture_output=True, check=True).stdout
    with open(image + ".tmp", "wb") as f:
        f.write(gzip.compress(cpio, compresslevel=1))
    os.replace(image + ".tmp", image)
    for line, kver in kvers.items():
        copy_file(os.path.join(root, "boot", "vmlinuz-" + kver), os.path.join(out, "vmlinuz-" + line))
    log("image: kernels %s, %d modules, %d programs, initramfs %.1f MB" %
        (", ".join(sorted(kvers.values())), nmods, len(tools) + len(programs), os.path.getsize(image) / 1e6))


def cmd_image(a):
    a.cache, a.out = os.path.abspath(a.cache), os.path.abspath(a.out)  # ldd prints what it is given
    os.makedirs(a.out, exist_ok=True)
    marker = os.path.join(a.out, SKIP_MARKER)
    reason = qemu_unusable_reason()
    if reason:
        with open(marker, "w") as f:
            f.write(reason + "\n")
        print("SKIPPED guest tests: " + reason)
        return SKIP
    if os.path.exists(marker):
        os.remove(marker)
    build_image(a.cache, a.out, a.payload, a.cases_dir)
    return 0


# ---------------------------------------------------------------------------------------------
# Booting and judging.

def skip_reason(image_dir):
    marker = os.path.join(image_dir, SKIP_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            return f.read().strip()
    return qemu_unusable_reason()


def cmd_boot(a):
    reason = skip_reason(a.image)
    if reason:
        print("SKIPPED guest tests: " + reason)
        return SKIP
    m = MACHINES[a.machine]
    os.makedirs(os.path.dirname(os.path.abspath(a.log)), exist_ok=True)
    console = a.log + ".console"
    for f in (a.log, console):
        if os.path.exists(f):
            os.remove(f)
    with tempfile.TemporaryDirectory(prefix="tieralloc-guest-") as tmp:
        qemu_args = [x.format(nvdimm_file=os.path.join(tmp, "nvdimm.img")) for x in m["qemu"]]
        if any("nvdimm.img" in x for x in qemu_args):
            with open(os.path.join(tmp, "nvdimm.img"), "wb") as f:
                f.truncate(NVDIMM_SIZE)  # sparse
        append = ["console=ttyS0", "loglevel=4", "panic=-1",
                  "numa_balancing=" + ("enable" if m["numa_balancing"] else "disable"),
                  "tt.machine=" + a.machine, "tt.numa_balancing=%d" % m["numa_balancing"],
                  "tt.slow_node=%d" % m["slow_node"], "tt.setup=" + ",".join(m["setup"] or ["none"])]
        # ttyS0 carries the kernel's messages and the init's progress; ttyS1 carries only what the
        # cases print, so kernel messages (hwpoison reports, for one) never split a result.
        cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max"] + qemu_args + [
            "-kernel", os.path.join(a.image, "vmlinuz-" + m.get("kernel", "6.1")), "-initrd", os.path.join(a.image, "initramfs.cpio.gz"),
            "-append", " ".join(append), "-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot",
            "-serial", "file:" + console, "-serial", "file:" + a.log]
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, timeout=a.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout after %d s" % a.timeout
        wall = time.monotonic() - t0
    results = read_results(a.log)
    log("machine %s: qemu exit %s after %.1f s wall" % (a.machine, rc, wall))
    for line in results.splitlines():
        if line.startswith("=== "):
            print(line)
    if "=== GUEST-DONE" not in results:
        print("the guest did not finish; its console (%s) ends with:" % console)
        with open(console, errors="replace") as f:
            print("".join(f.readlines()[-40:]))
        return 1
    return 0


def read_results(path):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read().replace("\r\n", "\n")  # the guest's tty turns \n into \r\n


def case_section(results, name):
    m = re.search(r"^=== CASE-BEGIN %s\n(.*?)=== CASE-END %s rc=(\d+)$" % (re.escape(name), re.escape(name)),
                  results, re.S | re.M)
    return (m.group(1), int(m.group(2))) if m else (None, None)


def cmd_check(a):
    reason = skip_reason(a.image)
    if reason:
        print("SKIPPED guest tests: " + reason)
        return SKIP
    if not os.path.exists(a.log):
        print("no results from the guest (%s): did the boot test run?" % a.log)
        return 1
    results = read_results(a.log)
    text, rc = case_section(results, a.case)
    if text is None:
        print("case %s did not run to its end in the guest" % a.case)
        return 1
    print(text, end="")
    print("--- in the guest: exit status %d" % rc)
    if rc != 0:
        return 1
    if a.checker:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(text)
            f.flush()
            facts = json.dumps({k: MACHINES[a.machine][k] for k in ("numa_balancing", "slow_node", "setup")})
            return subprocess.run([sys.executable, a.checker, f.name, a.machine, facts]).returncode
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("image")
    i.add_argument("--cache", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--payload", required=True)
    i.add_argument("--cases-dir", required=True)
    b = sub.add_parser("boot")
    b.add_argument("--image", required=True)
    b.add_argument("--machine", required=True, choices=sorted(MACHINES))
    b.add_argument("--log", required=True)
    b.add_argument("--timeout", type=int, default=240)
    c = sub.add_parser("check")
    c.add_argument("--image", required=True)
    c.add_argument("--machine", required=True, choices=sorted(MACHINES))
    c.add_argument("--log", required=True)
    c.add_argument("--case", required=True)
    c.add_argument("--checker")
    a = p.parse_args()
    return {"image": cmd_image, "boot": cmd_boot, "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
