//! Log set-up for the binaries: text or JSON lines on stderr, filtered by level.

use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A log filter that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid --log-level {level:?}: {source}")]
pub struct LogLevelError {
    level: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// Install the global subscriber.
pub fn init(level: &str, format: Format) -> Result<(), LogLevelError> {
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|source| LogLevelError {
            level: level.into(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => builder.init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}
