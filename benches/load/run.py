#!/usr/bin/env python3
"""Side-by-side load benchmark: hookgate against nginx and a hand-written Node
receiver, on this machine, in one run, repeats interleaved.

    python3 benches/load/run.py                 # full run (about 6 minutes)
    python3 benches/load/run.py --smoke         # seconds; CI runs this to keep it working

Rows, each behind the same upstream (an nginx worker answering 200):
  upstream      the upstream alone (wrk -> upstream)
  nginx         nginx as a plain allow-list reverse proxy, 1 worker
  node          express + ajv + transcript removal + node:http keep-alive forward, 1 process
  hg-pass       hookgate, validation off, transcription kept, 1 worker thread
  hg-full       hookgate, enforce + strip, 1 worker thread
  hg-full-log   the same with its access log on (info level, to a file)
  hg-full-logbuf  the same with the access log buffered ([log] buffer_bytes = 65536,
                flush_ms = 1000: nginx's access_log ... buffer=64k flush=1s)
  hg-spool      hookgate, enforce + strip, delivery = "spool": each webhook fsync'd to
                the spool before its 202, delivered in the background (2 KB, 64 KB)

Reported per row and payload: requests/s, p50 and p99 latency, proxy CPU time per
request (utime+stime of the proxy's processes over the run / requests), peak
RSS, and ratios against nginx and against node. Load goes to 127.0.0.1 only;
every run is bounded by wrk's duration.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "benches", "load")
SCHEMA = os.path.join(ROOT, "schemas", "sipgate-ai-agents-webhook.v1.json")
TICK = os.sysconf("SC_CLK_TCK")

WRK_LUA = r"""
local f = assert(io.open(os.getenv("PAYLOAD"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.3f %d %d %d\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def status_kib(pids, key):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def need(cmd, package):
    if shutil.which(cmd):
        return
    print(f"installing {package} (Debian)", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="hookgate-load-")
        self.procs = []
        self.up_port = free_port()

    # ---------------------------------------------------------------- servers
    def spawn(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
        self.procs.append(p)
        return p

    def nginx(self, name, port, location):
        d = os.path.join(self.tmp, "nginx-" + name)
        os.makedirs(d)
        conf = f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
  uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
  upstream up {{ server 127.0.0.1:{self.up_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    {location}
  }}
}}"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        master = self.spawn(["nginx", "-c", path, "-g", "daemon off;"])
        wait_port(port)
        workers = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
        return [int(w) for w in workers]

    def hookgate(self, name, port, validation, transcription, log, binary=None, spool=False):
        d = os.path.join(self.tmp, "hg-" + name)
        os.makedirs(d)
        schema = f'schema = "{SCHEMA}"\n' if validation != "off" else ""
        # The spool row: every webhook written durably (fsync) before its 202,
        # delivered in the background; duplicate suppression off, since wrk sends
        # the same body again and again.
        spool_top = f'[spool]\ndir = "{d}/spool"\nmax_bytes = 8589934592\ndedup_window_s = 0\n' if spool else ""
        spool_route = 'delivery = "spool"\n' if spool else ""
        conf = f"""
[server]
listen = ["127.0.0.1:{port}"]
threads = 1
[metrics]
listen = "127.0.0.1:0"
[access]
allow = ["127.0.0.1/32"]
[limits]
max_body_bytes = 2097152
[log]
level = "{'info' if log else 'warn'}"
{'buffer_bytes = 65536' if log == "buffered" else ''}
{spool_top}
[[route]]
name = "crm"
path = "/webhooks/crm"
upstream = "http://127.0.0.1:{self.up_port}/"
{schema}validation = "{validation}"
transcription = "{transcription}"
{spool_route}"""
        path = os.path.join(d, "hookgate.toml")
        with open(path, "w") as f:
            f.write(conf)
        logf = open(os.path.join(d, "hookgate.log"), "w")
        p = self.spawn([binary or self.args.binary, "run", "-c", path], stderr=logf)
        wait_port(port)
        time.sleep(0.3)
        return [p.pid]

    def node(self, port):
        node_dir = os.path.join(HERE, "node")
        if not os.path.isdir(os.path.join(node_dir, "node_modules")):
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=node_dir, check=True)
        p = self.spawn(["node", "server.js", str(port), str(self.up_port), SCHEMA], cwd=node_dir)
        wait_port(port)
        return [p.pid]

    def stop(self):
        for p in self.procs:
            try:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=5)
            except Exception:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- runs
    def wrk(self, port, payload, pids):
        lua = os.path.join(self.tmp, "post.lua")
        if not os.path.exists(lua):
            with open(lua, "w") as f:
                f.write(WRK_LUA)
        before = cpu_ticks(pids)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{self.args.connections}", f"-d{self.args.duration}s", "-s", lua,
             f"http://127.0.0.1:{port}/webhooks/crm"],
            capture_output=True, text=True, env=dict(os.environ, PAYLOAD=payload), timeout=self.args.duration + 30)
        after = cpu_ticks(pids)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
        if not line:
            raise RuntimeError(f"wrk failed: {out.stdout} {out.stderr}")
        n, secs, p50, p99, errors = line[0].split()[1:]
        n = int(n)
        return {
            "rps": n / float(secs),
            "p50_ms": int(p50) / 1000,
            "p99_ms": int(p99) / 1000,
            "errors": int(errors),
            "cpu_us": (after - before) / TICK * 1e6 / max(n, 1) if pids else None,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run that only checks everything works")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hookgate"))
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=BINARY",
                    help="also run the full pipeline on another hookgate build (before/after rows)")
    ap.add_argument("--sizes", default=None, help="comma-separated subset of: 2,64,900 (KB)")
    ap.add_argument("--rows", default=None, help="comma-separated subset of the rows (default: all)")
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.repeats = 1, 1
        if not os.path.exists(args.binary):
            args.binary = os.path.join(ROOT, "target", "debug", "hookgate")
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    if not args.rows or "node" in {r.strip() for r in args.rows.split(",")}:
        need("node", "nodejs")
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)

    b = Bench(args)
    try:
        sizes = {"2 KB": 2048, "64 KB": 65536, "900 KB": 921600}
        if args.smoke:
            sizes = {"2 KB": 2048}
        if args.sizes:
            keep = {f"{k.strip()} KB" for k in args.sizes.split(",")}
            sizes = {k: v for k, v in sizes.items() if k in keep}
        payloads = {}
        for label, size in sizes.items():
            path = os.path.join(b.tmp, f"payload-{size}.json")
            subprocess.run([sys.executable, os.path.join(HERE, "payload.py"), str(size), path], check=True)
            payloads[label] = path

        b.nginx("upstream", b.up_port, 'location / { return 200 \'{"ok":true}\'; }')
        servers = {
            "nginx": lambda port: b.nginx("proxy", port, """
    location /webhooks/crm {
      allow 127.0.0.1; deny all;
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }"""),
            "node": b.node,
            "hg-pass": lambda port: b.hookgate("pass", port, "off", "keep", False),
            "hg-full": lambda port: b.hookgate("full", port, "enforce", "strip", False),
            "hg-full-log": lambda port: b.hookgate("full-log", port, "enforce", "strip", True),
            "hg-full-logbuf": lambda port: b.hookgate("full-logbuf", port, "enforce", "strip",
                                                      "buffered"),
            "hg-spool": lambda port: b.hookgate("spool", port, "enforce", "strip", False, spool=True),
        }
        for spec in args.compare:
            name, binary = spec.split("=", 1)
            servers["hg-full@" + name] = (
                lambda port, name=name, binary=binary:
                b.hookgate("cmp-" + name, port, "enforce", "strip", False, binary=binary))
            servers["hg-spool@" + name] = (
                lambda port, name=name, binary=binary:
                b.hookgate("cmp-spool-" + name, port, "enforce", "strip", False, binary=binary,
                           spool=True))
        rows = ["upstream"] + list(servers)
        if args.rows:
            keep = {r.strip() for r in args.rows.split(",")}
            rows = [r for r in rows if r in keep or r.split("@")[0] in keep]
        # Only the rows measured are started (a training run needs no node).
        ports = {"upstream": b.up_port}
        pids = {"upstream": []}
        for name in rows:
            if name in servers:
                ports[name] = free_port()
                pids[name] = servers[name](ports[name])
        idle_rss = {k: status_kib(v, "VmRSS") for k, v in pids.items() if k.startswith("hg")}
        results = {}
        for rep in range(args.repeats):
            for label in sizes:
                for name in rows:
                    if label == "900 KB" and name.split("@")[0] in ("nginx", "node", "upstream", "hg-spool"):
                        continue  # the issue asks for 900 KB on hookgate only
                    r = b.wrk(ports[name], payloads[label], pids[name])
                    results.setdefault((name, label), []).append(r)
                    print(f"rep {rep + 1} {label:>6} {name:<12} {r['rps']:9.0f} req/s  "
                          f"cpu/req {r['cpu_us'] or 0:7.1f} us  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}",
                          file=sys.stderr)
        peak = {k: status_kib(v, "VmHWM") for k, v in pids.items()}

        def med(name, label, key):
            vals = [r[key] for r in results.get((name, label), []) if r[key] is not None]
            return statistics.median(vals) if vals else None

        lines = []
        cpu_model = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        lines.append(f"Machine: {os.cpu_count()} cores, {cpu_model}; wrk -t1 -c{args.connections}, "
                     f"{args.duration} s per run, median of {args.repeats} interleaved repeats; "
                     f"{time.strftime('%Y-%m-%d')}.")
        lines.append("")
        lines.append("| payload | row | req/s | p50 ms | p99 ms | proxy CPU µs/req | peak RSS MiB | CPU vs nginx | node CPU / this |")
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        errors = 0
        for label in sizes:
            nginx_cpu = med("nginx", label, "cpu_us")
            node_cpu = med("node", label, "cpu_us")
            for name in rows:
                if (name, label) not in results:
                    continue
                errors += sum(r["errors"] for r in results[(name, label)])
                cpu = med(name, label, "cpu_us")
                vs_nginx = f"{cpu / nginx_cpu:.2f}×" if cpu and nginx_cpu and name != "upstream" else "–"
                vs_node = f"{node_cpu / cpu:.1f}×" if cpu and node_cpu and name != "upstream" else "–"
                rss = peak.get(name, 0) / 1024 if name != "upstream" else 0
                lines.append(
                    f"| {label} | {name} | {med(name, label, 'rps'):.0f} | {med(name, label, 'p50_ms'):.2f} | "
                    f"{med(name, label, 'p99_ms'):.2f} | {cpu:.1f} | {rss:.1f} | {vs_nginx} | {vs_node} |"
                    if cpu is not None else
                    f"| {label} | {name} | {med(name, label, 'rps'):.0f} | {med(name, label, 'p50_ms'):.2f} | "
                    f"{med(name, label, 'p99_ms'):.2f} | – | – | – | – |")
        lines.append("")
        size = os.path.getsize(args.binary) / 1024 / 1024
        lines.append("hookgate idle RSS: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in idle_rss.items())
                     + f"; binary {size:.1f} MiB ({os.path.relpath(args.binary, ROOT)}).")
        table = "\n".join(lines)
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
        if errors:
            print(f"ERROR: {errors} failed requests (non-2xx or socket errors)", file=sys.stderr)
            sys.exit(1)
    finally:
        b.stop()


if __name__ == "__main__":
    main()
