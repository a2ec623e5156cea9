#!/usr/bin/env python3
"""Renders the bundled Grafana dashboard's panels from a real Prometheus
during a session ramp, so a reader sees what the dashboard shows.

    benches/dashboard_snapshot.py [SESSIONS] [CONNECT_RATE]   (default 19000 1000)

Starts a private redis-server, a release miopd (--redis, push API), Debian's
prometheus scraping it every second, and miop-bench ramping SESSIONS at
CONNECT_RATE/s with one broadcast per second. Afterwards it runs every
panel's queries with query_range, draws them as SVG line charts in
target/dashboard/index.html, and screenshots that page with headless
Chromium to docs/img/dashboard-ramp.png.
"""
import html, json, os, signal, socket, subprocess, sys, tempfile, time, urllib.parse, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 19000
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(args, **kw):
    p = subprocess.Popen(args, **kw)
    procs.append(p)
    return p


def cleanup():
    for p in reversed(procs):
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        except Exception:
            p.kill()


def prom(path, **params):
    url = f"http://127.0.0.1:{PROM}/api/v1/{path}?" + urllib.parse.urlencode(params)
    return json.load(urllib.request.urlopen(url, timeout=30))


def wait(cond, what, limit=60):
    end = time.time() + limit
    while not cond():
        if time.time() > end:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.2)


subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
tmp = tempfile.mkdtemp()
REDIS, GW, ADMIN, PROM = free_port(), free_port(), free_port(), free_port()
try:
    start(["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
          stdout=subprocess.DEVNULL)
    gw = start([f"{ROOT}/target/release/miopd", "--listen", f"127.0.0.1:{GW}", "--admin", f"127.0.0.1:{ADMIN}",
                "--app-key", "pk", "--cores", "2", "--heartbeat", "30s", "--push-token", "snap",
                "--redis", f"redis://127.0.0.1:{REDIS}", "--node-id", "gw0"],
               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "MIOP_LOG": "warn"})
    gw.stdout.readline()
    with open(f"{tmp}/prometheus.yml", "w") as f:
        f.write(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: miop\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{ADMIN}']\n")
    start(["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
           f"--web.listen-address=127.0.0.1:{PROM}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def scraped():
        try:
            r = prom("query", query="miop_sessions")
            return bool(r["data"]["result"])
        except Exception:
            return False
    wait(scraped, "prometheus scraping the gateway")
    time.sleep(5)  # a baseline before the ramp
    t0 = time.time() - 5
    ramp = N / RATE
    subprocess.run([f"{ROOT}/target/release/miop-bench", f"miop://snap:pk@127.0.0.1:{GW}/", "-t", "4", "-c", str(N),
                    "-d", f"{int(ramp + 25)}s", "--connect-rate", f"{RATE}/s", "--bind", "127.0.0.2-127.0.0.5",
                    "--push-rate", "1/s", "--push-api", f"http://127.0.0.1:{ADMIN}", "--push-token", "snap",
                    "--progress", "0"], check=True, stdout=subprocess.DEVNULL)
    time.sleep(8)  # the close-down, scraped
    t1 = time.time()

    dash = json.load(open(f"{ROOT}/grafana/dashboards/miop-gateway.json"))
    panels = [p for p in dash["panels"] if p.get("type") in ("timeseries", "stat")]
    palette = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
    cards = []
    for p in panels:
        series = []
        for t in p.get("targets", []):
            expr = (t["expr"].replace("$__rate_interval", "5s").replace("$__interval", "5s")
                    .replace("$__range", "1m").replace("$instance", ".*"))
            try:
                r = prom("query_range", query=expr, start=t0, end=t1, step=1)
            except Exception as e:
                series.append((f"error: {e}", []))
                continue
            for s in r["data"]["result"]:
                label = t.get("legendFormat") or expr
                for k, v in s["metric"].items():
                    label = label.replace("{{" + k + "}}", v)
                pts = [(float(x) - t0, float(y)) for x, y in s["values"] if y not in ("NaN", "+Inf", "-Inf")]
                series.append((label, pts))
        W, H, L, B = 420, 200, 52, 24
        ys = [y for _, pts in series for _, y in pts] or [0, 1]
        lo, hi = min(0, min(ys)), max(ys)
        hi = hi if hi > lo else lo + 1
        span = t1 - t0
        sx = lambda x: L + (W - L - 8) * x / span
        sy = lambda y: H - B - (H - B - 8) * (y - lo) / (hi - lo)
        svg = [f'<svg width="{W}" height="{H + 16 * max(1, min(len(series), 4))}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="10">']
        for i in range(5):
            yv = lo + (hi - lo) * i / 4
            svg.append(f'<line x1="{L}" x2="{W - 8}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#ddd"/>'
                       f'<text x="{L - 4}" y="{sy(yv) + 3:.1f}" text-anchor="end">{yv:.3g}</text>')
        for i in range(0, int(span) + 1, max(10, int(span) // 6 // 10 * 10 or 10)):
            svg.append(f'<text x="{sx(i):.1f}" y="{H - 8}" text-anchor="middle">{i}s</text>')
        for n, (label, pts) in enumerate(series[:8]):
            c = palette[n % len(palette)]
            if pts:
                svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="'
                           + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts) + '"/>')
            if n < 4:
                svg.append(f'<rect x="{L}" y="{H + 4 + 16 * n}" width="10" height="3" fill="{c}"/>'
                           f'<text x="{L + 14}" y="{H + 9 + 16 * n}">{html.escape(label[:60])}</text>')
        if not any(pts for _, pts in series):
            svg.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#888">no data in this run</text>')
        svg.append("</svg>")
        cards.append(f'<div class="card"><h3>{html.escape(p["title"])}</h3>{"".join(svg)}</div>')
    out = f"{ROOT}/target/dashboard"
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/index.html", "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>miop dashboard snapshot</title><style>"
                "body{font-family:sans-serif;margin:12px;background:#f4f5f7}"
                ".grid{display:grid;grid-template-columns:repeat(3,440px);gap:10px}"
                ".card{background:#fff;border:1px solid #ddd;padding:6px}h3{font-size:12px;margin:0 0 4px}</style>"
                f"<h2>Gateway dashboard, rendered from a real Prometheus: {N} sessions ramped at {RATE}/s, "
                f"1 broadcast/s (x = seconds since the start)</h2><div class=grid>{''.join(cards)}</div>")
    rows = (len(cards) + 2) // 3
    shot = f"{ROOT}/docs/img/dashboard-ramp.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp}/chrome",
                    f"--screenshot={shot}", f"--window-size=1360,{80 + rows * 290}", f"file://{out}/index.html"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{len(cards)} panels rendered to {out}/index.html and {shot}")
finally:
    cleanup()
