//! Process lifecycle: readiness, draining on SIGTERM, requests in flight, and
//! request ids.
//!
//! SIGTERM: `/readyz` turns 503, new responses close their connections, the
//! listeners stop (once idle, or after half the grace), and the process exits as
//! soon as no request is in flight, or when the grace ends. SIGINT: stop at once.

use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared process state.
#[derive(Debug)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    request_seq: AtomicU64,
    id_prefix: u64,
}

/// Decrements the in-flight count when a request ends, however it ends.
pub struct InFlight<'a> {
    lc: &'a Lifecycle,
    gauge: prometheus::IntGauge,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.lc.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Lifecycle {
    /// Not ready, not draining.
    pub fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Lifecycle {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            request_seq: AtomicU64::new(0),
            id_prefix: (now ^ u64::from(std::process::id()).rotate_left(32)) & 0xffff_ffff,
        }
    }

    /// Listeners are bound and serving.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining()
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Begin draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Requests being processed now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Count a request in; the guard counts it out.
    pub fn enter<'a>(&'a self, metrics: &Metrics) -> InFlight<'a> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        metrics.in_flight.inc();
        InFlight {
            lc: self,
            gauge: metrics.in_flight.clone(),
        }
    }

    /// A process-unique request id.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{:08x}", self.id_prefix, n)
    }

    /// Wait until no request is in flight or `grace` has passed.
    pub fn wait_idle(&self, grace: Duration) {
        let end = Instant::now() + grace;
        while self.in_flight() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix signals, with draining on SIGTERM. SIGQUIT keeps pingora's meaning
/// (graceful upgrade); SIGINT stops at once.
pub struct Signals {
    /// The shared state.
    pub lifecycle: Arc<Lifecycle>,
    /// SIGTERM grace.
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => {
                tracing::info!(grace_ms = self.grace.as_millis() as u64, in_flight = self.lifecycle.in_flight(), "SIGTERM: draining");
                // /readyz turns 503 and responses close their connections, while the
                // listeners stay open so a load balancer can notice. Once nothing is in
                // flight, or half the grace is over, the listeners close; the process
                // exits as soon as the last request is done, or when the grace ends
                // (pingora itself would sleep out its whole grace period). The second
                // half is for requests accepted late: under steady traffic nothing is
                // ever idle, and those accepted just before the end were cut.
                self.lifecycle.start_draining();
                let started = Instant::now();
                while self.lifecycle.in_flight() > 0 && started.elapsed() < self.grace / 2 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let lc = self.lifecycle.clone();
                let rest = self.grace.saturating_sub(started.elapsed());
                std::thread::spawn(move || {
                    // Let the listeners stop first.
                    std::thread::sleep(Duration::from_millis(20));
                    lc.wait_idle(rest);
                    tracing::info!(in_flight = lc.in_flight(), "drained; exiting");
                    crate::log::flush();
                    std::process::exit(0);
                });
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
