#!/usr/bin/env python3
"""N sessions on this machine with one command (benches/c1m.sh runs this).

What it takes to hold a million Miop sessions on one host, done for you:

1. checks the sysctls a big loopback run needs (ephemeral port range,
   somaxconn, SYN backlog) and applies what it can, saying what it changed;
2. starts as many miopd processes as the fd limit requires (one process may
   hold ~20k fds here), `--cores 1` each so a 2-core box is not shared by
   hundreds of threads, plus a private Redis when presence is measured;
3. runs miop-bench, which spreads its connections over enough loopback
   source addresses by itself (~5,000 per address, src/bench/cli/source_plan.rs)
   so the kernel's ephemeral-port search never becomes the bottleneck;
4. samples every second the CPU and RSS of each process group (gateways,
   load generator, Redis), the kernel's slab and the bound sessions;
5. optionally kills Redis for a while during the hold and measures how long
   presence takes to be consistent again (optionally with the restarted
   Redis kept slow, `--slow-redis`, as a loaded one is: how long until every
   entry is back in it), and checks `/v1/consistency` on every gateway at
   the end;
   (--duration is miop-bench's -d, the whole run: it must cover the ramp,
   --outage-after, the outage and the convergence);
6. tears everything down by PID, also on Ctrl-C, and writes
   target/c1m/{c1m.json, gateways.html, ramp.svg, run.json, run.html,
   summary.txt}.

`--steps 100k,200k,600k,1M --step-duration 60s` runs miop-bench's concurrency
scenario (the seed's table: ramp to each step, hold it) and adds to each step
the gateways' CPU and RSS and the kernel's slab sampled during its hold.

`--server mosquitto` measures the peer with the same command: as many
Mosquitto processes as the fd limit requires, the first the hub and every
other bridged to it for the broadcast topic (`topic miop-bench/all in 1`: a
message published to the hub reaches every broker's subscribers, as a push
through Redis reaches every gateway's sessions), and miop-bench on
`mqtt://` with the same connections, heartbeat and broadcast.

Python rather than bash: the per-second sampler, the teardown on signals and
the JSON/HTML output are each a few lines here.
"""

import argparse
import concurrent.futures
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from c1m_profile import Profiler, parse_moments, render

ADMIN_TOKEN = "c1m-admin"
PUSH_TOKEN = "c1m-push"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

started = []  # Popen objects, torn down in reverse order


def log(msg):
    print(f"c1m {time.strftime('%H:%M:%S')} {msg}", flush=True)


def teardown(*_):
    for p in reversed(started):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for p in started:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    started.clear()


def on_signal(sig, _frame):
    log(f"signal {sig}: tearing down")
    teardown()
    sys.exit(130)


def sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name):
    with open(sysctl_path(name)) as f:
        return f.read().split()


def ensure_sysctls():
    """Applies what a big loopback run needs; returns what was seen/done."""
    wanted = [
        # (name, value to write, predicate on the current value)
        ("net.ipv4.ip_local_port_range", "1024 65535",
         lambda v: int(v[0]) <= 1024 and int(v[1]) >= 65535),
        ("net.core.somaxconn", "65535", lambda v: int(v[0]) >= 65535),
        ("net.ipv4.tcp_max_syn_backlog", "65535", lambda v: int(v[0]) >= 65535),
    ]
    report = {}
    for name, value, ok in wanted:
        before = " ".join(read_sysctl(name))
        if ok(before.split()):
            report[name] = {"value": before, "changed": False}
            continue
        try:
            with open(sysctl_path(name), "w") as f:
                f.write(value)
            report[name] = {"value": value, "was": before, "changed": True}
            log(f"sysctl {name}: {before} -> {value}")
        except OSError as e:
            report[name] = {"value": before, "changed": False, "error": str(e)}
            log(f"WARNING: cannot set {name} to {value} ({e}); the run may fall short")
    return report


def parse_count(text):
    """100k, 1M, 250000 (miop-bench's -c suffixes)."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def run_in_netns(a):
    """Runs this script again inside a network namespace of its own whose
    TCP established-connection hash is sized for the run, then deletes it.

    The host's hash is sized at boot (262,144 buckets on this box): with the
    ~2 sockets per session of a loopback run, 1M sessions make chains of ~8
    that every received segment walks (`__inet_lookup_established` was the
    top kernel symbol at 1M). `net.ipv4.tcp_child_ehash_entries` sizes the
    hash of namespaces created after it is set (Linux 6.1+): it is set for
    the creation only and put back. Everything (gateways, Redis, load
    generator) runs inside, on the namespace's own loopback."""
    entries = 1 << max(16, math.ceil(math.log2(max(1, 4 * a.sessions))))
    entries = min(entries, 1 << 24)
    name = f"c1m-{os.getpid()}"
    knob = "net.ipv4.tcp_child_ehash_entries"
    try:
        old = " ".join(read_sysctl(knob))
    except OSError:
        raise SystemExit(f"--netns: this kernel has no {knob} (Linux 6.1+)")
    with open(sysctl_path(knob), "w") as f:
        f.write(str(entries))
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
    finally:
        with open(sysctl_path(knob), "w") as f:
            f.write(old)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        log(f"network namespace {name}: TCP established hash of {entries:,} buckets")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child tears down, then we delete
        env = dict(os.environ, C1M_NETNS=name, C1M_EHASH=str(entries))
        return subprocess.run(["ip", "netns", "exec", name, sys.executable,
                               os.path.abspath(__file__), *sys.argv[1:]], env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name])


