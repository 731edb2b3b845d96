#!/usr/bin/env python3
"""The quarantine journal end to end, with real processes: journal_probe (libtieralloc.so linked)
reports poison, dies of a consumed machine check, and moves a live page off a frame the journal
names; `tieralloc poison list|scan|report|clear` as a user runs it, on the hand-made nvdimm tree
(tests/fixtures/nvdimm). Frame numbers are readable as root; a run without CAP_SYS_ADMIN
(setpriv) checks the path where they read as 0."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tool"))
from cli_check import check, clean_env, finish  # noqa: E402

tool, probe, nvdimm = sys.argv[1:4]


def run(args, env, **kw):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, **kw)


def values(out):
    """'key value' lines of the probe; 'stats' parsed as JSON."""
    v = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        v[key] = json.loads(rest) if key == "stats" else rest
    return v


def records(path):
    r = run([tool, "poison", "list", "--json", "--file", path], clean_env())
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, doc.get("journal", {}).get("entries", [])


def can_see_frames():
    # Frame numbers need CAP_SYS_ADMIN; without it the "frame known" cases cannot run here.
    r = run([probe, "report"], clean_env(TIERALLOC_QUARANTINE_FILE="off"))
    return int(values(r.stdout).get("frame", "0"), 16) != 0


def without_sys_admin(args):
    return ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"] + args


d = tempfile.mkdtemp(prefix="tieralloc-journal-test-")
try:
    journal = os.path.join(d, "q")
    env = clean_env(TIERALLOC_QUARANTINE_FILE=journal)
    frames = can_see_frames()
    check(frames or os.geteuid() != 0, "root reads frame numbers from /proc/self/pagemap")

    if frames:
        # A report made through the API reaches the journal before the process ends.
        r = run([probe, "report"], env)
        v = values(r.stdout)
        frame = int(v["frame"], 16)
        rc, entries = records(journal)
        check(r.returncode == 0 and rc == 0 and any(e["phys"] == frame + 128 and e["len"] == 64 and e["source"] == "reported"
                                                    for e in entries),
              "report: the line's physical address is journaled (frame 0x%x + 0x80, 64 B)" % frame)
        j = v["stats"]["poison"]["journal"]
        check(j["state"] in ("ok", "missing") and j["frame_numbers"] == "visible" and j["path"] == journal,
              "report: stats name the journal, and say frame numbers are visible")

        # Poison consumed with no SIGBUS handler kills the process; the frame is journaled first.
        r = run([probe, "consume"], env)
        frame = int(values(r.stdout)["frame"], 16)
        rc, entries = records(journal)
        check(r.returncode == -signal.SIGBUS, "consume: the program dies of SIGBUS as it would without tieralloc")
        check(any(e["phys"] == frame + 5 * 64 and e["len"] == 64 and e["source"] == "consumed" for e in entries),
              "consume: journaled before the process died (frame 0x%x + 0x140)" % frame)

        # A repair counts in the record; the frame stays known bad.
        r = run([probe, "repair"], env)
        frame = int(values(r.stdout)["frame"], 16)
        rc, entries = records(journal)
        rec = [e for e in entries if e["phys"] == frame + 128]
        check(len(rec) == 1 and rec[0]["repairs"] == 1 and rec[0]["last_repair"] > 0,
              "repair: the record stays, with repairs=1")

        # A live page whose frame is put in the journal (by the tool, through /proc/PID/pagemap) is
        # moved off it by tieralloc_poison_scan: same address, same bytes, another frame.
        p = subprocess.Popen([probe, "scan"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
        page = p.stdout.readline().split()[1]
        frame = int(p.stdout.readline().split()[1], 16)
        r = run([tool, "poison", "report", "--file", journal, "--pid", str(p.pid), page, "4096"], clean_env())
        check(r.returncode == 0 and ("0x%016x" % frame) in r.stdout, "tool report --pid: the page's frame is journaled")
        out, _ = p.communicate("go\n", timeout=60)
        v = values(out)
        # (At least one page: frames of the probes above, journaled and freed, may be this one's too.)
        check(int(v.get("scan", "0 ").split()[0]) >= 1 and v.get("moved") == "1" and v.get("intact") == "1" and v.get("quarantined") == "0",
              "scan: the live page moved to another frame, contents intact, not quarantined (%s)" % out.replace("\n", "; ")[:200])
        j = v["stats"]["poison"]["journal"]
        check(j["relocated_pages"] >= 1 and j["parked_frames"] == j["relocated_pages"],
              "scan: stats count the page moved and its frame held (%s)" % j)

        # Start-up: a journal naming every frame moves every resident page the library manages at
        # start-up off its frame, and the program runs normally on the data moved.
        every = os.path.join(d, "every")
        run([tool, "poison", "report", "--file", every, "phys:0x1000", str((1 << 46) - 0x1000)], clean_env())
        r = run([probe, "start"], clean_env(TIERALLOC_QUARANTINE_FILE=every))
        v = values(r.stdout)
        moved = v["stats"]["poison"]["journal"]["relocated_pages"] if "stats" in v else 0
        check(r.returncode == 0 and v.get("objects") == "ok" and moved > 0,
              "start-up: %d resident pages moved off known-bad frames before main; the program runs" % moved)

    # Frame numbers hidden (no CAP_SYS_ADMIN): reports cannot be journaled, the records stay.
    if shutil.which("setpriv") and os.geteuid() == 0:
        before = open(journal).read() if os.path.exists(journal) else None
        r = run(without_sys_admin([probe, "report"]), env)
        v = values(r.stdout)
        j = v["stats"]["poison"]["journal"] if "stats" in v else {}
        check(int(v.get("frame", "1"), 16) == 0 and j.get("frame_numbers") == "hidden" and j.get("unjournaled_reports") == 1,
              "no CAP_SYS_ADMIN: stats say frame numbers are hidden and one report was not journaled")
        after = open(journal).read() if os.path.exists(journal) else None
        check(before == after, "no CAP_SYS_ADMIN: the journal's records are kept untouched")
        if before is not None:
            p = subprocess.Popen(without_sys_admin([probe, "scan"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
            out, _ = p.communicate("go\n", timeout=60)
            check("scan -1 errno %d" % 1 in out, "no CAP_SYS_ADMIN: tieralloc_poison_scan fails with EPERM")

    # A corrupt journal: one warning at start-up, never used, never fatal; kept aside when written.
    bad = os.path.join(d, "bad")
    with open(bad, "w") as f:
        f.write("tieralloc-quarantine 1\nbad 0x0000000000001000 0x40 manual 1 0 0\nend 1 crc32 00000000\n")
    r = run([probe, "report"], clean_env(TIERALLOC_QUARANTINE_FILE=bad))
    warnings = [l for l in r.stderr.splitlines() if "quarantine journal" in l]
    check(r.returncode == 0 and len(warnings) == 1 and "corrupt" in warnings[0], "corrupt journal: one warning, the program runs")
    check(os.path.exists(bad + ".corrupt") and records(bad)[0] == 0,
          "corrupt journal: kept as .corrupt, a valid one written in its place")
    r = run([tool, "poison", "list", "--file", bad + ".corrupt"], clean_env())
    check(r.returncode == 1 and "corrupt" in r.stdout and "checksum" in r.stdout, "tool list: a corrupt journal is exit 1, says why")

    # A malformed TIERALLOC_QUARANTINE_FILE: one warning, the default under XDG_STATE_HOME.
    state = os.path.join(d, "state")
    r = run([probe, "report"], clean_env(TIERALLOC_QUARANTINE_FILE="relative/q", XDG_STATE_HOME=state))
    default = os.path.join(state, "tieralloc", "quarantine")
    check(r.stderr.count("TIERALLOC_QUARANTINE_FILE") == 1 and default in r.stderr and r.returncode == 0,
          "malformed TIERALLOC_QUARANTINE_FILE: one warning naming the default")
    check(not frames or os.path.exists(default), "malformed TIERALLOC_QUARANTINE_FILE: the default file is used")
    r = run([probe, "report"], clean_env(TIERALLOC_QUARANTINE_FILE="off", HOME=d))
    check(not os.path.exists(os.path.join(d, ".local")) and values(r.stdout)["stats"]["poison"]["journal"]["state"] == "off",
          "TIERALLOC_QUARANTINE_FILE=off: no file written, stats say off")

    # Badblocks at start-up, through TIERALLOC_FSROOT.
    r = run([probe, "start"], clean_env(TIERALLOC_QUARANTINE_FILE="off", TIERALLOC_FSROOT=nvdimm))
    v = values(r.stdout)
    check(r.returncode == 0 and v["stats"]["poison"]["journal"]["badblocks_ranges"] == 6,
          "start-up reads the 6 ranges of the fixture's badblocks lists")

    # The tool on the fixture: scan imports the merged ranges once; list shows them; clear removes.
    t = os.path.join(d, "tool")
    r = run([tool, "poison", "scan", "--file", t, "--fsroot", nvdimm], clean_env())
    check(r.returncode == 0 and "4 bad ranges in 4 badblocks lists" in r.stdout and "4 new records" in r.stdout
          and "pmem0.2s" in r.stderr, "scan: 4 merged ranges from 4 lists, the BTT device noted")
    r = run([tool, "poison", "scan", "--file", t, "--fsroot", nvdimm], clean_env())
    check(r.returncode == 0 and "0 new records" in r.stdout, "scan again: nothing new")
    r = run([tool, "poison", "list", "--file", t, "--fsroot", nvdimm], clean_env())
    check(r.returncode == 0 and "ok, 4 records" in r.stdout and "0x0000000240001000-0x0000000240002000" in r.stdout
          and "region1" in r.stdout and "badblocks" in r.stdout, "list: records and current badblocks")
    r = run([tool, "poison", "clear", "--file", t, "phys:0x240001000", "4K"], clean_env())
    check(r.returncode == 0 and len(records(t)[1]) == 3, "clear a range: its record goes")
    r = run([tool, "poison", "clear", "--file", t, "--all"], clean_env())
    check(r.returncode == 0 and records(t)[1] == [], "clear --all: every record goes")
    env_t = clean_env(TIERALLOC_QUARANTINE_FILE=t)
    r = run([tool, "poison", "report", "phys:0x5000", "64"], env_t)
    check(r.returncode == 0 and records(t)[1][0]["phys"] == 0x5000, "report phys: into the journal TIERALLOC_QUARANTINE_FILE names")

    for args, what in [(["poison"], "no subcommand"), (["poison", "frob"], "unknown subcommand"),
                       (["poison", "list", "--bogus"], "unknown option"), (["poison", "report", "0x5000", "64"], "virtual address"),
                       (["poison", "report", "phys:zz", "64"], "not an address"), (["poison", "report", "phys:0x5000", "0"], "length"),
                       (["poison", "report", "phys:0x5000", "1.5K"], "length"), (["poison", "clear"], "ADDR LEN"),
                       (["poison", "list", "--file", "rel"], "absolute"), (["poison", "report", "--pid", "x", "1", "1"], "process id"),
                       (["poison", "scan", "--all"], "--all is for clear")]:
        r = run([tool] + args, env_t)
        check(r.returncode == 2 and what in r.stderr, "bad usage (%s): exit 2 with a message" % " ".join(args[1:]))
    r = run([tool, "poison", "list"], clean_env(TIERALLOC_QUARANTINE_FILE="off"))
    check(r.returncode == 2 and "--file" in r.stderr, "journal off and no --file: exit 2, says how")
    blocker = os.path.join(d, "plainfile")
    open(blocker, "w").close()
    r = run([tool, "poison", "report", "--file", blocker + "/q", "phys:0x1000", "64"], clean_env())
    check(r.returncode == 1 and "cannot update" in r.stderr, "unwritable journal: exit 1 with the reason")
finally:
    shutil.rmtree(d, ignore_errors=True)

finish("tool_poison")
