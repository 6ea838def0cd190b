//! Parsing of what the manager's HTTP endpoints return: the Go pprof goroutine profile (or an
//! expvar document) and longhorn-manager's Prometheus text exposition.

/// The metric longhorn-manager keeps per instance manager: proxy clients created minus closed.
pub const PROXY_GRPC_CONNECTION: &str = "longhorn_instance_manager_proxy_grpc_connection";

/// Reads the goroutine count from `goroutine profile: total N` (pprof `debug=1`, first line) or
/// from an expvar JSON document with a numeric `"goroutines"` field.
pub fn goroutine_count(body: &str) -> Option<u64> {
    let first = body.lines().next().unwrap_or("").trim();
    if let Some(n) = first.strip_prefix("goroutine profile: total ") {
        return n.trim().parse().ok();
    }
    // expvar: {"cmdline": [...], "goroutines": 42, ...}
    let at = body.find("\"goroutines\"")?;
    let rest = body.get(at + "\"goroutines\"".len()..)?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// One sample line of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl TextSample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one non-comment line: `name{a="x",b="y\"z"} 1.5 [timestamp]`.
pub fn parse_sample_line(line: &str) -> Option<TextSample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let consumed;
        loop {
            // skip separators
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    consumed = Some(*i + 1);
                    break;
                }
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => return None,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => value.push(other),
                }
            }
            if !closed {
                return None;
            }
            labels.push((key.trim().to_owned(), value));
        }
        rest = body.get(consumed?..)?;
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(TextSample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Sums `longhorn_instance_manager_proxy_grpc_connection` over the series whose `node` label is
/// `node`. `None` when the exposition does not mention the metric at all (older Longhorn, or
/// the wrong URL); `Some(0.0)` when the family is declared but this node has no series.
pub fn proxy_grpc_connections(text: &str, node: &str) -> Option<f64> {
    let mut seen = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(comment) = trimmed.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if matches!(words.next(), Some("TYPE" | "HELP"))
                && words.next() == Some(PROXY_GRPC_CONNECTION)
            {
                seen = true;
            }
            continue;
        }
        if !trimmed.starts_with(PROXY_GRPC_CONNECTION) {
            continue;
        }
        let Some(sample) = parse_sample_line(trimmed) else {
            continue;
        };
        if sample.name != PROXY_GRPC_CONNECTION {
            continue;
        }
        seen = true;
        if sample.label("node") == Some(node) && sample.value.is_finite() {
            sum += sample.value;
        }
    }
    seen.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goroutines_from_pprof_and_expvar() {
        assert_eq!(
            goroutine_count("goroutine profile: total 1234\n1 @ 0x43\n#\t0x1 main.main\n"),
            Some(1234)
        );
        assert_eq!(
            goroutine_count("{\"cmdline\": [\"x\"], \"goroutines\": 77, \"memstats\": {}}"),
            Some(77)
        );
        assert_eq!(goroutine_count("404 page not found\n"), None);
        assert_eq!(goroutine_count("goroutine profile: total many\n"), None);
        assert_eq!(goroutine_count(""), None);
    }

    #[test]
    fn sample_lines_with_escapes_and_timestamps() {
        let s = parse_sample_line(r#"m{a="x",b="q\"u,o}te",c="line\nbreak"} 3 1700000000000"#)
            .expect("line");
        assert_eq!(s.name, "m");
        assert_eq!(s.label("a"), Some("x"));
        assert_eq!(s.label("b"), Some("q\"u,o}te"));
        assert_eq!(s.label("c"), Some("line\nbreak"));
        assert_eq!(s.value, 3.0);
        assert_eq!(
            parse_sample_line("plain 2.5e3").map(|s| s.value),
            Some(2500.0)
        );
        assert_eq!(
            parse_sample_line("x{} +Inf").map(|s| s.value),
            Some(f64::INFINITY)
        );
        for bad in [
            "# HELP x y",
            "",
            "m{a=\"x\" 1",
            "m{a=x} 1",
            "m{a=\"x\"}",
            "m NaNx",
        ] {
            assert!(parse_sample_line(bad).is_none(), "accepted {bad:?}");
        }
    }

    const LONGHORN: &str = r#"# HELP longhorn_instance_manager_proxy_grpc_connection The number of proxy gRPC connection of this longhorn instance manager
# TYPE longhorn_instance_manager_proxy_grpc_connection gauge
longhorn_instance_manager_proxy_grpc_connection{instance_manager="instance-manager-aaa",instance_manager_type="aio",node="node-1"} 4012
longhorn_instance_manager_proxy_grpc_connection{instance_manager="instance-manager-bbb",instance_manager_type="aio",node="node-1"} 3
longhorn_instance_manager_proxy_grpc_connection{instance_manager="instance-manager-ccc",instance_manager_type="aio",node="node-2"} 99
longhorn_instance_manager_proxy_grpc_connection_other{node="node-1"} 1000
# HELP longhorn_manager_memory_usage_bytes x
longhorn_manager_memory_usage_bytes{manager="m",node="node-1"} 7.5e+09
"#;

    #[test]
    fn proxy_connections_sum_this_node_only() {
        assert_eq!(proxy_grpc_connections(LONGHORN, "node-1"), Some(4015.0));
        assert_eq!(proxy_grpc_connections(LONGHORN, "node-2"), Some(99.0));
        assert_eq!(proxy_grpc_connections(LONGHORN, "node-3"), Some(0.0));
        assert_eq!(
            proxy_grpc_connections("# HELP other x\nother 1\n", "node-1"),
            None
        );
    }
}
