//! Test harness: the real `hookgate` binary on free ports, a real recording
//! upstream, and a raw HTTP/1.1 client that sends exactly the bytes it is given.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Whether outside programs the tests drive are installed, each given as
/// (command, version argument). They come from Debian's packages, which
/// .ci/run installs: in CI a missing one fails the test, elsewhere the test
/// prints SKIP and returns early.
pub fn tools_present(tools: &[(&str, &str)], install_hint: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, arg)| {
            Command::new(cmd)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|(cmd, _)| *cmd)
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} missing in CI: .ci/run must install them ({install_hint})"
    );
    eprintln!("SKIP: {missing:?} not installed ({install_hint})");
    false
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn schema_path() -> String {
    project_root()
        .join("schemas/sipgate-ai-agents-webhook.v1.json")
        .display()
        .to_string()
}

// ---------------------------------------------------------------- upstream

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub connection: usize,
    /// The status this upstream answered it with (0: no HTTP answer).
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
}

/// How the upstream behaves.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer with this status, extra headers and body.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Wait, then answer 200.
    Delay(Duration),
    /// Read the request, then reset the connection without answering.
    Reset,
    /// Read the request, then answer bytes that are not HTTP.
    Garbage,
    /// Answer exactly these bytes; then close the connection if `close`.
    Raw { bytes: Vec<u8>, close: bool },
    /// Answer `status` when the body contains one of `needles`, else 200.
    FailWhenContains { needles: Vec<Vec<u8>>, status: u16 },
}

pub fn ok_answer() -> Behavior {
    Behavior::Answer {
        status: 200,
        headers: vec![("X-Upstream".into(), "yes".into())],
        body: b"{\"ok\":true}".to_vec(),
    }
}

/// A real HTTP/1.1 server that records what it received.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    behavior: Arc<Mutex<Behavior>>,
}

