//! One log format for every roomcast binary.

/// Logs to stderr (`RUST_LOG` filters, default `info`), in colour only on a terminal. Shared by
/// every roomcast binary so their logs look and filter alike.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
