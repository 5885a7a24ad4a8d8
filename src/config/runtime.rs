//! The validated runtime model, built once from the file model.
//!
//! Everything that can be checked at start is checked here: addresses and
//! networks parsed, upstream URLs resolved, header names and values valid,
//! schemas compiled, `${NAME}` variables present. All errors are collected and
//! returned together.

use super::file::{self, FileConfig, OneOrMany, SecretSection, TOP_LEVEL_KEYS};
use super::{ConfigError, ConfigErrors};
use crate::access::{parse_net, AccessPolicy, SIPGATE_SOURCE};
use crate::inspect::{Inspector, Transcription, Validation};
use crate::spool::policy::{StatusPattern, StatusPolicy};
use http::{HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest access-log buffer (`[log] buffer_bytes`).
/// Writing it out holds every logging thread, so it stays small.
const MAX_LOG_BUFFER: u64 = 1 << 20;

/// Where `${NAME}` values come from; tests inject their own.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// Listeners and process settings.
    pub server: ServerSettings,
    /// Metrics listener address.
    pub metrics_listen: SocketAddr,
    /// Allow list and trusted proxies.
    pub access: AccessPolicy,
    /// Global shared secret (routes may override).
    pub secret: Option<Arc<Secret>>,
    /// Defaults for routes.
    pub limits: Limits,
    /// Routes in file order.
    pub routes: Vec<Arc<Route>>,
    /// The spool, when a route uses it.
    pub spool: Option<SpoolSettings>,
    /// Log level directive.
    pub log_level: String,
    /// Whether logs are JSON lines.
    pub log_json: bool,
    /// Access-line buffer size in bytes (0: unbuffered).
    pub log_buffer_bytes: usize,
    /// Longest wait of a buffered access line.
    pub log_flush: Duration,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Public listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker threads.
    pub threads: usize,
    /// TLS certificate and key paths, resolved.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Grace for requests in flight on SIGTERM.
    pub shutdown_grace: Duration,
    /// Time allowed for a request's header.
    pub header_timeout: Duration,
    /// Idle keep-alive time between requests.
    pub keepalive_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Limits on the request head (431 beyond).
    pub head_limits: crate::framing::HeadLimits,
    /// Most body bytes held by all requests in flight together (503 beyond).
    pub max_inflight_body_bytes: u64,
}

/// Body limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted.
    pub max_body_bytes: u64,
    /// Time allowed for the body.
    pub body_timeout: Duration,
}

/// A shared secret: the header, and every accepted value.
#[derive(Clone)]
pub struct Secret {
    /// Header name.
    pub header: HeaderName,
    /// Accepted values (several while rotating).
    pub values: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the values.
        write!(
            f,
            "Secret {{ header: {}, values: {} }}",
            self.header,
            self.values.len()
        )
    }
}

impl Secret {
    /// Constant-time check of a presented value against every accepted one.
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        let Some(p) = presented else { return false };
        let mut ok = 0u8;
        for v in &self.values {
            ok |= u8::from(constant_time_eq::constant_time_eq(p, v));
        }
        ok == 1
    }
}

/// How a route delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The upstream's answer goes back to the caller.
    Proxy,
    /// Written to the durable spool, 202 at once, delivered in the background.
    Spool,
    /// One attempt within `first_try`; spooled (202) when it fails.
    ProxyOrSpool,
}

impl Delivery {
    /// Whether the route needs the spool.
    pub fn uses_spool(self) -> bool {
        self != Delivery::Proxy
    }

    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Proxy => "proxy",
            Delivery::Spool => "spool",
            Delivery::ProxyOrSpool => "proxy_or_spool",
        }
    }
}

/// `[spool]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The spool folder, resolved.
    pub dir: PathBuf,
    /// Disk budget for queued and dead-lettered messages.
    pub max_bytes: u64,
    /// Duplicate suppression window (zero: off).
    pub dedup_window: Duration,
}

/// `[route.redelivery]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// `proxy_or_spool`: budget of the synchronous attempt.
    pub first_try: Duration,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Age before dead-lettering.
    pub max_age: Duration,
    /// What each upstream status means.
    pub statuses: StatusPolicy,
    /// Header that carries the idempotency key.
    pub idempotency_header: HeaderName,
}

impl Default for Redelivery {
    fn default() -> Self {
        Redelivery {
            first_try: Duration::from_millis(2_000),
            backoff_initial: Duration::from_millis(1_000),
            backoff_max: Duration::from_secs(300),
            max_attempts: 100,
            max_age: Duration::from_secs(3 * 86_400),
            statuses: StatusPolicy::default(),
            idempotency_header: HeaderName::from_static("idempotency-key"),
        }
    }
}

/// One HTTP upstream target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The URL as configured, for summaries and logs, with any query shown as
    /// `?…` (a query may carry a key, e.g. from `${NAME}`).
    pub url: String,
    /// Resolved address (one target per address a name resolves to).
    pub addr: SocketAddr,
    /// `https`?
    pub tls: bool,
    /// Host name for SNI and certificate checks.
    pub sni: String,
    /// `Host` header value (`host[:port]`).
    pub authority: String,
    /// Path (and query) that replaces the public path.
    pub path: String,
}

/// The `file:` upstream: an append-only JSON-lines archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSink {
    /// Resolved path of the file.
    pub path: PathBuf,
}

/// Where a route's webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// One or more HTTP(S) targets, balanced round-robin.
    Http(Vec<HttpTarget>),
    /// Append to a local file.
    File(FileSink),
}

/// Header changes on the way upstream.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Set (replace) these.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Remove these.
    pub remove: Vec<HeaderName>,
}

/// How a route checks its `https://` upstreams' certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// DER certificates of the CAs to trust instead of the system roots.
    pub ca_der: Option<Vec<Vec<u8>>>,
    /// Verify certificates and host names (default true).
    pub verify: bool,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            ca_der: None,
            verify: true,
        }
    }
}

/// A route, validated.
#[derive(Debug)]
pub struct Route {
    /// Name (the `route` label).
    pub name: String,
    /// Exact public path.
    pub path: String,
    /// Where it goes.
    pub upstream: Upstream,
    /// Parse, validate and transform settings.
    pub inspector: Inspector,
    /// Upstream timeout (whole exchange).
    pub timeout: Duration,
    /// How long a target whose connect failed waits behind the others
    /// (zero: never).
    pub fail_timeout: Duration,
    /// Delivery mode.
    pub delivery: Delivery,
    /// Body limits.
    pub limits: Limits,
    /// Shared secret for this route (its own or the global one).
    pub secret: Option<Arc<Secret>>,
    /// Header rules.
    pub headers: HeaderRules,
    /// Certificate checks for `https://` upstreams.
    pub upstream_tls: UpstreamTls,
    /// Background delivery settings (spool routes).
    pub redelivery: Redelivery,
}

