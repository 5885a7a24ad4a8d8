//! hookgate: an edge gateway for sipgate AI Agents call webhooks, built on pingora.
//!
//! It admits only allowed sources (spoof-proof behind load balancers), reads and
//! checks every body whole, strips what internal systems must not see, adds what
//! they need, forwards clean requests, and accounts for everything in Prometheus.
//!
//! The pipeline stages are plain modules usable on their own:
//! [`access`] (admission, client identity), [`inspect`] (strict parse, schema,
//! privacy transforms), [`headers`] (what goes upstream), [`upstream`] (delivery),
//! [`error`] (the JSON rejections). [`proxy`] and [`server`] are the thin pingora
//! glue, [`config`] the two-layer configuration.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod cli;
pub mod config;
pub mod error;
pub mod fast_schema;
pub mod framing;
pub mod h1;
pub mod headers;
pub mod inspect;
pub mod json;
pub mod lifecycle;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod spool;
pub mod tape;
pub mod upstream;
