//! hookgate inside your own pingora server: load a hookgate config, take its two
//! services (the webhook gateway and its metrics listener) and run them beside
//! your own services in one process.
//!
//! `cargo run --example embed_pingora -- conf/hookgate.toml`

use hookgate::{config, lifecycle::Lifecycle, metrics::Metrics, server};
use pingora::server::Server;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "conf/hookgate.toml".into());
    let cfg = config::load(path.as_ref())?;
    hookgate::log::init(&cfg.log_level, false, hookgate::log::LogOutput::direct());

    let mut my_server = Server::new(None)?;
    my_server.bootstrap();

    // ... add your own services to `my_server` here ...

    let metrics = Arc::new(Metrics::new());
    let lifecycle = Arc::new(Lifecycle::new());
    // The gateway, its metrics listener and (when a route spools) the spool's
    // background delivery.
    server::services(&cfg, metrics, lifecycle.clone())?.add_to(&mut my_server);
    // Mark ready once your own start-up is done (answers /readyz).
    lifecycle.set_ready();
    my_server.run_forever();
}