_handed_out = set()


def free_port():
    """A port nothing listens on, never the same twice in a run (the kernel
    may give a just-closed probe port again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http_get(port, path, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")
    except Exception:
        return None


def wait_ready(proc, what, limit=30):
    end = time.time() + limit
    line = proc.stdout.readline()
    if not line.startswith("miopd ready") or time.time() > end:
        raise SystemExit(f"{what} did not start: {line!r}")
    return line


def start_redis(port):
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--maxclients", "20000",
                          "--enable-debug-command", "local"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started.append(p)
    end = time.time() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                         text=True).stdout.strip() != "PONG":
        if time.time() > end:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)
    return p


def redis_filled(port, gateways, sessions):
    """A restarted Redis holds every session's entry, and the gateways' sets
    every session, again (one KEYS in a script, and one SCARD per gateway)."""
    def cli(*args):
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    try:
        entries = int(cli("EVAL", "return #redis.call('KEYS', 'miop:dev:*')", "0"))
        members = sum(int(cli("SCARD", f"miop:node:{{c1m-{i}}}:devices") or 0)
                      for i in range(gateways))
    except (ValueError, subprocess.TimeoutExpired):
        return False
    return entries == sessions and members == sessions


class SlowRedis(threading.Thread):
    """Keeps Redis slow but answering, as a loaded one is: blocks it with
    DEBUG SLEEP `busy` seconds, lets it serve `gap` seconds, again, until
    stopped (--slow-redis)."""

    def __init__(self, port, busy, gap):
        super().__init__(daemon=True)
        self.port, self.busy, self.gap = port, busy, gap
        self.stop = threading.Event()
        self.blocks = 0

    def run(self):
        arg = f"{self.busy:.3f}"
        cmd = f"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${len(arg)}\r\n{arg}\r\n".encode()
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            f = s.makefile("rb")
            while not self.stop.is_set():
                s.sendall(cmd)
                if f.readline().strip() != b"+OK":
                    log("DEBUG SLEEP refused; --slow-redis has no effect")
                    return
                self.blocks += 1
                self.stop.wait(self.gap)


def proc_stat(pid):
    """(utime+stime ticks, rss bytes, ppid) of one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        return int(fields[11]) + int(fields[12]), rss, int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def sched_wait(pid):
    """(ns runnable but waiting for a CPU, times it got one) summed over the
    threads of one process (/proc/PID/task/*/schedstat: on-CPU time,
    run-queue wait, timeslices)."""
    wait, slices = 0, 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                v = f.read().split()
            wait += int(v[1])
            slices += int(v[2])
        except (OSError, IndexError, ValueError):
            pass
    return wait, slices


