//! Log set-up shared by the binaries. Libraries only emit `tracing` events; the binary decides where they go.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

/// Installs a compact stderr logger filtered by `RUST_LOG` (default `info`). Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .init();
}
