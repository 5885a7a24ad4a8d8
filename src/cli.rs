//! The command line: `run` (default), `check`, `validate`, `spool`.

use crate::config;
use crate::inspect::{compile_schema_file, Inspector, Transcription, Validation};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// hookgate: edge gateway for sipgate AI Agents webhooks.
#[derive(Debug, Parser)]
#[command(name = "hookgate", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = "conf/hookgate.toml")]
    pub config: PathBuf,
    /// Log format (overrides `[log] format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run,
    /// Load and validate the configuration; print a summary or every error.
    Check,
    /// Run parse, validate and transform offline on payload files.
    Validate {
        /// Use this route's settings from the configuration.
        #[arg(long, conflicts_with = "schema")]
        route: Option<String>,
        /// Validate against this schema file (enforce, transcription kept).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Payload files.
        #[arg(required = true)]
        payloads: Vec<PathBuf>,
    },
    /// Inspect and manage the durable spool (works beside a running gateway).
    Spool {
        /// The spool folder (default: `[spool] dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        action: SpoolAction,
    },
}

/// `hookgate spool` actions.
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// List queued, dead-lettered and damaged messages (no personal data).
    List,
    /// Show one message's metadata.
    Show {
        /// Message id (from `list`).
        id: String,
        /// Also print the stored body (personal data: handle with care).
        #[arg(long)]
        body: bool,
    },
    /// Queue dead letters again (attempts reset); they are delivered next.
    Retry {
        /// Message ids.
        #[arg(required_unless_present = "all_dead")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
    },
    /// Delete messages for good (queued, dead or damaged).
    Drop {
        /// Message ids.
        #[arg(required_unless_present = "all_dead")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
    },
}

/// Run the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config, cli.log_format),
        Command::Check => check(&cli.config),
        Command::Validate {
            route,
            schema,
            payloads,
        } => validate(&cli.config, route, schema, &payloads),
        Command::Spool { dir, action } => spool(&cli.config, dir, action),
    }
}

fn spool(path: &std::path::Path, dir: Option<PathBuf>, action: SpoolAction) -> ExitCode {
    use crate::spool::admin;
    let dir = match dir {
        Some(d) => d,
        None => match config::load(path) {
            Ok(cfg) => match cfg.spool {
                Some(s) => s.dir,
                None => {
                    eprintln!("{} has no [spool] section (or pass --dir)", path.display());
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprintln!("{e}\n(or pass the spool folder with --dir)");
                return ExitCode::FAILURE;
            }
        },
    };
    let layout = crate::spool::store::Layout::new(&dir);
    if !layout.queue.is_dir() {
        eprintln!("{} is not a spool folder (no queue/ in it)", dir.display());
        return ExitCode::FAILURE;
    }
    let mut stdout = std::io::stdout().lock();
    let all_dead = |ids: Vec<String>, all: bool| -> std::io::Result<Vec<String>> {
        if all {
            admin::dead_ids(&layout)
        } else {
            Ok(ids)
        }
    };
    let result: Result<Vec<String>, admin::AdminError> = match action {
        SpoolAction::List => admin::list(&layout, &mut stdout)
            .map(|_| Vec::new())
            .map_err(Into::into),
        SpoolAction::Show { id, body } => {
            admin::show(&layout, &id, body, &mut stdout).map(|_| Vec::new())
        }
        SpoolAction::Retry { ids, all_dead: a } => all_dead(ids, a)
            .map_err(Into::into)
            .and_then(|ids| admin::retry(&layout, &ids)),
        SpoolAction::Drop { ids, all_dead: a } => all_dead(ids, a)
            .map_err(Into::into)
            .and_then(|ids| admin::drop_messages(&layout, &ids)),
    };
    match result {
        Ok(lines) => {
            for l in lines {
                let _ = writeln!(stdout, "{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, fmt: Option<LogFormat>) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let json = match fmt {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => cfg.log_json,
    };
    let out = crate::log::LogOutput::new(cfg.log_buffer_bytes, cfg.log_flush);
    crate::log::init(&cfg.log_level, json, out);
    let code = match crate::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    crate::log::flush();
    code
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}: OK", path.display());
            print!("{}", cfg.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(
    path: &std::path::Path,
    route: Option<String>,
    schema: Option<PathBuf>,
    payloads: &[PathBuf],
) -> ExitCode {
    let inspector = match (route, schema) {
        (_, Some(s)) => match compile_schema_file(&s) {
            Ok(schema) => Inspector::new(
                Some(Arc::new(schema)),
                Validation::Enforce,
                Transcription::Keep,
            ),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        (name, None) => {
            let cfg = match config::load(path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let found = match &name {
                Some(n) => cfg.routes.iter().find(|r| &r.name == n),
                None if cfg.routes.len() == 1 => cfg.routes.first(),
                None => {
                    eprintln!("the configuration has several routes: name one with --route");
                    return ExitCode::FAILURE;
                }
            };
            match found {
                Some(r) => r.inspector.clone(),
                None => {
                    eprintln!(
                        "no route named {:?} in {}",
                        name.unwrap_or_default(),
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    // A closed pipe is not an error worth a panic: the exit code carries the verdict.
    let mut stdout = std::io::stdout().lock();
    let mut rejected = 0;
    for p in payloads {
        let body = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(stdout, "{}: error: cannot read: {e}", p.display());
                rejected += 1;
                continue;
            }
        };
        match inspector.inspect(&body) {
            Ok(out) => {
                let what = match &out.body {
                    Some(b) => format!("transformed ({} -> {} bytes)", body.len(), b.len()),
                    None => format!("unchanged ({} bytes)", body.len()),
                };
                let report = if out.violations.is_empty() {
                    String::new()
                } else {
                    format!("; {} violation(s) reported", out.violations.len())
                };
                let _ = writeln!(stdout, "{}: accepted, {what}{report}", p.display());
                for v in &out.violations {
                    let _ = writeln!(
                        stdout,
                        "  {} {}",
                        if v.path.is_empty() { "/" } else { &v.path },
                        v.message
                    );
                }
            }
            Err(r) => {
                rejected += 1;
                let _ = writeln!(
                    stdout,
                    "{}: rejected {} {}: {}",
                    p.display(),
                    r.status(),
                    r.code(),
                    r.message()
                );
                if let crate::error::Rejection::SchemaViolation(v) = &r {
                    for v in v {
                        let _ = writeln!(
                            stdout,
                            "  {} {}",
                            if v.path.is_empty() { "/" } else { &v.path },
                            v.message
                        );
                    }
                }
            }
        }
    }
    if rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
