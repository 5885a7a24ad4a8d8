//! The `hookgate` binary: see `hookgate --help`.
//!
//! Besides calling the library, it owns one process-wide setting that a library
//! must not make for its host: how glibc's allocator gives memory back.
#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    hookgate::cli::main()
}

/// Freed memory that glibc keeps for reuse instead of giving it back to the
/// system: the default in-flight body budget (`max_inflight_body_bytes`).
/// Only memory the process has used is ever kept, so this bounds what stays
/// resident after a burst, it does not reserve anything.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREED_BYTES: libc::c_int = {
    use hookgate::config::file::DEFAULT_MAX_INFLIGHT_BODY_BYTES as BUDGET;
    assert!(BUDGET <= libc::c_int::MAX as u64);
    BUDGET as libc::c_int
};

/// Allocations up to this size come from the heap (and are reused) instead of
/// a fresh `mmap` each: a 2 MiB body's buffers and its tape.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_UP_TO_BYTES: libc::c_int = 4 << 20;

/// Stop glibc from handing the top of its heap back to the system after every
/// large request. By default it trims as soon as 128 KiB are free at the top,
/// and a 64 KiB body's buffers (pingora's, the whole body, the scan's tape) are
/// freed together at the end of each request; the next request then faults
/// the same pages in again, zeroed by the kernel. Measured (PGO build, 1
/// worker, wrk -c8, the same binary without and with these settings given as
/// `GLIBC_TUNABLES`, alternating): 64 KB full pipeline 0.49-2.16 -> 0 page
/// faults and 107-115 -> 97-106 us of CPU per request (lower in 4 of 4
/// pairs); 900 KB 46-81 -> 0.1 faults and 1074-1300 -> 1008-1145 us (3 of
/// 3); 2 KB never faulted and did not move. Resident memory after a burst of
/// 900 KB bodies: 21.8 -> 23.4 MB, peak 25.1 -> 25.5, idle at start unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: `mallopt` only sets glibc allocator parameters; it takes the
    // allocator's own lock, touches no Rust memory and may be called at any time.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED_BYTES);
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_UP_TO_BYTES);
    }
}

/// Other C libraries keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