def descendants(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                kids.setdefault(st[2], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_times():
    """The machine's CPU time by kind, in ticks (/proc/stat's first line):
    softirq is where loopback TCP's receive work lands when no process is
    charged for it, steal what the hypervisor took."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return {"user": v[0] + v[1], "system": v[2], "idle": v[3] + v[4], "softirq": v[5] + v[6],
            "steal": v[7]}


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Once a second: CPU and RSS per process group, slab, bound sessions."""

    def __init__(self, groups, admin_ports):
        super().__init__(daemon=True)
        self.groups = groups  # name -> callable returning pids
        self.admin_ports = admin_ports
        self.samples = []
        self.stop = threading.Event()
        self.sessions = 0

    def run(self):
        t0 = time.time()
        last = {}
        pids_cache, pids_at = {}, 0
        cpu_prev = (time.time(), cpu_times())
        while not self.stop.wait(1.0):
            now = time.time()
            if now - pids_at > 5:
                pids_cache = {g: f() for g, f in self.groups.items()}
                pids_at = now
            sample = {"t": round(now - t0, 2)}
            for g, pids in pids_cache.items():
                ticks, rss, wait, slices = 0, 0, 0, 0
                for p in pids:
                    st = proc_stat(p)
                    if st:
                        ticks += st[0]
                        rss += st[1]
                    w = sched_wait(p)
                    wait += w[0]
                    slices += w[1]
                prev = last.get(g)
                last[g] = (now, ticks, wait, slices, tuple(pids))
                cpu = 0.0
                sample[g] = {"cpu": 0.0, "rss": rss}
                if prev and now > prev[0]:
                    cpu = max(0.0, (ticks - prev[1]) / CLK_TCK / (now - prev[0]))
                    sample[g]["cpu"] = round(cpu, 3)
                    if prev[4] == tuple(pids) and slices > prev[3]:
                        # Time the group's threads were runnable but waited
                        # for a CPU (threads waiting at once, on average),
                        # and the mean wait each time one got a CPU: what a
                        # message arriving for a sleeping thread waits on a
                        # busy machine before any code of ours runs.
                        sample[g]["runq"] = round((wait - prev[2]) / 1e9 / (now - prev[0]), 3)
                        sample[g]["runq_wait_us"] = round((wait - prev[2]) / 1e3
                                                          / (slices - prev[3]), 1)
            ct = cpu_times()
            dt = max(1e-3, now - cpu_prev[0])
            sample["machine_cpu"] = {k: round((ct[k] - cpu_prev[1][k]) / CLK_TCK / dt, 3)
                                     for k in ct}
            cpu_prev = (now, ct)
            mi = meminfo()
            sample["slab"] = mi.get("Slab", 0)
            sample["mem_used"] = mi["MemTotal"] - mi["MemAvailable"]
            total, pending, reconciling, up, answered = 0, 0, 0, 0, 0
            for port in self.admin_ports:
                h = http_get(port, "/healthz", timeout=2) or {}
                total += h.get("sessions", 0)
                p = h.get("presence") or {}
                answered += bool(h)
                pending += p.get("pending", 0)
                reconciling += bool(p.get("reconciling"))
                up += p.get("redis") == "up"
            self.sessions = total
            sample["sessions"] = total
            if self.admin_ports:
                # Presence as the gateways see it: changes not yet in Redis,
                # gateways still reconciling, gateways that see Redis up.
                sample["presence"] = {"pending": pending, "reconciling": reconciling,
                                      "redis_up": up, "answered": answered}
            self.samples.append(sample)


def consistency(admin_ports):
    """Sum of /v1/consistency over the gateways (None if one cannot answer)."""
    total = {"missing": 0, "stale": 0, "mismatched": 0, "pending": 0,
             "redis_entries": 0, "local_sessions": 0}
    for port in admin_ports:
        c = http_get(port, "/v1/consistency", timeout=60)
        if not c or "missing" not in c:
            return None
        for k in total:
            total[k] += c.get(k, 0)
    return total


def metrics_text(port, timeout=30):
    """One gateway's `/metrics` page, or None if it does not answer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()
    except Exception:
        return None


def gateway_closes(admin_ports):
    """Connections the gateways closed, by reason, summed over all of them
    (`miop_connections_closed_total`): the gateway's side of "0 bind and 0
    heartbeat timeouts", which the load generator cannot see. None if a
    gateway does not answer."""
    total = {}
    for port in admin_ports:
        text = metrics_text(port)
        if text is None:
            return None
        for line in text.splitlines():
            m = re.match(r'miop_connections_closed_total\{reason="([a-z_]+)"\} (\d+)', line)
            if m:
                total[m.group(1)] = total.get(m.group(1), 0) + int(m.group(2))
    return total


def gateway_deliveries(admin_ports):
    """Push frames the gateways have queued and written to their sockets since
    they started (`miop_push_deliveries_total`, summed; every gateway scraped
    at once), or None if one does not answer."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(admin_ports)) as ex:
        pages = list(ex.map(metrics_text, admin_ports))
    if any(p is None for p in pages):
        return None
    found = (re.search(r"^miop_push_deliveries_total (\d+)", p, re.M) for p in pages)
    return sum(int(m.group(1)) for m in found if m)


def watch_gateway_fanout(admin_ports, sessions, out, stop):
    """The gateways' side of a broadcast (the run's only push): from the first
    frame written to frames written for 99 % of the sessions. Watched from the
    start of the run, since a ramp can outrun the sampler's view of "all
    bound". The load generator's fan-out time adds its own backlog of pushes
    to read on the same 2 cores, where devices each read their own. Each
    round scrapes every gateway; a count lies between its start and end."""
    t0, timeline, first = time.time(), [], None
    while not stop.is_set():
        start = time.time()
        n = gateway_deliveries(admin_ports)
        end = time.time()
        if n:
            timeline.append((round(start - t0, 2), round(end - t0, 2), n))
            if first is None:
                # The first frame went out after the previous round began.
                first = timeline[-2][0] if len(timeline) > 1 else start - t0
            if n >= 0.99 * sessions:
                out.update({"first_after_s": round(first, 1),
                            "written_99pct_within_s": round(end - t0 - first, 1),
                            "deliveries": n})
                break
        else:
            timeline = [(round(start - t0, 2), round(end - t0, 2), 0)]
        stop.wait(max(0.0, 1.0 - (end - start)))
    out["timeline"] = timeline


def synced(admin_ports):
    """Every gateway sees Redis up with nothing pending and no reconciliation
    running (cheap: /healthz; gateways older than `reconciling` omit it)."""
    for port in admin_ports:
        h = http_get(port, "/healthz", timeout=5)
        p = (h or {}).get("presence", {})
        if p.get("redis") != "up" or p.get("pending", 1) != 0 or p.get("reconciling", False):
            return False
    return True


def consistent(c, n):
    return c is not None and c["missing"] == c["stale"] == c["mismatched"] == c["pending"] == 0 \
        and c["local_sessions"] == n


def human(v):
    """1.5M, 250k, 12.5, 0.25: axis labels that fit."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:,.3g}"


def svg_chart(title, unit, series, width=900, height=220, tmax=None):
    """A self-contained SVG line chart of {name: [(t, v)]}."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    tmax = tmax or max(t for t, _ in pts) or 1
    vmax = max(v for _, v in pts) or 1
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    left, bottom = 70, 30
    w, h = width - left - 10, height - bottom - 25
    out = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="14" font-size="13" font-weight="bold">{title}</text>']
    for i in range(5):
        v = vmax * i / 4
        y = 20 + h - h * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{human(v)} {unit}</text>')
    for i in range(6):
        t = tmax * i / 5
        x = left + w * i / 5
        out.append(f'<text x="{x}" y="{20 + h + 16}" text-anchor="middle">{t:.0f} s</text>')
    for k, (name, s) in enumerate(series.items()):
        c = colors[k % len(colors)]
        s = [(t, v) for t, v in s if t <= tmax]
        path = " ".join(f"{left + w * t / tmax:.1f},{20 + h - h * v / vmax:.1f}" for t, v in s)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{left + w - 150}" y="{34 + 14 * k}" fill="{c}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_html(path, result):
    s = result["samples"]
    groups = [g for g in ("gateways", "bench", "redis", "pid1") if s and g in s[0]]
    charts = [
        svg_chart("Bound sessions", "", {"sessions": [(x["t"], x["sessions"]) for x in s]}),
        svg_chart("CPU (cores)", "", {g: [(x["t"], x[g]["cpu"]) for x in s] for g in groups}),
        svg_chart("Machine CPU by kind (cores)", "", {k: [(x["t"], x["machine_cpu"][k]) for x in s]
                                           for k in ("user", "system", "softirq", "idle", "steal")
                                           if s and "machine_cpu" in s[0]}),
        svg_chart("RSS (GB)", "GB", {g: [(x["t"], x[g]["rss"] / 1e9) for x in s] for g in groups}),
        svg_chart("Kernel memory (GB)", "GB", {
            "slab": [(x["t"], x["slab"] / 1e9) for x in s],
            "memory in use": [(x["t"], x["mem_used"] / 1e9) for x in s]}),
        svg_chart("Presence changes not yet in Redis (all gateways)", "", {
            "pending": [(x["t"], x["presence"]["pending"]) for x in s if "presence" in x]}),
        svg_chart("Gateways reconciling with Redis", "", {
            "reconciling": [(x["t"], x["presence"]["reconciling"]) for x in s if "presence" in x]}),
    ]
    summary = json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2)
    with open(path, "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>c1m: gateway side</title>"
                "<body style='font-family:sans-serif;max-width:960px;margin:auto'>"
                f"<h1>c1m: {result['params']['sessions']:,} sessions, gateway side</h1>"
                "<p>Sampled every second by benches/c1m.py; the load generator's own "
                "report (latency, binds per second) is <a href='run.html'>run.html</a>.</p>"
                + "".join(f"<div>{c}</div>" for c in charts)
                + f"<h2>Summary</h2><pre>{summary}</pre></body>")


MQTT_TOPIC = "miop-bench/all"  # miop-bench's --push-to all on mqtt://


def start_mosquitto(i, port, hub_port, out):
    """Broker i on `port`; every broker but the hub bridges the broadcast
    topic in from the hub. Mosquitto prints nothing when ready: wait for the
    port to accept."""
    conf = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
            "log_dest stderr", "log_type error", "log_type warning", "max_keepalive 65535",
            "set_tcp_nodelay true"]
    if hub_port:
        conf += [f"connection c1m-bridge-{i}", f"address 127.0.0.1:{hub_port}",
                 f"topic {MQTT_TOPIC} in 1", "cleansession true", "try_private false",
                 "notifications false", "bridge_protocol_version mqttv311"]
    path = f"{out}/mosquitto-{i}.conf"
    with open(path, "w") as f:
        f.write("\n".join(conf) + "\n")
    p = subprocess.Popen(["mosquitto", "-c", path], stdout=subprocess.DEVNULL,
                         stderr=open(f"{out}/mosquitto-{i}.log", "w"))
    started.append(p)
    return p


