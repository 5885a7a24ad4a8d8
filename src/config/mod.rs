//! Configuration: the TOML file model (`file`), and the validated runtime model
//! (`runtime`) that the gateway runs on, built once at start.
//!
//! Loading reports every error at once, each with where it is (`route[1] "crm".upstream`).
//! `${NAME}` in a value is read from the environment; a missing variable is an error.

pub mod file;
pub mod runtime;

pub use runtime::{
    load, load_str, Config, Delivery, Env, FileSink, HeaderRules, HttpTarget, Limits, ProcessEnv,
    Redelivery, Route, Secret, ServerSettings, SpoolSettings, Upstream, UpstreamTls,
};

/// One configuration error and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a key path such as `route[0] "crm".upstream`, or `file` for syntax errors.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every error found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} configuration error(s) in {}:\n{}", .errors.len(), .path, .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors {
    /// The file.
    pub path: String,
    /// The errors, in file order.
    pub errors: Vec<ConfigError>,
}
