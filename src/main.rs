//! The `hookgate` binary: see `hookgate --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    hookgate::cli::main()
}