def wait_port(port, what, limit=30):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start listening on {port}")


def step_figures(steps, samples):
    """Each concurrency step with what the sampler saw during its hold:
    gateways' mean CPU and peak RSS, the kernel's slab and memory in use."""
    out = []
    for st in steps:
        lo = st.get("hold_started_s", 0)
        hi = lo + st.get("held_s", 0)
        win = [x for x in samples if lo <= x["t"] <= hi]
        fig = {k: st.get(k) for k in ("target", "ramp_s", "held_s", "connected_min",
                                      "errors", "timeouts")}
        lat = dict(st.get("latency", {}))
        if st.get("ramp_latency", {}).get("bind", {}).get("count"):
            lat["bind"] = st["ramp_latency"]["bind"]
        for m in ("ping", "bind"):
            p = lat.get(m) or {}
            fig[f"{m}_p50_us"], fig[f"{m}_p99_us"] = p.get("p50"), p.get("p99")
        if win:
            fig["gateways_cpu_cores"] = round(sum(x["gateways"]["cpu"] for x in win) / len(win), 2)
            fig["gateways_rss_bytes"] = max(x["gateways"]["rss"] for x in win)
            fig["bench_cpu_cores"] = round(sum(x["bench"]["cpu"] for x in win) / len(win), 2)
            fig["slab_bytes"] = max(x["slab"] for x in win)
            fig["machine_idle_cores"] = round(
                sum(x["machine_cpu"]["idle"] for x in win) / len(win), 2)
            fig["mem_used_bytes"] = max(x["mem_used"] for x in win)
        out.append(fig)
    return out


