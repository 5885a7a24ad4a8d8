//! TLS: `https://` upstreams (certificates verified, an internal CA per route,
//! the loud opt-out) and the TLS listener. Certificates are made with the
//! `openssl` command; the HTTPS upstream is Python's http.server behind ssl.

mod common;

use common::*;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=hookgate test CA",
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

struct TlsUpstream {
    child: Child,
    port: u16,
    record: std::path::PathBuf,
}

impl TlsUpstream {
    fn start(dir: &Path) -> TlsUpstream {
        let record = dir.join("received.jsonl");
        let mut child = Command::new("python3")
            .arg(project_root().join("tests/support/tls_upstream.py"))
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(&record)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        TlsUpstream {
            child,
            port: line.trim().parse().unwrap(),
            record,
        }
    }
    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_tools() -> bool {
    tools_present(
        &[
            ("python3", "--version"),
            ("openssl", "version"),
            ("curl", "--version"),
        ],
        "apt-get install openssl curl python3",
    )
}

#[test]
fn https_upstream_with_internal_ca() {
    if !have_tools() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let up = TlsUpstream::start(certs.path());
    let ca = certs.path().join("ca.pem").display().to_string();
    let url = format!("\"https://127.0.0.1:{}/secure/in\"", up.port);

    // Trusting the internal CA: delivered over TLS, body intact.
    let gw = Gateway::start(&config_for(&url, &format!("tls_ca = \"{ca}\""), ""));
    let body = payload(2000);
    let r = gw.post("/webhooks/crm", &body);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.body, b"{\"tls\":true}");
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["path"], "/secure/in");
    use base64_decode as b64;
    assert_eq!(b64(got[0]["body"].as_str().unwrap()), body);

    // With the system roots only, the internal CA is unknown: refused, 502.
    let gw = Gateway::start(&config_for(&url, "", ""));
    let r = gw.post("/webhooks/crm", &payload(0));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(
        up.received().len(),
        1,
        "nothing may reach an unverified upstream"
    );

    // The loud opt-out works, and says so at start.
    let gw = Gateway::start(&config_for(&url, "tls_verify = false", ""));
    assert_eq!(gw.post("/webhooks/crm", &payload(0)).status, 200);
    assert!(gw.log().contains("NOT verified"), "{}", gw.log());
}

#[test]
fn check_refuses_certificate_files_the_listener_could_not_use() {
    if !have_tools() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let d = certs.path();
    // A key of its own, not the certificate's.
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            "other.key",
        ],
    );
    let up = Upstream::start(ok_answer());
    let check = |cert: &str, key: &str| {
        let tls = format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            d.join(cert).display(),
            d.join(key).display()
        );
        let cfg = config_for(&format!("\"{}\"", up.url("/in")), "", "")
            .replace("threads = 2\n", &format!("threads = 2\n{tls}"))
            .replace("{LISTEN}", "127.0.0.1:0")
            .replace("{METRICS}", "127.0.0.1:0")
            .replace("{SCHEMA}", &schema_path())
            .replace("{DIR}", &d.display().to_string());
        let file = d.join("hookgate.toml");
        std::fs::write(&file, cfg).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = check("cert.pem", "key.pem");
    assert!(ok, "{err}");
    for (cert, key) in [
        ("key.pem", "cert.pem"),
        ("cert.pem", "other.key"),
        ("cert.pem", "ca.pem"),
    ] {
        let (ok, err) = check(cert, key);
        assert!(!ok, "{cert} with {key} passed");
        assert!(err.contains("server.tls"), "{cert} with {key}: {err}");
    }
}

#[test]
fn tls_listener_serves_https() {
    if !have_tools() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let up = Upstream::start(ok_answer());
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        certs.path().join("cert.pem").display(),
        certs.path().join("key.pem").display()
    );
    let cfg = config_for(&format!("\"{}\"", up.url("/in")), "", "")
        .replace("threads = 2\n", &format!("threads = 2\n{tls}"));
    let gw = Gateway::start(&cfg);
    let sample = project_root().join("tests/payloads/sample.json");
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(certs.path().join("ca.pem"))
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{ssl_verify_result}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", sample.display()))
        .arg(format!("https://127.0.0.1:{}/webhooks/crm", gw.addr.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "200 0",
        "curl: {text} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert_eq!(up.count(), 1);
    assert_eq!(up.requests()[0].header("x-forwarded-proto"), Some("https"));
    // Plain HTTP on the TLS port is not served.
    let r = raw(gw.addr, &post_bytes("/webhooks/crm", &payload(0), &[]));
    assert!(r.map(|r| r.status == 0).unwrap_or(true));
    assert_eq!(up.count(), 1);
}

fn base64_decode(s: &str) -> Vec<u8> {
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut v = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            v |= table(*c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((v >> (16 - 8 * i)) as u8);
        }
    }
    out
}