/// Load and validate a configuration file from disk, reading `${NAME}` from the
/// process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        path: path.display().to_string(),
        errors: vec![ConfigError {
            at: "file".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    load_str(&text, path, &ProcessEnv)
}

/// Load and validate configuration text. Relative paths are resolved against the
/// folder of `path`.
pub fn load_str(text: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let mut b = Builder {
        env,
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        errors: Vec::new(),
        route_index: Vec::new(),
    };
    let cfg = b.build(text, path);
    if b.errors.is_empty() {
        if let Some(cfg) = cfg {
            return Ok(cfg);
        }
    }
    Err(ConfigErrors {
        path: path.display().to_string(),
        errors: b.errors,
    })
}

struct Builder<'a> {
    env: &'a dyn Env,
    base: PathBuf,
    errors: Vec<ConfigError>,
    /// File position of each parsed route.
    route_index: Vec<usize>,
}

impl Builder<'_> {
    fn err(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            at: at.into(),
            message: message.into(),
        });
    }

    /// Report every unknown key of a table, then deserialize what is left, so a
    /// typo does not hide the other mistakes of the same table.
    fn typed<T: DeserializeOwned>(
        &mut self,
        at: &str,
        value: &toml::Value,
        keys: &[&str],
    ) -> Option<T> {
        let mut value = value.clone();
        if let toml::Value::Table(t) = &mut value {
            let unknown: Vec<String> = t
                .keys()
                .filter(|k| !keys.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in unknown {
                self.err(
                    format!("{at}.{k}"),
                    format!("unknown key, expected one of {}", keys.join(", ")),
                );
                t.remove(&k);
            }
        }
        match value.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(at, clean_serde(&e.to_string()));
                None
            }
        }
    }

    /// Deserialize one section, recording the errors instead of stopping.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        table: &toml::Table,
        key: &str,
        keys: &[&str],
    ) -> T {
        match table.get(key) {
            None => T::default(),
            Some(v) => self.typed(key, v, keys).unwrap_or_default(),
        }
    }

    fn parse_file(&mut self, text: &str) -> Option<FileConfig> {
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let at = match e.span() {
                    Some(span) => {
                        let line = text
                            .get(..span.start)
                            .map_or(0, |t| t.matches('\n').count())
                            + 1;
                        format!("line {line}")
                    }
                    None => "file".into(),
                };
                self.err(at, format!("TOML syntax: {}", e.message()));
                return None;
            }
        };
        for key in table.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                self.err(
                    key.clone(),
                    format!(
                        "unknown section `{key}`, expected one of {}",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                );
            }
        }
        let mut fc = FileConfig {
            server: self.section(&table, "server", file::SERVER_KEYS),
            metrics: self.section(&table, "metrics", file::METRICS_KEYS),
            access: self.section(&table, "access", file::ACCESS_KEYS),
            limits: self.section(&table, "limits", file::LIMITS_KEYS),
            log: self.section(&table, "log", file::LOG_KEYS),
            ..FileConfig::default()
        };
        if let Some(spool) = table.get("spool") {
            fc.spool = self.typed("spool", spool, file::SPOOL_KEYS);
        }
        match table.get("route") {
            None => {}
            Some(toml::Value::Array(routes)) => {
                for (i, r) in routes.iter().enumerate() {
                    let name = r
                        .get("name")
                        .and_then(|n| n.as_str())
                        .map(|n| format!(" {n:?}"))
                        .unwrap_or_default();
                    if let Some(r) = self.typed(&format!("route[{i}]{name}"), r, file::ROUTE_KEYS) {
                        fc.routes.push(r);
                        self.route_index.push(i);
                    }
                }
            }
            Some(_) => self.err("route", "must be an array of tables: write [[route]]"),
        }
        Some(fc)
    }

    /// `msg` with the value of every `${NAME}` that `raw` refers to written
    /// as `${NAME}` again (for messages about a value read from the environment).
    fn unexpand(&self, raw: &str, mut msg: String) -> String {
        let mut rest = raw;
        while let Some((name, after)) = rest.split_once("${").and_then(|(_, a)| a.split_once('}')) {
            if let Some(v) = self.env.var(name).filter(|v| !v.is_empty()) {
                let reference = format!("${{{name}}}");
                // As written, and as `{:?}` escapes it in a message.
                let escaped = format!("{v:?}");
                let escaped = escaped.get(1..escaped.len() - 1).unwrap_or_default();
                msg = msg.replace(&v, &reference);
                if !escaped.is_empty() {
                    msg = msg.replace(escaped, &reference);
                }
            }
            rest = after;
        }
        msg
    }

    /// Expand `${NAME}` from the environment.
    fn expand(&mut self, at: &str, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    let valid = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !valid {
                        self.err(
                            at,
                            format!("`${{{name}}}` is not a valid variable reference"),
                        );
                    } else {
                        match self.env.var(name) {
                            Some(v) => out.push_str(&v),
                            None => self.err(at, format!("environment variable {name} is not set")),
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    self.err(at, "unterminated `${` (write `${NAME}`)");
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn socket_addr(&mut self, at: &str, s: &str) -> Option<SocketAddr> {
        let s = self.expand(at, s);
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(at, format!("{s:?} is not a listen address (write host:port, e.g. 127.0.0.1:8080 or [::1]:8080)"));
                None
            }
        }
    }

    fn nets(&mut self, at: &str, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let s = self.expand(&format!("{at}[{i}]"), s);
            match parse_net(&s) {
                Ok(n) => out.push(n),
                Err(e) => self.err(format!("{at}[{i}]"), e),
            }
        }
        out
    }

    fn secret(&mut self, at: &str, s: &SecretSection) -> Option<Arc<Secret>> {
        let header = match HeaderName::from_bytes(s.header.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.err(
                    format!("{at}.header"),
                    format!("{:?} is not a valid header name", s.header),
                );
                return None;
            }
        };
        let mut values = Vec::new();
        for (i, v) in s.value.iter().chain(s.values.iter()).enumerate() {
            let v = self.expand(&format!("{at}.value[{i}]"), v);
            if v.len() < 16 {
                self.err(
                    format!("{at}.value[{i}]"),
                    "a secret must be at least 16 characters long",
                );
            } else if HeaderValue::from_str(&v).is_err() {
                self.err(
                    format!("{at}.value[{i}]"),
                    "a secret must be printable ASCII, usable as a header value",
                );
            } else {
                values.push(v.into_bytes());
            }
        }
        if values.is_empty() && s.value.is_none() && s.values.is_empty() {
            self.err(at, "a secret needs `value` or `values`");
        }
        Some(Arc::new(Secret { header, values }))
    }

    fn build(&mut self, text: &str, path: &Path) -> Option<Config> {
        let fc = self.parse_file(text)?;

        // [server]
        // With their places in the file, for messages.
        let mut listen_at = Vec::new();
        if fc.server.listen.is_empty() {
            self.err("server.listen", "at least one listen address is needed");
        }
        for (i, l) in fc.server.listen.iter().enumerate() {
            if let Some(a) = self.socket_addr(&format!("server.listen[{i}]"), l) {
                listen_at.push((i, a));
            }
        }
        let listen: Vec<SocketAddr> = listen_at.iter().map(|&(_, a)| a).collect();
        if fc.server.threads == 0 || fc.server.threads > 256 {
            self.err("server.threads", "must be between 1 and 256");
        }
        let tls = fc.server.tls.as_ref().map(|t| {
            let cert = self.expand("server.tls.cert", &t.cert);
            let key = self.expand("server.tls.key", &t.key);
            let (cert, key) = (self.resolve_path(&cert), self.resolve_path(&key));
            let mut readable = true;
            for (k, p) in [("cert", &cert), ("key", &key)] {
                if !p.is_file() {
                    self.err(
                        format!("server.tls.{k}"),
                        format!("{} is not a readable file", p.display()),
                    );
                    readable = false;
                }
            }
            if readable {
                if let Err(e) = check_server_tls(&cert, &key) {
                    self.err("server.tls", e);
                }
            }
            (cert, key)
        });
        for (k, v) in [
            ("server.shutdown_grace_ms", fc.server.shutdown_grace_ms),
            ("server.header_timeout_ms", fc.server.header_timeout_ms),
            (
                "server.keepalive_timeout_ms",
                fc.server.keepalive_timeout_ms,
            ),
        ] {
            if v > 3_600_000 {
                self.err(k, "must be at most 3600000 (one hour)");
            }
        }
        if fc.server.max_connections == 0 || fc.server.max_connections > 1_000_000 {
            self.err("server.max_connections", "must be between 1 and 1000000");
        }
        if !(256..=1_048_576).contains(&fc.limits.max_header_bytes) {
            self.err("limits.max_header_bytes", "must be between 256 and 1048576");
        }
        if !(8..=256).contains(&fc.limits.max_headers) {
            self.err(
                "limits.max_headers",
                "must be between 8 and 256 (pingora's own ceiling)",
            );
        }
        if fc.limits.max_inflight_body_bytes > u64::from(u32::MAX) {
            self.err(
                "limits.max_inflight_body_bytes",
                "must be at most 4294967295",
            );
        }
        if fc.server.header_timeout_ms == 0 {
            self.err("server.header_timeout_ms", "must be greater than 0");
        }
        let server = ServerSettings {
            listen: listen.clone(),
            threads: fc.server.threads.clamp(1, 256),
            tls,
            shutdown_grace: Duration::from_millis(fc.server.shutdown_grace_ms),
            header_timeout: Duration::from_millis(fc.server.header_timeout_ms.max(1)),
            keepalive_timeout: Duration::from_millis(fc.server.keepalive_timeout_ms),
            max_connections: fc.server.max_connections.max(1),
            head_limits: crate::framing::HeadLimits {
                max_bytes: fc.limits.max_header_bytes.max(256),
                max_headers: fc.limits.max_headers.max(8),
            },
            max_inflight_body_bytes: fc.limits.max_inflight_body_bytes,
        };

        // Two listeners on one port: the second bind would fail after start
        // (pingora gives up on that whole service while the process runs on).
        for (n, &(i, a)) in listen_at.iter().enumerate() {
            if let Some(&(j, _)) = listen_at
                .iter()
                .take(n)
                .find(|(_, b)| crate::listen::overlaps(a, *b))
            {
                self.err(
                    format!("server.listen[{i}]"),
                    format!(
                        "{a} overlaps server.listen[{j}] (the same port on a covering address)"
                    ),
                );
            }
        }

        // [metrics]
        let metrics_listen = self.socket_addr("metrics.listen", &fc.metrics.listen);
        if let Some(m) = metrics_listen {
            if listen.iter().any(|l| crate::listen::overlaps(m, *l)) {
                self.err("metrics.listen", "must not overlap any server.listen address: metrics are never served on the public listener");
            }
        }

        // [access]
        let allow_list = fc
            .access
            .allow
            .clone()
            .unwrap_or_else(|| vec![SIPGATE_SOURCE.to_string()]);
        let allow = self.nets("access.allow", &allow_list);
        if allow_list.is_empty() {
            self.err(
                "access.allow",
                "is empty: every connection would be refused (leave it out for sipgate's address)",
            );
        }
        let trusted = self.nets("access.trusted_proxies", &fc.access.trusted_proxies);
        for (i, raw) in fc.access.trusted_proxies.iter().enumerate() {
            // Judged on the entry as written (the parsed list skips bad ones).
            let Ok(n) = parse_net(raw) else { continue };
            if n.prefix_len() == 0 {
                self.err(
                    format!("access.trusted_proxies[{i}]"),
                    format!("{n} trusts every address: any client could forge X-Forwarded-For and pass the allow list"),
                );
            }
        }
        let access = AccessPolicy::new(allow, trusted);
        let secret = fc
            .access
            .secret
            .as_ref()
            .and_then(|s| self.secret("access.secret", s));

        // [limits]
        let limits = self.limits(
            "limits",
            fc.limits.max_body_bytes,
            fc.limits.body_timeout_ms,
        );

        // [spool]
        let spool = fc.spool.as_ref().and_then(|sp| {
            if sp.max_bytes < 1024 * 1024 {
                self.err("spool.max_bytes", "must be at least 1048576 (1 MiB)");
            }
            if sp.dedup_window_s > 7 * 86_400 {
                self.err("spool.dedup_window_s", "must be at most 604800 (7 days)");
            }
            match &sp.dir {
                None => {
                    self.err(
                        "spool.dir",
                        "the spool needs a folder, e.g. dir = \"var/spool\"",
                    );
                    None
                }
                Some(d) => {
                    let d = self.expand("spool.dir", d);
                    Some(SpoolSettings {
                        dir: self.resolve_path(&d),
                        max_bytes: sp.max_bytes,
                        dedup_window: Duration::from_secs(sp.dedup_window_s),
                    })
                }
            }
        });

        // [log]
        let log_json = match fc.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                self.err("log.format", format!("{other:?} is not one of text, json"));
                false
            }
        };
        // As nginx's `access_log ... flush=` alone: a 64 KiB buffer.
        let log_buffer = match (fc.log.buffer_bytes, fc.log.flush_ms) {
            (Some(b), _) => b,
            (None, Some(_)) => 65_536,
            (None, None) => 0,
        };
        let log_flush_ms = fc.log.flush_ms.unwrap_or(1000);
        if log_buffer > MAX_LOG_BUFFER {
            self.err(
                "log.buffer_bytes",
                format!("must be at most {MAX_LOG_BUFFER} (1 MiB); 0 writes each line at once"),
            );
        }
        if !(10..=60_000).contains(&log_flush_ms) {
            self.err("log.flush_ms", "must be between 10 and 60000");
        }
        if tracing_subscriber::EnvFilter::try_new(&fc.log.level).is_err() {
            self.err(
                "log.level",
                format!("{:?} is not a log level or filter directive", fc.log.level),
            );
        }

        // [[route]]
        if fc.routes.is_empty() {
            self.err("route", "at least one [[route]] is needed");
        }
        let mut routes: Vec<Arc<Route>> = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut paths: BTreeMap<String, usize> = BTreeMap::new();
        for (n, r) in fc.routes.iter().enumerate() {
            // The position in the file (routes that did not parse are skipped).
            let i = self.route_index.get(n).copied().unwrap_or(n);
            let at = format!("route[{i}] {:?}", r.name);
            if let Some(prev) = names.insert(r.name.clone(), i) {
                self.err(
                    format!("{at}.name"),
                    format!("duplicate route name (also route[{prev}])"),
                );
            }
            if let Some(prev) = paths.insert(r.path.clone(), i) {
                self.err(
                    format!("{at}.path"),
                    format!("duplicate path (also route[{prev}])"),
                );
            }
            if let Some(route) = self.route(&at, r, limits, &secret) {
                if route.delivery.uses_spool() && fc.spool.is_none() {
                    self.err(
                        format!("{at}.delivery"),
                        format!(
                            "{:?} needs a [spool] section with a dir",
                            route.delivery.as_str()
                        ),
                    );
                }
                if route.limits.max_body_bytes > fc.limits.max_inflight_body_bytes {
                    self.err(
                        format!("{at}.max_body_bytes"),
                        "is larger than limits.max_inflight_body_bytes: such a body could never be taken",
                    );
                }
                routes.push(Arc::new(route));
            }
        }

        Some(Config {
            source: path.to_path_buf(),
            server,
            metrics_listen: metrics_listen?,
            access,
            secret,
            limits,
            routes,
            spool,
            log_level: fc.log.level.clone(),
            log_json,
            log_buffer_bytes: log_buffer.min(MAX_LOG_BUFFER) as usize,
            log_flush: Duration::from_millis(log_flush_ms.clamp(10, 60_000)),
        })
    }

    fn limits(&mut self, at: &str, max_body: u64, body_timeout_ms: u64) -> Limits {
        if max_body == 0 || max_body > 64 * 1024 * 1024 {
            self.err(
                format!("{at}.max_body_bytes"),
                "must be between 1 and 67108864 (64 MiB)",
            );
        }
        if body_timeout_ms == 0 || body_timeout_ms > 600_000 {
            self.err(
                format!("{at}.body_timeout_ms"),
                "must be between 1 and 600000",
            );
        }
        Limits {
            max_body_bytes: max_body.clamp(1, 64 * 1024 * 1024),
            body_timeout: Duration::from_millis(body_timeout_ms.max(1)),
        }
    }

    fn route(
        &mut self,
        at: &str,
        r: &file::RouteSection,
        global_limits: Limits,
        global_secret: &Option<Arc<Secret>>,
    ) -> Option<Route> {
        let mut ok = true;
        if r.name.is_empty()
            || r.name.len() > 64
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            self.err(
                format!("{at}.name"),
                "must be 1-64 characters of A-Z a-z 0-9 _ - .",
            );
            ok = false;
        }
        if r.name == crate::metrics::NO_ROUTE {
            self.err(
                format!("{at}.name"),
                "`none` is reserved for requests that match no route",
            );
        }
        if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
            self.err(
                format!("{at}.path"),
                "must start with / and hold no query, fragment or space",
            );
            ok = false;
        } else if r.path.contains("${") {
            // Not expanded: a path is logged and shown, so it is no place for a
            // secret (use `secret`, a header, instead).
            self.err(
                format!("{at}.path"),
                "environment values are not read in a path (it appears in logs); use `secret` for a shared secret",
            );
            ok = false;
        }
        let upstream = self.upstream(&format!("{at}.upstream"), &r.upstream);
        let validation = match r.validation.as_deref() {
            None if r.schema.is_some() => Validation::Enforce,
            None => Validation::Off,
            Some("enforce") => Validation::Enforce,
            Some("report") => Validation::Report,
            Some("off") => Validation::Off,
            Some(other) => {
                self.err(
                    format!("{at}.validation"),
                    format!("{other:?} is not one of enforce, report, off"),
                );
                Validation::Off
            }
        };
        let transcription = match r.transcription.as_deref() {
            None | Some("keep") => Transcription::Keep,
            Some("strip") => Transcription::Strip,
            Some("strip_text") => Transcription::StripText,
            Some(other) => {
                self.err(
                    format!("{at}.transcription"),
                    format!("{other:?} is not one of keep, strip, strip_text"),
                );
                Transcription::Keep
            }
        };
        let schema = match &r.schema {
            None => {
                if validation != Validation::Off {
                    self.err(
                        format!("{at}.schema"),
                        "validation enforce/report needs a schema",
                    );
                }
                None
            }
            Some(s) => {
                let s = self.expand(&format!("{at}.schema"), s);
                let p = self.resolve_path(&s);
                match crate::inspect::compile_schema_file(&p) {
                    Ok(v) => Some(Arc::new(v)),
                    Err(e) => {
                        self.err(format!("{at}.schema"), e);
                        None
                    }
                }
            }
        };
        if r.timeout_ms == 0 || r.timeout_ms > 600_000 {
            self.err(format!("{at}.timeout_ms"), "must be between 1 and 600000");
        }
        if r.fail_timeout_ms > 3_600_000 {
            self.err(
                format!("{at}.fail_timeout_ms"),
                "must be at most 3600000 (0: never set a target aside)",
            );
        }
        let delivery = match r.delivery.as_str() {
            "proxy" => Delivery::Proxy,
            "spool" => Delivery::Spool,
            "proxy_or_spool" => Delivery::ProxyOrSpool,
            other => {
                self.err(
                    format!("{at}.delivery"),
                    format!("{other:?} is not one of proxy, spool, proxy_or_spool"),
                );
                Delivery::Proxy
            }
        };
        let limits = self.limits(
            at,
            r.max_body_bytes.unwrap_or(global_limits.max_body_bytes),
            r.body_timeout_ms
                .unwrap_or(global_limits.body_timeout.as_millis() as u64),
        );
        let secret = match &r.secret {
            Some(s) => self.secret(&format!("{at}.secret"), s),
            None => global_secret.clone(),
        };
        let mut headers = HeaderRules::default();
        for (k, v) in &r.headers.set {
            let hat = format!("{at}.headers.set.{k}");
            let v = self.expand(&hat, v);
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                (Ok(n), Ok(v)) => {
                    if crate::headers::is_managed(&n) {
                        self.err(&hat, "this header is managed by hookgate and cannot be set");
                    }
                    headers.set.push((n, v))
                }
                (Err(_), _) => self.err(&hat, format!("{k:?} is not a valid header name")),
                (_, Err(_)) => self.err(
                    &hat,
                    "the value is not a valid header value (control characters?)",
                ),
            }
        }
        for (i, k) in r.headers.remove.iter().enumerate() {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => headers.remove.push(n),
                Err(_) => self.err(
                    format!("{at}.headers.remove[{i}]"),
                    format!("{k:?} is not a valid header name"),
                ),
            }
        }
        let mut upstream_tls = UpstreamTls {
            ca_der: None,
            verify: r.tls_verify,
        };
        if let Some(ca) = &r.tls_ca {
            let ca = self.expand(&format!("{at}.tls_ca"), ca);
            match load_ca_file(&self.resolve_path(&ca)) {
                Ok(certs) => upstream_tls.ca_der = Some(certs),
                Err(e) => self.err(format!("{at}.tls_ca"), e),
            }
        }
        let redelivery = self.redelivery(&format!("{at}.redelivery"), r);
        let upstream = upstream?;
        if !ok {
            return None;
        }
        Some(Route {
            name: r.name.clone(),
            path: r.path.clone(),
            upstream,
            inspector: Inspector::new(schema, validation, transcription),
            timeout: Duration::from_millis(r.timeout_ms.max(1)),
            fail_timeout: Duration::from_millis(r.fail_timeout_ms),
            delivery,
            limits,
            secret,
            headers,
            upstream_tls,
            redelivery,
        })
    }

    fn redelivery(&mut self, at: &str, r: &file::RouteSection) -> Redelivery {
        let mut out = Redelivery::default();
        let Some(rd) = &r.redelivery else {
            return out;
        };
        if r.delivery == "proxy" {
            self.err(
                at,
                "only routes with delivery = \"spool\" or \"proxy_or_spool\" redeliver",
            );
        }
        let ms = |b: &mut Self, key: &str, v: Option<u64>, max: u64, into: &mut Duration| {
            if let Some(v) = v {
                if v == 0 || v > max {
                    b.err(
                        format!("{at}.{key}"),
                        format!("must be between 1 and {max}"),
                    );
                } else {
                    *into = Duration::from_millis(v);
                }
            }
        };
        ms(
            self,
            "first_try_ms",
            rd.first_try_ms,
            600_000,
            &mut out.first_try,
        );
        ms(
            self,
            "backoff_initial_ms",
            rd.backoff_initial_ms,
            3_600_000,
            &mut out.backoff_initial,
        );
        ms(
            self,
            "backoff_max_ms",
            rd.backoff_max_ms,
            86_400_000,
            &mut out.backoff_max,
        );
        if out.backoff_max < out.backoff_initial {
            self.err(
                format!("{at}.backoff_max_ms"),
                "must not be below backoff_initial_ms",
            );
        }
        if let Some(n) = rd.max_attempts {
            if n == 0 {
                self.err(format!("{at}.max_attempts"), "must be at least 1");
            } else {
                out.max_attempts = n;
            }
        }
        if let Some(s) = rd.max_age_s {
            if s == 0 || s > 365 * 86_400 {
                self.err(format!("{at}.max_age_s"), "must be between 1 and 31536000");
            } else {
                out.max_age = Duration::from_secs(s);
            }
        }
        let list =
            |b: &mut Self, key: &str, v: &Option<Vec<String>>, into: &mut Vec<StatusPattern>| {
                if let Some(v) = v {
                    into.clear();
                    for (i, s) in v.iter().enumerate() {
                        match StatusPattern::parse(s) {
                            Ok(p) => into.push(p),
                            Err(e) => b.err(format!("{at}.{key}[{i}]"), e),
                        }
                    }
                }
            };
        list(self, "success", &rd.success, &mut out.statuses.success);
        list(
            self,
            "permanent",
            &rd.permanent,
            &mut out.statuses.permanent,
        );
        list(self, "retry", &rd.retry, &mut out.statuses.retry);
        if let Some(p) = out.statuses.conflict() {
            self.err(
                at,
                format!("\"{p}\" is named in two of success, permanent, retry"),
            );
        }
        if let Some(h) = &rd.idempotency_header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if !crate::headers::is_managed(&n) => out.idempotency_header = n,
                Ok(_) => self.err(
                    format!("{at}.idempotency_header"),
                    "this header is managed by hookgate",
                ),
                Err(_) => self.err(
                    format!("{at}.idempotency_header"),
                    format!("{h:?} is not a valid header name"),
                ),
            }
        }
        out
    }

    fn upstream(&mut self, at: &str, u: &OneOrMany) -> Option<Upstream> {
        // As written (for messages), and expanded.
        let configured = u.to_vec();
        if configured.is_empty() {
            self.err(at, "at least one upstream is needed");
            return None;
        }
        let list: Vec<String> = configured
            .iter()
            .enumerate()
            .map(|(i, s)| self.expand(&format!("{at}[{i}]"), s))
            .collect();
        if let Some(f) = list.iter().find_map(|s| s.strip_prefix("file:")) {
            if list.len() > 1 {
                self.err(at, "a file: upstream cannot be balanced with others");
                return None;
            }
            if f.is_empty() {
                self.err(at, "file: needs a path, e.g. file:var/webhooks.jsonl");
                return None;
            }
            return Some(Upstream::File(FileSink {
                path: self.resolve_path(f),
            }));
        }
        let mut targets = Vec::new();
        let mut failures = 0;
        for (i, s) in list.iter().enumerate() {
            let uat = if list.len() > 1 {
                format!("{at}[{i}]")
            } else {
                at.to_string()
            };
            match parse_http_targets(s) {
                Ok(t) => targets.extend(t),
                // What came from the environment may be a key: shown by name.
                Err(e) => {
                    failures += 1;
                    let e = match configured.get(i) {
                        Some(raw) => self.unexpand(raw, e),
                        None => e,
                    };
                    self.err(uat, e)
                }
            }
        }
        (failures == 0 && !targets.is_empty()).then_some(Upstream::Http(targets))
    }
}