impl Upstream {
    pub fn start(behavior: Behavior) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behavior)
    }

    /// Start on a given address (e.g. a port reserved earlier, to come up late).
    pub fn start_on(addr: SocketAddr, behavior: Behavior) -> Upstream {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let behavior = Arc::new(Mutex::new(behavior));
        let (r, c, b) = (received.clone(), connections.clone(), behavior.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let n = c.fetch_add(1, Ordering::SeqCst);
                let (r, b) = (r.clone(), b.clone());
                thread::spawn(move || serve_conn(stream, n, r, b));
            }
        });
        Upstream {
            addr,
            received,
            connections,
            behavior,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_behavior(&self, b: Behavior) {
        *self.behavior.lock().unwrap() = b;
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

fn serve_conn(
    stream: TcpStream,
    conn: usize,
    rec: Arc<Mutex<Vec<Received>>>,
    beh: Arc<Mutex<Behavior>>,
) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let Some(req) = read_request(&mut reader, conn) else {
            return;
        };
        let mut req = req;
        let b = beh.lock().unwrap().clone();
        req.answered = match &b {
            Behavior::Answer { status, .. } => *status,
            Behavior::Delay(_) => 200,
            Behavior::FailWhenContains { needles, status } => {
                let hit = needles
                    .iter()
                    .any(|n| req.body.windows(n.len()).any(|w| w == n.as_slice()));
                if hit {
                    *status
                } else {
                    200
                }
            }
            Behavior::Raw { bytes, .. } => {
                std::str::from_utf8(bytes.get(9..12).unwrap_or_default())
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            }
            Behavior::Reset | Behavior::Garbage => 0,
        };
        let answered = req.answered;
        rec.lock().unwrap().push(req);
        match b {
            Behavior::Answer {
                status,
                headers,
                body,
            } => {
                let mut h = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    h.push_str(&format!("{k}: {v}\r\n"));
                }
                h.push_str("\r\n");
                let mut all = h.into_bytes();
                all.extend_from_slice(&body);
                if out.write_all(&all).is_err() {
                    return;
                }
            }
            Behavior::Delay(d) => {
                thread::sleep(d);
                if out
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
            }
            Behavior::Reset => {
                // SO_LINGER 0 turns close into a reset.
                let s = socket2_linger_zero(out);
                drop(s);
                return;
            }
            Behavior::Raw { bytes, close } => {
                if out.write_all(&bytes).is_err() {
                    return;
                }
                if close {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
            }
            Behavior::FailWhenContains { .. } => {
                // The status was decided when the request was recorded.
                let h = format!("HTTP/1.1 {answered} X\r\nContent-Length: 2\r\n\r\nok");
                if out.write_all(h.as_bytes()).is_err() {
                    return;
                }
            }
            Behavior::Garbage => {
                let _ = out.write_all(b"this is not http\r\n\r\n");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn socket2_linger_zero(s: TcpStream) -> TcpStream {
    // SO_LINGER 0: close sends RST instead of FIN.
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    s
}

fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> Option<Received> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if head.len() > 1 << 20 {
            return None;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        // A whole head that does not parse still reached this upstream: it is
        // recorded (and counted), so that "nothing reached the upstream"
        // cannot pass while the gateway forwards garbage.
        return Some(Received {
            method: "<unparsable>".into(),
            path: String::new(),
            headers: Vec::new(),
            body: head,
            connection: conn,
            answered: 0,
        });
    }
    let method = req.method?.to_string();
    let path = req.path?.to_string();
    let headers = owned_headers(req.headers);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.trim().parse().ok()?;
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    }
    Some(Received {
        method,
        path,
        headers,
        body,
        connection: conn,
        answered: 0,
    })
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// Asserts the documented error shape and returns the code.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert!(v["message"].is_string(), "{v}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {v}"))
            .to_string()
    }
}

/// Read one response from a stream (Content-Length framed, or until close).
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf[..head_end])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let status = resp.code.unwrap_or(0);
    let headers = owned_headers(resp.headers);
    let cl = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        // Read until the last chunk, then decode.
        while find(&body, b"\r\n0\r\n\r\n").is_none() && !body.starts_with(b"0\r\n\r\n") {
            let k = s.read(&mut tmp)?;
            if k == 0 {
                break;
            }
            body.extend_from_slice(&tmp[..k]);
        }
        return Ok(Response {
            status,
            headers,
            body: dechunk(&body),
        });
    }
    match cl {
        Some(n) => {
            while body.len() < n {
                let k = s.read(&mut tmp)?;
                if k == 0 {
                    break;
                }
                body.extend_from_slice(&tmp[..k]);
            }
            body.truncate(n);
        }
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    if status == 100 {
        // Skip the interim answer.
        let mut rest = Response {
            status,
            headers,
            body,
        };
        if rest.body.is_empty() {
            return read_response(s);
        }
        rest.status = 0;
        return Ok(rest);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Header pairs as owned strings (values lossily decoded).
fn owned_headers(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The first value of a header, by case-insensitive name.
fn find_header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(b, b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Send raw bytes on a new connection and read one response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(bytes)?;
    read_response(&mut s)
}

/// A POST with a JSON body (Content-Length framed) plus extra header lines.
pub fn post_bytes(path: &str, body: &[u8], extra: &[&str]) -> Vec<u8> {
    let mut h = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for e in extra {
        h.push_str(e);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    let mut v = h.into_bytes();
    v.extend_from_slice(body);
    v
}

/// The same POST, chunked, in chunks of `chunk` bytes.
pub fn post_chunked(path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for c in body.chunks(chunk) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

// ---------------------------------------------------------------- payloads

/// A valid payload, with a transcript padded to about `size` bytes.
pub fn payload(size: usize) -> Vec<u8> {
    let base = std::fs::read(project_root().join("tests/payloads/sample.json")).unwrap();
    if size == 0 {
        return base;
    }
    let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
    let compact = serde_json::to_vec(&v).unwrap();
    if size <= compact.len() + 60 {
        v["assist"]["transcription"]["content"] = serde_json::Value::String(String::new());
        let mut out = serde_json::to_vec(&v).unwrap();
        assert!(out.len() <= size, "payload cannot be as small as {size}");
        out.extend(std::iter::repeat_n(b' ', size - out.len()));
        return out;
    }
    let base = compact;
    let sentence = "We talked about the delayed order and the refund. ";
    let n = (size - base.len()) / sentence.len() + 1;
    v["assist"]["transcription"]["content"] = serde_json::Value::String(sentence.repeat(n));
    let mut out = serde_json::to_vec(&v).unwrap();
    // Pad to the exact size with spaces (insignificant whitespace).
    if out.len() < size {
        out.extend(std::iter::repeat_n(b' ', size - out.len()));
    }
    out
}

/// [`payload`] of about `size` bytes with its own `call.id`, compact.
pub fn payload_with_call_id(call_id: &str, size: usize) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&payload(size)).unwrap();
    v["call"]["id"] = call_id.into();
    serde_json::to_vec(&v).unwrap()
}

// ---------------------------------------------------------------- gateway

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

impl Gateway {
    /// Start the binary with `config` (which must use `{LISTEN}` and `{METRICS}`
    /// placeholders for the addresses) and wait until /readyz says ready.
    pub fn start(config: &str) -> Gateway {
        Self::start_with(config, &[], "127.0.0.1")
    }

    pub fn start_with(config: &str, env: &[(&str, &str)], host: &str) -> Gateway {
        Self::start_full(config, env, host, "hookgate.toml", &[], &[])
    }

    /// Start with `--log-format json`.
    pub fn start_json_logs(config: &str) -> Gateway {
        Self::start_full(
            config,
            &[],
            "127.0.0.1",
            "hookgate.toml",
            &[],
            &["--log-format", "json"],
        )
    }

    /// Start with the config written at `config_rel` inside the temp dir, beside
    /// `files` (relative path, content), with extra command-line `args`.
    pub fn start_full(
        config: &str,
        env: &[(&str, &str)],
        host: &str,
        config_rel: &str,
        files: &[(&str, &[u8])],
        args: &[&str],
    ) -> Gateway {
        // The gateway listens on port 0 (a free port it picks and holds) and
        // says which ports it got in its "ready" line: no port is chosen here
        // and then bound by the gateway later, which another test could take
        // in between.
        let dir = tempfile::tempdir().unwrap();
        for (rel, content) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let listen = if host.contains(':') {
            format!("[{host}]:0")
        } else {
            format!("{host}:0")
        };
        let text = config
            .replace("{LISTEN}", &listen)
            .replace("{METRICS}", "127.0.0.1:0")
            .replace("{SCHEMA}", &schema_path())
            .replace("{DIR}", &dir.path().display().to_string());
        let cfg = dir.path().join(config_rel);
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(&cfg, text).unwrap();
        let log_path = dir.path().join("hookgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookgate"));
        cmd.arg("run")
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let unknown: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let mut gw = Gateway {
            child,
            addr: unknown,
            metrics: unknown,
            dir,
            log_path,
        };
        if let Err(log) = gw.wait_ready(host == "::") {
            panic!("hookgate did not start: {log}");
        }
        gw
    }

    /// Wait for the "ready" line, take the addresses from it, and check that
    /// /readyz on the metrics address agrees.
    fn wait_ready(&mut self, any_v6: bool) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited early ({status}): {}", self.log()));
            }
            if let Some((public, metrics)) = ready_addresses(&self.log()) {
                // "[::]:P" takes IPv4 connections too; tests connect over 127.0.0.1.
                self.addr = if any_v6 {
                    SocketAddr::from(([127, 0, 0, 1], public.port()))
                } else {
                    public
                };
                self.metrics = metrics;
                return match http_get(self.metrics, "/readyz") {
                    Ok(r) if r.status == 200 => Ok(()),
                    other => Err(format!(
                        "logged ready but /readyz said {:?}: {}",
                        other.map(|r| r.status),
                        self.log()
                    )),
                };
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not ready in time: {}", self.log()))
    }

    pub fn log(&self) -> String {
        // An unreadable log must not pass a check that something is absent from it.
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot read the gateway's log: {e}"))
    }

    pub fn send(&self, bytes: &[u8]) -> Response {
        raw(self.addr, bytes)
            .unwrap_or_else(|e| panic!("request failed: {e}\nlog:\n{}", self.log()))
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        self.send(&post_bytes(path, body, &[]))
    }

    pub fn metrics_text(&self) -> String {
        String::from_utf8(http_get(self.metrics, "/metrics").unwrap().body).unwrap()
    }

    /// The value of one sample line of /metrics (exact series text), or 0
    /// when that label set has not been counted yet. The metric itself must be
    /// exported (its `# TYPE` line), so that a renamed metric cannot read as 0.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text();
        let name = series.split('{').next().unwrap_or(series);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.lines().any(|l| l
                .strip_prefix("# TYPE ")
                .is_some_and(
                    |r| r.split(' ').next() == Some(name) || r.split(' ').next() == Some(family)
                )),
            "metric {name} is not exported:\n{text}"
        );
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|r| r.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for the process to exit; returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first public address and the metrics address of a gateway's log line
/// "ready; public listener(s) A[, B…]; metrics listener M" (text or JSON logs).
pub fn ready_addresses(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = log.split("ready; public listener(s) ").nth(1)?;
    let (public, rest) = rest.split_once("; metrics listener ")?;
    let first = public.split(", ").next()?.parse().ok()?;
    let metrics: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    Some((first, metrics.parse().ok()?))
}

/// A standard one-route config in front of `upstream`.
pub fn config_for(upstream: &str, extra_route: &str, extra_top: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{LISTEN}}"]
threads = 2
shutdown_grace_ms = 3000

[metrics]
listen = "{{METRICS}}"

[access]
allow = ["127.0.0.1/32", "::1/128"]
{extra_top}

[limits]
max_body_bytes = 1048576
body_timeout_ms = 2000

[[route]]
name = "crm"
path = "/webhooks/crm"
upstream = {upstream}
schema = "{{SCHEMA}}"
validation = "enforce"
transcription = "keep"
timeout_ms = 1500
{extra_route}
"#
    )
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