def step_table(figs):
    """The steps as a Markdown table (printed, and pasted into BENCHMARKS.md)."""
    us = lambda v: "–" if v is None else (
        f"{v / 1e6:.2f} s" if v >= 1e6 else f"{v / 1000:.1f} ms" if v >= 1000 else f"{v} µs")
    gb = lambda v: "–" if v is None else f"{v / 1e9:.2f} GB"
    rows = ["| step | ramp | bind p50 / p99 | ping p50 / p99 | errors, timeouts "
            "| gateways CPU, RSS | load gen CPU | slab, memory in use |",
            "|---:|---:|---|---|---|---|---|---|"]
    for f in figs:
        rows.append(
            f"| {f['target']:,} | {f['ramp_s'] or 0:.1f} s | {us(f['bind_p50_us'])} / {us(f['bind_p99_us'])} "
            f"| {us(f['ping_p50_us'])} / {us(f['ping_p99_us'])} | {f['errors']}, {f['timeouts']} "
            f"| {f.get('gateways_cpu_cores', '–')} cores, {gb(f.get('gateways_rss_bytes'))} "
            f"| {f.get('bench_cpu_cores', '–')} cores "
            f"| {gb(f.get('slab_bytes'))}, {gb(f.get('mem_used_bytes'))} |")
    return "\n".join(rows)