/// Load a listener's certificate chain and key as pingora will when it starts
/// (pingora panics on files it cannot use, after `check` would have said OK):
/// PEM certificates, a supported private key, and a key that belongs to the
/// first certificate.
pub fn check_server_tls(cert: &Path, key: &Path) -> Result<(), String> {
    use pingora::tls::{load_certs_and_key_files, version, ServerConfig};
    let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
    let Ok(Some((certs, key_der))) = load_certs_and_key_files(&c, &k) else {
        return Err(format!(
            "{c} and {k}: need PEM certificates and an unencrypted PEM private key"
        ));
    };
    if certs.is_empty() {
        return Err(format!("{c}: no PEM certificate found"));
    }
    ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map(|_| ())
        .map_err(|e| format!("{c} with {k}: {e}"))
}

/// Read a PEM file of CA certificates; every certificate must parse.
pub fn load_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der =
            item.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
        if x509_parser::parse_x509_certificate(der.as_ref()).is_err() {
            return Err(format!("{}: a certificate does not parse", path.display()));
        }
        out.push(der.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(out)
}

/// Parse and resolve `http(s)://host[:port][/path][?query]`.
///
/// `http::Uri` (RFC 3986) is enough for an upstream: hosts are addresses or
/// ASCII names, and the path is sent as written. Non-ASCII characters and
/// spaces are refused rather than percent-encoded.
pub fn parse_http_target(s: &str) -> Result<HttpTarget, String> {
    parse_http_targets(s)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// One target per address the URL's host resolves to (once, at start), as
/// nginx makes one server of each: requests go round the list, and one whose
/// connect fails goes on to the next (`localhost` may give `::1` first while
/// the upstream listens on 127.0.0.1 only).
pub fn parse_http_targets(s: &str) -> Result<Vec<HttpTarget>, String> {
    if s.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "{s:?} is not a URL: spaces, control and non-ASCII characters must be percent-encoded"
        ));
    }
    if s.contains('#') {
        return Err("a fragment (#...) has no meaning in an upstream URL".into());
    }
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("{s:?} is not a URL: it has no scheme"))?;
    let tls = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(format!(
            "scheme {:?} is not supported (http, https or file:)",
            scheme.to_ascii_lowercase()
        ));
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported; use [route.headers] set".into());
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    let default_port = if tls { 443 } else { 80 };
    // `Authority::port` is None for a port out of range too: read it here.
    let port = match authority.as_str().get(host.len()..).unwrap_or_default() {
        "" | ":" => default_port,
        rest => rest
            .strip_prefix(':')
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?} is not a URL: invalid port {rest:?}"))?,
    };
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (bare_host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
    {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    // The scheme's own port is left out of Host, as browsers and curl do.
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let path = match uri.path_and_query().map(|pq| pq.as_str()) {
        Some(pq) if pq.starts_with('/') => pq.to_string(),
        Some(pq) => format!("/{pq}"),
        None => "/".to_string(),
    };
    let url = match s.split_once('?') {
        Some((before, _)) => format!("{before}?…"),
        None => s.to_string(),
    };
    Ok(addrs
        .into_iter()
        .map(|addr| HttpTarget {
            url: url.clone(),
            addr,
            tls,
            sni: bare_host.clone(),
            authority: authority.clone(),
            path: path.clone(),
        })
        .collect())
}

/// serde messages mention Rust-isms; keep them readable.
fn clean_serde(msg: &str) -> String {
    msg.trim().replace('\n', " ").replace("  ", " ")
}

impl Config {
    /// A human summary: listeners, routes, upstreams, schemas. Holds no secret.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "listen {} ({}), {} thread(s); metrics, /healthz, /readyz on {}",
            listen.join(", "),
            if self.server.tls.is_some() {
                "https"
            } else {
                "http"
            },
            self.server.threads,
            self.metrics_listen
        );
        let allow: Vec<String> = self.access.allow().iter().map(|n| n.to_string()).collect();
        let trusted: Vec<String> = self
            .access
            .trusted()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let _ = writeln!(
            s,
            "allow {}; trusted proxies: {}{}",
            allow.join(", "),
            if trusted.is_empty() {
                "none (disallowed peers dropped at accept)".to_string()
            } else {
                trusted.join(", ")
            },
            if self.secret.is_some() {
                "; shared secret required"
            } else {
                ""
            }
        );
        if let Some(sp) = &self.spool {
            let _ = writeln!(
                s,
                "spool {}: max {} B; duplicates suppressed for {} s",
                sp.dir.display(),
                sp.max_bytes,
                sp.dedup_window.as_secs()
            );
        }
        for r in &self.routes {
            let up = match &r.upstream {
                Upstream::File(f) => format!("file:{}", f.path.display()),
                Upstream::Http(t) => t
                    .iter()
                    .map(|t| format!("{} ({})", t.url, t.addr))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let _ = writeln!(
                s,
                "route {:?}: POST {} -> {}; schema {}; validation {}; transcription {}; max body {} B; timeout {} ms{}",
                r.name,
                r.path,
                up,
                r.inspector.schema_id().unwrap_or("none"),
                r.inspector.validation().as_str(),
                r.inspector.transcription().as_str(),
                r.limits.max_body_bytes,
                r.timeout.as_millis(),
                if r.secret.is_some() { "; secret required" } else { "" }
            );
            if r.delivery.uses_spool() {
                let rd = &r.redelivery;
                let _ = writeln!(
                    s,
                    "  delivery {}: backoff {}-{} ms, dead letter after {} attempts or {} s{}",
                    r.delivery.as_str(),
                    rd.backoff_initial.as_millis(),
                    rd.backoff_max.as_millis(),
                    rd.max_attempts,
                    rd.max_age.as_secs(),
                    if r.delivery == Delivery::ProxyOrSpool {
                        format!("; first try {} ms", rd.first_try.min(r.timeout).as_millis())
                    } else {
                        String::new()
                    }
                );
            }
            if !r.upstream_tls.verify {
                let _ = writeln!(s, "WARNING route {:?}: upstream TLS certificates are NOT verified (tls_verify = false)", r.name);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([("TOKEN".to_string(), "abc".to_string())])
    }

    fn errors(text: &str) -> Vec<String> {
        match load_str(text, Path::new("/etc/hookgate/hookgate.toml"), &env()) {
            Ok(_) => vec![],
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let cfg = load_str(
            "[[route]]\nname = \"crm\"\npath = \"/hook\"\nupstream = \"http://127.0.0.1:9/x?y=1\"\n",
            Path::new("/etc/hookgate/hookgate.toml"),
            &env(),
        )
        .unwrap();
        assert!(cfg.access.is_allowed("217.116.118.254".parse().unwrap()));
        assert!(!cfg.access.is_allowed("127.0.0.1".parse().unwrap()));
        assert_eq!(cfg.limits.max_body_bytes, 1_048_576);
        assert_eq!(
            cfg.log_buffer_bytes, 0,
            "access lines unbuffered by default"
        );
        let r = &cfg.routes[0];
        assert_eq!(r.timeout, Duration::from_millis(8000));
        match &r.upstream {
            Upstream::Http(t) => {
                assert_eq!(t[0].path, "/x?y=1");
                assert_eq!(t[0].authority, "127.0.0.1:9");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn port_zero_may_serve_both_listeners_but_a_fixed_port_may_not() {
        let route =
            "[[route]]\nname = \"crm\"\npath = \"/hook\"\nupstream = \"http://127.0.0.1:9/x\"\n";
        let with = |public: &str, metrics: &str| {
            errors(&format!(
                "[server]\nlisten = [\"{public}\"]\n[metrics]\nlisten = \"{metrics}\"\n{route}"
            ))
        };
        // Two port-0 addresses are two different free ports.
        assert_eq!(with("127.0.0.1:0", "127.0.0.1:0"), Vec::<String>::new());
        for (public, metrics) in [
            ("127.0.0.1:9464", "127.0.0.1:9464"),
            // The wildcard covers the metrics address (the default one).
            ("0.0.0.0:9464", "127.0.0.1:9464"),
        ] {
            let same = with(public, metrics);
            assert!(
                same.iter()
                    .any(|e| e.contains("metrics.listen") && e.contains("must not overlap")),
                "{same:?}"
            );
        }
    }

    #[test]
    fn access_log_buffer_settings() {
        let load = |log: &str| {
            load_str(
                &format!("[log]\n{log}\n[[route]]\nname = \"crm\"\npath = \"/hook\"\nupstream = \"http://127.0.0.1:9/x\"\n"),
                Path::new("/etc/hookgate/hookgate.toml"),
                &env(),
            )
        };
        let c = load("buffer_bytes = 32768").unwrap();
        assert_eq!(
            (c.log_buffer_bytes, c.log_flush),
            (32768, Duration::from_secs(1))
        );
        // flush_ms alone: nginx's default buffer of 64 KiB.
        let c = load("flush_ms = 250").unwrap();
        assert_eq!(
            (c.log_buffer_bytes, c.log_flush),
            (65536, Duration::from_millis(250))
        );
        let c = load("buffer_bytes = 0\nflush_ms = 250").unwrap();
        assert_eq!(c.log_buffer_bytes, 0);
        let e = load("buffer_bytes = 2000000\nflush_ms = 5")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("log.buffer_bytes") && e.contains("log.flush_ms"),
            "{e}"
        );
    }

    #[test]
    fn env_expansion() {
        let cfg = load_str(
            "[[route]]\nname = \"crm\"\npath = \"/hook\"\nupstream = \"file:out.jsonl\"\n[route.headers]\nset = { Authorization = \"Bearer ${TOKEN}\" }\n",
            Path::new("/etc/hookgate/hookgate.toml"),
            &env(),
        )
        .unwrap();
        assert_eq!(cfg.routes[0].headers.set[0].1, "Bearer abc");
        assert_eq!(
            cfg.routes[0].upstream,
            Upstream::File(FileSink {
                path: "/etc/hookgate/out.jsonl".into()
            })
        );
    }

    #[test]
    fn settings_that_would_break_or_open_the_gateway_are_refused() {
        let errs = errors(
            r#"
[server]
listen = ["localhost", "0.0.0.0:8080", "[::]:8080", "127.0.0.1:8081", "127.0.0.1:0", "127.0.0.1:0"]

[metrics]
listen = "127.0.0.1:8081"

[access]
allow = []
trusted_proxies = ["nonsense", "10.0.0.0/8", "::/0"]

[[route]]
name = "a"
path = "/hooks/${TOKEN}"
upstream = "http://127.0.0.1:1"
"#,
        );
        let joined = errors_joined(&errs);
        assert!(
            joined.contains("server.listen[2]: [::]:8080 overlaps server.listen[1]"),
            "{joined}"
        );
        assert!(
            !joined.contains("server.listen[5]"),
            "port 0 twice is fine: {joined}"
        );
        assert!(
            joined.contains("metrics.listen: must not overlap"),
            "{joined}"
        );
        assert!(joined.contains("access.allow: is empty"), "{joined}");
        assert!(
            joined.contains("access.trusted_proxies[2]: ::/0 trusts every address"),
            "{joined}"
        );
        assert!(!joined.contains("access.trusted_proxies[1]"), "{joined}");
        assert!(
            joined.contains("route[0] \"a\".path: environment values"),
            "{joined}"
        );
        // And the two entries that are not addresses.
        assert_eq!(errs.len(), 7, "{joined}");
    }

    #[test]
    fn every_error_at_once() {
        let errs = errors(
            r#"
[server]
listen = ["nonsense"]
threds = 2

[access]
allow = ["10.0.0.0/33", "::1"]

[[route]]
name = "a"
path = "nopath"
upstream = "ftp://x"
transcription = "drop"

[[route]]
name = "a"
path = "/b"
upstream = "http://127.0.0.1:1"
[route.headers]
set = { "X-T" = "${MISSING}" }
"#,
        );
        let joined = errors_joined(&errs);
        assert!(joined.contains("server.threds: unknown key"), "{joined}");
        assert!(joined.contains("server.listen[0]"), "{joined}");
        assert!(joined.contains("access.allow[0]"), "{joined}");
        assert!(joined.contains("route[0] \"a\".path"), "{joined}");
        assert!(joined.contains("route[0] \"a\".upstream"), "{joined}");
        assert!(joined.contains("route[0] \"a\".transcription"), "{joined}");
        assert!(joined.contains("duplicate route name"), "{joined}");
        assert!(joined.contains("MISSING is not set"), "{joined}");
    }

    fn errors_joined(e: &[String]) -> String {
        e.join("\n")
    }

    #[test]
    fn syntax_error_has_line() {
        let errs = errors("[server]\nlisten = [\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("line "), "{errs:?}");
    }

    #[test]
    fn secret_is_checked_constant_time_and_rotates() {
        let s = Secret {
            header: HeaderName::from_static("x-hookgate-secret"),
            values: vec![
                b"old-secret-0123456789".to_vec(),
                b"new-secret-0123456789".to_vec(),
            ],
        };
        assert!(s.accepts(Some(b"old-secret-0123456789")));
        assert!(s.accepts(Some(b"new-secret-0123456789")));
        assert!(!s.accepts(Some(b"new-secret-012345678")));
        assert!(!s.accepts(None));
        assert!(!format!("{s:?}").contains("secret-0123"));
    }

    /// What an upstream URL turns into: the address dialled, the `Host` header,
    /// the SNI name and the path sent. Pins the behaviour down for any change
    /// of URL parser.
    #[test]
    fn every_address_of_an_upstream_name_is_a_target_and_its_query_is_not_shown() {
        let want: Vec<SocketAddr> = {
            let mut v: Vec<SocketAddr> = ("localhost", 9).to_socket_addrs().unwrap().collect();
            v.dedup();
            v
        };
        let got = parse_http_targets("http://localhost:9/in?key=s3cr3t-value").unwrap();
        let addrs: Vec<SocketAddr> = got.iter().map(|t| t.addr).collect();
        assert!(addrs.contains(&"127.0.0.1:9".parse().unwrap()), "{addrs:?}");
        assert_eq!(addrs.len(), want.len(), "{addrs:?} against {want:?}");
        for t in &got {
            assert!(t.addr.ip().is_loopback());
            assert_eq!(t.path, "/in?key=s3cr3t-value");
            assert_eq!(t.url, "http://localhost:9/in?…");
        }
        // Nor in the summary, nor in an error about a URL taken from the environment.
        let cfg = load_str(
            "[[route]]\nname = \"crm\"\npath = \"/hook\"\nupstream = \"http://127.0.0.1:9/x?key=${UP_KEY}\"\n",
            Path::new("/etc/hookgate/hookgate.toml"),
            &HashMap::from([("UP_KEY".to_string(), "s3cr3t-value".to_string())]),
        )
        .unwrap();
        assert!(!cfg.summary().contains("s3cr3t"), "{}", cfg.summary());
        // The port is where the key went: the error shows `${UP_KEY}`, as written
        // and where a message escapes the value (`{:?}`, a quote in the key).
        let errors_with_key = |key: &str| {
            let errs = load_str(
                "[[route]]\nname = \"crm\"\npath = \"/hook\"\nupstream = \"http://127.0.0.1:0${UP_KEY}/x\"\n",
                Path::new("/etc/hookgate/hookgate.toml"),
                &HashMap::from([("UP_KEY".to_string(), key.to_string())]),
            )
            .unwrap_err();
            errors_joined(
                &errs
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>(),
            )
        };
        for key in ["s3cr3t-value", "s3\"cr3t-value"] {
            let joined = errors_with_key(key);
            assert!(
                joined.contains("${UP_KEY}") && !joined.contains("cr3t"),
                "{joined}"
            );
        }
    }

    #[test]
    fn upstream_urls_parse_to_address_host_sni_and_path() {
        let t = parse_http_target("http://127.0.0.1:9000/hooks/in?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        assert!(!t.tls);
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert_eq!(t.sni, "127.0.0.1");
        assert_eq!(t.path, "/hooks/in?x=1");

        // No path: "/"; the scheme's own port is left out of Host.
        let t = parse_http_target("http://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.authority.as_str()), (80, "127.0.0.1"));
        assert_eq!(t.path, "/");
        let t = parse_http_target("http://127.0.0.1:80/a").unwrap();
        assert_eq!((t.addr.port(), t.authority.as_str()), (80, "127.0.0.1"));
        let t = parse_http_target("https://127.0.0.1/a").unwrap();
        assert!(t.tls);
        assert_eq!((t.addr.port(), t.authority.as_str()), (443, "127.0.0.1"));
        let t = parse_http_target("https://127.0.0.1:8443/a").unwrap();
        assert_eq!(
            (t.addr.port(), t.authority.as_str()),
            (8443, "127.0.0.1:8443")
        );

        // An empty port is the default one; a query without a path gets "/".
        let t = parse_http_target("http://127.0.0.1:?x=1").unwrap();
        assert_eq!((t.addr.port(), t.authority.as_str()), (80, "127.0.0.1"));
        assert_eq!(t.path, "/?x=1");

        // IPv6: brackets in Host, none in the SNI name.
        let t = parse_http_target("http://[::1]:9000/x").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(t.authority, "[::1]:9000");
        assert_eq!(t.sni, "::1");

        // Scheme and host are case-insensitive; the path is not.
        let t = parse_http_target("HTTP://127.0.0.1:9000/Hooks").unwrap();
        assert!(!t.tls);
        assert_eq!(t.path, "/Hooks");
    }

    #[test]
    fn upstream_urls_that_cannot_work_are_refused_with_a_reason() {
        let refused = |url: &str| parse_http_target(url).expect_err(url);
        assert!(refused("ftp://127.0.0.1/").contains("not supported"));
        assert!(refused("http://user:pw@127.0.0.1/").contains("credentials"));
        assert!(refused("http://user@127.0.0.1/").contains("credentials"));
        assert!(refused("http://127.0.0.1/a#frag").contains("fragment"));
        assert!(
            refused("127.0.0.1:9000/a").contains("is not a URL"),
            "{}",
            refused("127.0.0.1:9000/a")
        );
        for port in ["99999", "0", "+80", "8o", "-1"] {
            let url = format!("http://127.0.0.1:{port}/");
            assert!(refused(&url).contains("not a URL"), "{url}");
        }
        assert!(refused("http://127.0.0.1/ä").contains("not a URL"));
        assert!(refused("http://127.0.0.1/a b").contains("not a URL"));
        assert!(refused("not a url").contains("not a URL"));
    }
}
