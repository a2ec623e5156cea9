"""System-wide CPU profiles at named moments of a c1m run (`--profile`).

Issue 11 asks, for every target a run misses, for the profile that shows
what limits it. Taking those by hand meant watching a 15-minute run for the
moment (40 % bound, all bound and the broadcast going out, Redis back) and
guessing which thread belonged to which process afterwards. Here a run names
its moments, e.g. `--profile ramp,bound,bound+120,back`, and gets for each a
`perf-<moment>.data` (`perf record -e cpu-clock -a -g`: the software clock,
the only one this machine's sandbox allows) plus a summary that splits the
machine's CPU by process group (gateways, load generator, Redis, the
machine's init) into kernel and user time and lists the top symbols.

Moments: `ramp` (when 40 % of the sessions are bound), `bound` (all bound;
a `--push-rate` broadcast starts then), `back` (Redis restarted after
`--redis-outage`), each with an optional `+SECONDS` delay.
"""

import os
import re
import subprocess
import threading
import time

KERNEL_DSO = "[kernel.kallsyms]"


def parse_moments(spec):
    """`ramp,bound+120` -> [("ramp", 0.0, "ramp"), ("bound", 120.0, "bound+120")]."""
    out = []
    for item in filter(None, (x.strip() for x in (spec or "").split(","))):
        m = re.fullmatch(r"(ramp|bound|back)(?:\+(\d+(?:\.\d+)?))?", item)
        if not m:
            raise SystemExit(f"--profile {item!r}: ramp, bound or back, optionally +SECONDS")
        out.append((m.group(1), float(m.group(2) or 0), item))
    return out


def threads_of(pids):
    """Every thread id of these processes, now."""
    tids = set()
    for p in pids:
        try:
            tids.update(int(t) for t in os.listdir(f"/proc/{p}/task"))
        except OSError:
            pass
    return tids


class Profiler:
    """Takes the profiles of a run when its moments come (see the module doc)."""

    def __init__(self, spec, secs, out, groups, started, log):
        self.moments = parse_moments(spec)
        self.secs = secs
        self.out = out
        self.groups = groups  # name -> callable returning the group's pids
        self.started = started  # the run's Popen list, torn down on exit
        self.log = log
        self.marks = {}  # moment -> time.time() it happened
        self.taken = []  # (name, data file, {tid: group})
        self.threads = []
        self.lock = threading.Lock()

    def mark(self, moment):
        """`moment` happened now: profiles waiting for it start (after their delay)."""
        with self.lock:
            if moment in self.marks:
                return
            self.marks[moment] = time.time()
        for base, delay, name in self.moments:
            if base == moment:
                t = threading.Thread(target=self._take, args=(delay, name), daemon=True)
                t.start()
                self.threads.append(t)

    def _take(self, delay, name):
        time.sleep(delay)
        data = f"{self.out}/perf-{name}.data"
        tid_group = {0: "idle"}
        for g, pids in self.groups.items():
            for t in threads_of(pids()):
                tid_group[t] = g
        self.log(f"profiling '{name}' for {self.secs:.0f} s -> {data}")
        p = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-a", "-g",
                              "-o", data, "--", "sleep", str(self.secs)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with self.lock:
            self.started.append(p)
        p.wait()
        with self.lock:
            if p in self.started:
                self.started.remove(p)
        self.taken.append((name, data, tid_group))

    def summaries(self):
        """Per profile: the machine's CPU by group and kernel/user, top symbols.
        Also written as perf-<moment>.txt next to the data."""
        for t in self.threads:
            t.join(timeout=self.secs + 30)
        out = {}
        for name, data, tid_group in self.taken:
            try:
                s = summarize(data, tid_group)
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                self.log(f"profile '{name}': no summary ({e})")
                continue
            out[name] = s
            with open(f"{self.out}/perf-{name}.txt", "w") as f:
                f.write(render(name, s))
        return out


def perf_report(data, sort, limit):
    r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                        "--sort", sort, "--percent-limit", str(limit), "-q"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise subprocess.SubprocessError(r.stderr.strip()[:200])
    return r.stdout.splitlines()


def summarize(data, tid_group):
    by_group = {}
    for line in perf_report(data, "pid,dso", 0.001):
        # "  12.34%  4242:miop-core-0  [kernel.kallsyms]"
        m = re.match(r"\s*([\d.]+)%\s+(\d+):(.*?)\s{2,}(\S.*?)\s*$", line)
        if not m:
            continue
        pct, tid, dso = float(m.group(1)), int(m.group(2)), m.group(4)
        g = tid_group.get(tid, "other")
        kind = "kernel" if dso == KERNEL_DSO else "user"
        slot = by_group.setdefault(g, {"kernel": 0.0, "user": 0.0})
        slot[kind] += pct
    symbols = []
    for line in perf_report(data, "dso,sym", 0.8)[:20]:
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*$", line)
        if m:
            symbols.append({"pct": float(m.group(1)), "dso": m.group(2), "sym": m.group(3)})
    for slot in by_group.values():
        slot["kernel"] = round(slot["kernel"], 1)
        slot["user"] = round(slot["user"], 1)
    kernel = round(sum(s["kernel"] for s in by_group.values()), 1)
    return {"data": data, "by_group": by_group, "kernel_pct": kernel, "top_symbols": symbols}


def render(name, s):
    lines = [f"profile '{name}' ({s['data']}): share of all samples, all CPUs",
             f"kernel, all processes: {s['kernel_pct']:.1f} %", "",
             f"{'group':<10} {'kernel %':>9} {'user %':>8}"]
    for g, v in sorted(s["by_group"].items(), key=lambda kv: -(kv[1]["kernel"] + kv[1]["user"])):
        lines.append(f"{g:<10} {v['kernel']:>9.1f} {v['user']:>8.1f}")
    lines += ["", "top symbols:"]
    lines += [f"{x['pct']:>6.2f} %  {x['dso']:<20} {x['sym']}" for x in s["top_symbols"]]
    return "\n".join(lines) + "\n"