def ramp_svg(result, timeline):
    """One picture of the run: bound sessions and binds per second, the
    per-second ping p99, CPU and kernel memory, on one time axis (the
    load generator's timeline and the sampler's, both from the start)."""
    s = result["samples"]
    tmax = max((p["t"] for p in timeline), default=0) or None
    title = (f"{result['params']['server']} ({result['params']['io']}), "
             f"{result['params']['sessions']:,} sessions, {result['params']['commit']}")
    charts = [
        svg_chart(f"Bound sessions: {title}", "", tmax=tmax, series={
            "bound (load generator)": [(p["t"], p["connected"]) for p in timeline]}),
        svg_chart("Binds per second", "/s", tmax=tmax, series={
            "binds/s": [(p["t"], p["binds_per_s"]) for p in timeline]}),
        svg_chart("Per-second ping p99", "ms", tmax=tmax, series={
            "ping p99": [(p["t"], p["latency"].get("ping", {}).get("p99", 0) / 1000)
                         for p in timeline if p["latency"].get("ping", {}).get("count")]}),
        svg_chart("CPU by process group (cores)", "", tmax=tmax, series={g: [(x["t"], x[g]["cpu"]) for x in s]
                                      for g in ("gateways", "bench", "pid1") if s and g in s[0]}),
        svg_chart("Machine CPU by kind (cores)", "", tmax=tmax, series={k: [(x["t"], x["machine_cpu"][k]) for x in s]
                                           for k in ("user", "system", "softirq", "idle", "steal")
                                           if s and "machine_cpu" in s[0]}),
        svg_chart("Kernel memory (GB)", "GB", tmax=tmax, series={
            "slab": [(x["t"], x["slab"] / 1e9) for x in s],
            "memory in use": [(x["t"], x["mem_used"] / 1e9) for x in s]}),
    ]
    charts = [c for c in charts if c]
    height = sum(int(c.split('height="', 1)[1].split('"', 1)[0]) for c in charts)
    body, y = [], 0
    for c in charts:
        body.append(f'<g transform="translate(0,{y})">' + c.replace(
            '<svg ', '<svg x="0" y="0" ', 1) + "</g>")
        y += int(c.split('height="', 1)[1].split('"', 1)[0])
    return (f'<svg width="900" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            '<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sessions", nargs="?", type=int, default=1_000_000)
    ap.add_argument("--duration", default="5m",
                    help="the whole run, ramp included (miop-bench -d)")
    ap.add_argument("--io", default=os.environ.get("MIOP_IO", "auto"))
    ap.add_argument("--per-gateway", type=int, default=18_000)
    ap.add_argument("--heartbeat", default="60s")
    ap.add_argument("--timeout", default="15")
    ap.add_argument("--connect-rate", default=None)
    ap.add_argument("--threads", type=int, default=0, help="miop-bench -t (default: 2 per worker)")
    ap.add_argument("--no-redis", action="store_true", help="standalone gateways, no presence")
    ap.add_argument("--push-rate", default=None, help="e.g. 1/s: broadcasts once all are bound")
    ap.add_argument("--push-count", default=None, help="stop after this many broadcasts")
    ap.add_argument("--redis-outage", type=float, default=0,
                    help="kill Redis for this many seconds during the hold")
    ap.add_argument("--outage-after", type=float, default=20,
                    help="seconds into the hold at which Redis is killed")
    ap.add_argument("--slow-redis", default=None, metavar="BUSY/GAP",
                    help="after the outage, keep Redis slow until presence is consistent: "
                         "DEBUG SLEEP BUSY seconds every BUSY+GAP (e.g. 2.3/0.4, past the "
                         "gateways' 2 s command timeout)")
    ap.add_argument("--steps", default=None,
                    help="concurrency scenario, e.g. 100k,200k,600k,1M (sessions = the last)")
    ap.add_argument("--step-duration", default="60s", help="hold of each step")
    ap.add_argument("--server", default="miopd", choices=["miopd", "mosquitto"],
                    help="mosquitto: the same run against bridged Mosquitto brokers")
    ap.add_argument("--netns", action=argparse.BooleanOptionalAction, default=False,
                    help="run everything in a network namespace whose TCP connection hash "
                         "is sized for the run (Linux 6.1+, root)")
    ap.add_argument("--profile", default=None, metavar="MOMENTS",
                    help="perf profiles of the whole machine at these moments: ramp (40 %% "
                         "bound), bound, back (Redis restarted), each optionally +SECONDS, "
                         "e.g. ramp,bound,bound+120 (benches/c1m_profile.py)")
    ap.add_argument("--profile-secs", type=float, default=30, help="length of each profile")
    ap.add_argument("--out", default="target/c1m")
    ap.add_argument("--bin", default="target/release")
    a = ap.parse_args()
    steps = None
    if a.steps:
        try:
            steps = [parse_count(x) for x in a.steps.split(",")]
        except ValueError:
            raise SystemExit(f"--steps {a.steps!r}: counts like 100k,200k,600k,1M")
        if not steps or min(steps) <= 0:
            raise SystemExit(f"--steps {a.steps!r}: every step must be above 0")
        a.sessions = max(steps)
    if a.netns and not os.environ.get("C1M_NETNS"):
        return run_in_netns(a)
    mosquitto = a.server == "mosquitto"
    moments = parse_moments(a.profile)
    if moments and mosquitto:
        raise SystemExit("--profile: moments are seen through miopd's admin API (a miopd run's)")
    if any(m[0] == "back" for m in moments) and not a.redis_outage:
        raise SystemExit("--profile back: needs --redis-outage")
    if mosquitto:
        a.no_redis = True
        if a.redis_outage:
            raise SystemExit("--redis-outage is a miopd run's (Mosquitto has no Redis)")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    os.makedirs(a.out, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per_gw = min(a.per_gateway, hard - 2000)
    n_gw = math.ceil(a.sessions / per_gw)
    sysctls = ensure_sysctls()
    params = {"server": a.server, "sessions": a.sessions, "steps": a.steps,
              "step_duration": a.step_duration if steps else None, "gateways": n_gw, "per_gateway": per_gw,
              "cores_per_gateway": 1, "io": a.io, "heartbeat": a.heartbeat,
              "duration": a.duration, "redis": not a.no_redis,
              "fd_limit": hard, "connect_rate": a.connect_rate, "push_rate": a.push_rate,
              "redis_outage_s": a.redis_outage, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
              "cpus": os.cpu_count(), "netns": os.environ.get("C1M_NETNS"),
              "tcp_ehash_entries": int(os.environ.get("C1M_EHASH")
                                       or read_sysctl("net.ipv4.tcp_ehash_entries")[0])}
    log(f"{a.sessions:,} sessions: {n_gw} {a.server} x 1 core ({a.io}), "
        f"heartbeat {a.heartbeat}, duration {a.duration}, redis {not a.no_redis}")

    redis_port = None
    redis = None
    if not a.no_redis:
        redis_port = free_port()
        redis = start_redis(redis_port)
    ports, admin_ports, gws = [], [], []
    env = dict(os.environ, MIOP_IO=a.io, MIOP_LOG="warn")
    for i in range(n_gw if not mosquitto else 0):
        port, aport = free_port(), free_port()
        args = [f"{a.bin}/miopd", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{aport}",
                "--app-key", "pk", "--cores", "1", "--heartbeat", a.heartbeat,
                "--node-id", f"c1m-{i}", "--admin-token", ADMIN_TOKEN, "--push-token", PUSH_TOKEN,
                "--bind-rate", "1000000"]
        if redis_port:
            args += ["--redis", f"redis://127.0.0.1:{redis_port}"]
        p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True,
                             stderr=open(f"{a.out}/miopd-{i}.log", "w"))
        started.append(p)
        gws.append(p)
        ports.append(port)
        admin_ports.append(aport)
    for i, p in enumerate(gws):
        wait_ready(p, f"miopd {i}")
    if mosquitto:
        for i in range(n_gw):
            ports.append(free_port())
            gws.append(start_mosquitto(i, ports[i], ports[0] if i else None, a.out))
        for i, port in enumerate(ports):
            wait_port(port, f"mosquitto {i}")
    log(f"{n_gw} {a.server} processes ready")

    url = (f"mqtt://127.0.0.1:{ports[0]}/" if mosquitto
           else f"miop://c1m:pk@127.0.0.1:{ports[0]}/")
    bench_cmd = [f"{a.bin}/miop-bench", url, "-c", str(a.sessions), "-d", a.duration,
                 "--ping-interval", a.heartbeat, "--latency", "--timeout", a.timeout,
                 "--json", f"{a.out}/run.json", "--report", f"{a.out}/run.html", "--progress", "5s"]
    if steps:
        bench_cmd += ["--scenario", "concurrency", "--steps", a.steps,
                      "--step-duration", a.step_duration]
    if len(ports) > 1:
        bench_cmd += ["--target", ",".join(f"127.0.0.1:{p}" for p in ports[1:])]
    if a.threads:
        bench_cmd += ["-t", str(a.threads)]
    if a.connect_rate:
        bench_cmd += ["--connect-rate", a.connect_rate]
    if a.push_rate and mosquitto:
        bench_cmd += ["--push-rate", a.push_rate, "--push-to", "all", "--qos", "1"]
    elif a.push_rate:
        bench_cmd += ["--push-rate", a.push_rate, "--push-api", f"http://127.0.0.1:{admin_ports[0]}",
                      "--push-token", PUSH_TOKEN, "--push-to", "all"]
    if a.push_count:
        bench_cmd += ["--push-count", a.push_count]
    # The command as run, without the push token.
    log(" ".join("***" if i and bench_cmd[i - 1] == "--push-token" else x
                 for i, x in enumerate(bench_cmd)))
    bench_out = open(f"{a.out}/summary.txt", "w")
    bench = subprocess.Popen(bench_cmd, stdout=subprocess.PIPE, text=True)
    started.append(bench)
    gw_pids = [p.pid for p in gws]
    groups = {"gateways": lambda: gw_pids, "bench": lambda: descendants(bench.pid)}
    # Not ours, never signalled: the machine's init. In the sandboxes these
    # runs were measured in it is an agent whose CPU grows with the load (a
    # third of a core during a 1M run), taken from the same 2 cores.
    groups["pid1"] = lambda: [1]
    if redis:
        groups["redis"] = lambda: [redis.pid]
    sampler = Sampler(groups, admin_ports)
    sampler.start()
    profiler = Profiler(a.profile, a.profile_secs, a.out, groups, started, log)

    outage = {}
    checks = {}
    gateway_fanout = {}

    def monitor():
        """Bound → (Redis outage) → presence consistent, while the bench holds."""
        nonlocal redis
        t_start = time.time()
        while sampler.sessions < a.sessions and bench.poll() is None:
            if sampler.sessions >= 0.4 * a.sessions:
                profiler.mark("ramp")
            time.sleep(0.5)
        if bench.poll() is not None:
            return
        checks["all_bound_after_s"] = round(time.time() - t_start, 1)
        profiler.mark("bound")
        if a.redis_outage and redis:
            time.sleep(a.outage_after)
            before = sampler.sessions
            log(f"killing Redis for {a.redis_outage:.0f} s with {before:,} sessions bound")
            redis.kill()
            redis.wait()
            started.remove(redis)
            t_kill = time.time()
            time.sleep(a.redis_outage)
            redis = start_redis(redis_port)
            groups["redis"] = lambda: [redis.pid]
            t_back = time.time()
            profiler.mark("back")
            slow = None
            if a.slow_redis:
                busy, gap = (float(x) for x in a.slow_redis.split("/"))
                slow = SlowRedis(redis_port, busy, gap)
                slow.start()
                log(f"keeping Redis slow: DEBUG SLEEP {busy} s every {busy + gap} s")
            t_filled = None
            if slow:
                # /v1/consistency reads in many rounds, which the blocks time
                # out: while Redis is slow, watch Redis itself fill up again.
                log("Redis back; waiting for every session's entry to be back in Redis")
                while time.time() - t_back < 300 and bench.poll() is None:
                    if redis_filled(redis_port, len(ports), a.sessions):
                        t_filled = time.time()
                        break
                    time.sleep(1)
                slow.stop.set()
                slow.join()
                outage["slow_redis"] = {"busy_gap_s": a.slow_redis, "blocks": slow.blocks,
                                        "filled_after_s": round(t_filled - t_back, 1)
                                        if t_filled else None}
                log(f"Redis no longer slowed; filled after {outage['slow_redis']['filled_after_s']} s")
            log("Redis back; waiting for every gateway's presence to be consistent")
            # Until /v1/consistency agrees on every gateway (at most 300 s): a
            # gateway can look synced (nothing pending) before its
            # reconciliation has found what Redis lost.
            c, t_synced, t_consistent, full_checks = None, None, None, 0
            while time.time() - t_back < 300 + (300 if slow else 0) and bench.poll() is None:
                if synced(admin_ports):
                    t_synced = t_synced or time.time()
                    c = consistency(admin_ports)
                    full_checks += 1
                    if consistent(c, a.sessions):
                        t_consistent = time.time()
                        break
                time.sleep(0.5)
            outage.update({"sessions_before": before, "killed_for_s": round(t_back - t_kill, 1),
                           "synced_after_s": round(t_synced - t_back, 1) if t_synced else None,
                           "consistent_after_s": round(t_consistent - t_back, 1)
                           if t_consistent else None,
                           "full_checks": full_checks,
                           "sessions_after": sampler.sessions, "consistency": c})
            log(f"outage: {outage}")
        if redis:
            t0 = time.time()
            c = None
            while bench.poll() is None:
                if synced(admin_ports):
                    c = consistency(admin_ports)
                    if consistent(c, a.sessions):
                        break
                time.sleep(1)
            checks["consistency"] = c
            checks["consistent"] = consistent(c, a.sessions)
            checks["consistency_checked_after_bound_s"] = round(time.time() - t0, 1)
            log(f"presence in Redis: {c}")

    if not mosquitto:
        threading.Thread(target=monitor, daemon=True).start()
    if a.push_rate and not mosquitto:
        threading.Thread(target=watch_gateway_fanout, daemon=True,
                         args=(admin_ports, a.sessions, gateway_fanout, sampler.stop)).start()

    for line in bench.stdout:
        sys.stdout.write(line)
        bench_out.write(line)
    bench.wait()
    closes = gateway_closes(admin_ports) if admin_ports else None
    sampler.stop.set()
    sampler.join()
    result = {"params": params, "sysctls": sysctls, "bench_exit": bench.returncode,
              "outage": outage or None, "hold_checks": checks, "gateway_closes": closes}
    run = {}
    try:
        with open(f"{a.out}/run.json") as f:
            run = json.load(f)
        result["bench"] = {k: v for k, v in run.items() if k != "timeline"}
    except (OSError, ValueError):
        result["bench"] = None
    s = sampler.samples
    summary = (result["bench"] or {}).get("summary", {})
    if steps and s:
        result["steps"] = step_figures(summary.get("steps", []), s)
    push = summary.get("latency", {}).get("push", {})
    if push.get("count"):
        result["fan_out"] = {"deliveries": push["count"], "p50_us": push.get("p50"),
                             "last_us": push.get("max")}
    if gateway_fanout:
        result["gateway_fan_out"] = dict(gateway_fanout)
        log("gateways' side of the broadcast: " + json.dumps(
            {k: v for k, v in gateway_fanout.items() if k != "timeline"}))
    if s:
        peak = lambda g, k: max((x[g][k] for x in s if g in x), default=0)
        result["peak"] = {g: {"cpu_cores": peak(g, "cpu"), "rss_bytes": peak(g, "rss")}
                          for g in groups}
        result["peak"]["slab_bytes"] = max(x["slab"] for x in s)
        result["peak"]["mem_used_bytes"] = max(x["mem_used"] for x in s)
        # Mosquitto has no admin API to count sessions: the load
        # generator's peak stands in.
        result["peak"]["sessions"] = (max(x["sessions"] for x in s) if admin_ports
                                      else summary.get("peak_connected") or 0)
        bound = summary.get("peak_connected") or 0
        if bound:
            # What each bound connection costs the servers' user space:
            # their RSS growth from the first sample over the peak.
            grown = result["peak"]["gateways"]["rss_bytes"] - s[0]["gateways"]["rss"]
            result["peak"]["server_rss_per_session_bytes"] = round(grown / bound)
    held = [x for x in s if x["sessions"] >= a.sessions] if admin_ports else []
    if held:
        # Run-queue wait while all were bound, per group (medians over the
        # seconds): how long a woken thread waited for a CPU.
        def median(v):
            v = sorted(v)
            return v[len(v) // 2] if v else None
        result["runq_while_bound"] = {
            g: {k: median([x[g][k] for x in held if k in x.get(g, {})])
                for k in ("runq", "runq_wait_us")}
            for g in groups}
        log(f"run-queue wait while all were bound (median per second): {result['runq_while_bound']}")
    result["samples"] = s
    teardown()
    if a.profile:
        result["profiles"] = profiler.summaries()
    with open(f"{a.out}/c1m.json", "w") as f:
        json.dump(result, f, indent=1)
    write_html(f"{a.out}/gateways.html", result)
    if s and run.get("timeline"):
        with open(f"{a.out}/ramp.svg", "w") as f:
            f.write(ramp_svg(result, run["timeline"]))
    log(f"wrote {a.out}/c1m.json, gateways.html, run.json, run.html, summary.txt")
    for name, p in (result.get("profiles") or {}).items():
        sys.stdout.write(render(name, p))
    if result.get("peak"):
        pk = result["peak"]
        log(f"peak: sessions {pk['sessions']:,}, gateways RSS {pk['gateways']['rss_bytes'] / 1e9:.2f} GB, "
            f"slab {pk['slab_bytes'] / 1e9:.2f} GB, memory in use {pk['mem_used_bytes'] / 1e9:.2f} GB")
    log(f"hold checks: {checks}")
    if closes is not None:
        log(f"connections the gateways closed, by reason: {closes}")
    if result.get("fan_out"):
        log(f"fan-out: {result['fan_out']}")
    if result.get("steps"):
        print(step_table(result["steps"]))
    return bench.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        teardown()
