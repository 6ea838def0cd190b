//! Shared by the agent's benchmarks.

/// The value after `--name` on the command line, parsed; `None` when absent or unparseable.
pub fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].parse().ok())
}
