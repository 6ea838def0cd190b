//! The test scheme cannot rot: every test that connects to the local control plane (through
//! `TestCluster::connect*` or `ControlPlane::start`, directly or through helpers of its own
//! test crate) is `#[ignore]`d with a reason starting [`CONTROL_PLANE_REASON`], so a plain
//! `cargo test` / `cargo nextest run` lists it as skipped instead of failing it, and
//! `scripts/test.sh` runs it (`--run-ignored all`) once its control planes are up. A mark on a
//! test that never connects is refused too (it would hide a test from a plain run for
//! nothing). The same for tests that run helm or kubectl ([`TOOLS_REASON`]), which the test
//! command installs. And only the testkit's `TestEnv` reads the tests' `LHG_*` environment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use longhorn_guard_e2e::source_scan::{FnItem, blank, functions};

/// How every control-plane test's `#[ignore = "..."]` reason starts.
const CONTROL_PLANE_REASON: &str = "needs the local control plane";

/// How the reason of a test that needs helm or kubectl (and no control plane) starts.
const TOOLS_REASON: &str = "needs helm and kubectl";

/// What a test may need that only `scripts/test.sh` sets up.
struct Need {
    /// Calls that need it (the testkit's entry points), followed through the test's helpers.
    uses: &'static [&'static str],
    /// The reason its mark starts with.
    reason: &'static str,
    /// Other reasons that also cover it (a control-plane test runs where the tools are).
    also_covered_by: &'static [&'static str],
}

const CONTROL_PLANE: Need = Need {
    uses: &[
        "TestCluster::connect",
        "TestCluster::connect_to",
        "TestCluster::connect_kubeconfig",
        "ControlPlane::start",
    ],
    reason: CONTROL_PLANE_REASON,
    also_covered_by: &[],
};

const TOOLS: Need = Need {
    // `TestEnv::helm` and `TestEnv::kubectl`, called on `test_env()`.
    uses: &[".helm()", ".kubectl()"],
    reason: TOOLS_REASON,
    also_covered_by: &[CONTROL_PLANE_REASON],
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, build output and the fuzz crate's own target skipped.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source files of the workspace, read, by path relative to the root.
fn sources() -> BTreeMap<PathBuf, String> {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p.strip_prefix(&root).ok()?.to_path_buf(), text))
        })
        .collect()
}

/// The files whose functions a test in `file` can call: for an integration test, the file, the modules under its `tests/` folder and what
/// it includes with `#[path = ...]`.
fn scope(file: &Path, all: &BTreeMap<PathBuf, String>) -> Vec<PathBuf> {
    let parts: Vec<_> = file.components().collect();
    // A unit test: the tests of its own file (unit tests cover pure logic; production
    // functions' names would only blur the picture).
    let Some(at) = parts.iter().position(|c| c.as_os_str() == "tests") else {
        return vec![file.to_path_buf()];
    };
    let folder: PathBuf = parts[..=at].iter().collect();
    let mut out: Vec<PathBuf> = all
        .keys()
        .filter(|p| p.starts_with(&folder) && p.components().count() > at + 2)
        .cloned()
        .collect();
    out.push(file.to_path_buf());
    let text = &all[file];
    for (i, _) in text.match_indices("#[path = \"") {
        let rest = &text[i + 10..];
        if let Some(end) = rest.find('"') {
            let included = file.parent().unwrap_or(Path::new("")).join(&rest[..end]);
            out.push(normalize(&included));
        }
    }
    out
}

/// `a/b/../c` → `a/c`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// How calls to the functions in `items` that use one of `uses` read (`Setup::new`,
/// `.serve(`, `cluster`), directly or through each other.
fn using(items: &[FnItem], uses: &[&str]) -> BTreeSet<String> {
    let mut calls: BTreeSet<String> = uses.iter().map(|c| c.to_string()).collect();
    loop {
        let before = calls.len();
        for f in items {
            let call = f.call_pattern();
            if !calls.contains(&call) && calls.iter().any(|c| f.mentions(c)) {
                calls.insert(call);
            }
        }
        if calls.len() == before {
            return calls;
        }
    }
}

/// Test files: integration tests and unit tests (benches and examples have no tests), but
/// not the testkit's own, which check the entry points themselves without using them.
fn is_test_source(path: &Path) -> bool {
    let s = path.to_string_lossy();
    !s.contains("/benches/")
        && !s.contains("/examples/")
        && !s.starts_with("fuzz/")
        && !s.starts_with("testkit/")
}

struct Finding {
    unmarked: Vec<String>,
    marked_needlessly: Vec<String>,
    marked: usize,
}

fn scan(need: &Need) -> Finding {
    let all = sources();
    let mut finding = Finding {
        unmarked: Vec::new(),
        marked_needlessly: Vec::new(),
        marked: 0,
    };
    for (file, text) in &all {
        if !is_test_source(file) || !(text.contains("#[test]") || text.contains("tokio::test")) {
            continue;
        }
        let items: Vec<FnItem> = scope(file, &all)
            .iter()
            .filter_map(|p| all.get(p))
            .flat_map(|t| functions(t))
            .collect();
        let needing = using(&items, need.uses);
        for test in functions(text).iter().filter(|f| f.is_test()) {
            let reason = test.ignore_reason().unwrap_or_default();
            let marked = reason.starts_with(need.reason);
            let covered = marked || need.also_covered_by.iter().any(|r| reason.starts_with(r));
            let at = format!("{}:{} {}", file.display(), test.line, test.name);
            match (needing.contains(&test.call_pattern()), marked, covered) {
                (true, _, false) => finding.unmarked.push(at),
                (false, true, _) => finding.marked_needlessly.push(at),
                (true, _, true) => finding.marked += 1,
                (false, false, _) => {}
            }
        }
    }
    finding
}

/// Fails naming `tests` when there are any, after `problem`.
fn assert_none(tests: &[String], problem: &str) {
    assert!(tests.is_empty(), "{problem}:\n{}", tests.join("\n"));
}

#[test]
fn every_test_that_connects_to_the_control_plane_is_ignored_with_the_reason() {
    let finding = scan(&CONTROL_PLANE);
    assert_none(
        &finding.unmarked,
        &format!(
            "these tests connect to the local control plane but are not marked \
             #[ignore = \"{CONTROL_PLANE_REASON}: bash scripts/test.sh\"], so a plain cargo \
             test fails them instead of listing them skipped"
        ),
    );
    // The scan finds the tests it is about (a broken scan would find none and pass).
    let marked = finding.marked;
    assert!(
        marked > 40,
        "only {marked} marked control-plane tests found"
    );
}

#[test]
fn no_test_is_marked_for_the_control_plane_without_connecting() {
    assert_none(
        &scan(&CONTROL_PLANE).marked_needlessly,
        "these tests are marked as needing the local control plane but never connect to it \
         (a plain cargo test would skip them for nothing)",
    );
}

#[test]
fn every_test_that_runs_helm_or_kubectl_is_ignored_with_a_reason() {
    let finding = scan(&TOOLS);
    assert_none(
        &finding.unmarked,
        &format!(
            "these tests run helm or kubectl (LHG_TEST_HELM, LHG_TEST_KUBECTL) but are not \
             marked #[ignore = \"{TOOLS_REASON}: bash scripts/test.sh\"] (or as control-plane \
             tests), so a plain cargo test fails them instead of listing them skipped"
        ),
    );
    assert_none(
        &finding.marked_needlessly,
        "these tests are marked as needing helm and kubectl but never run either",
    );
    let marked = finding.marked;
    assert!(marked > 5, "only {marked} tool tests found");
}

#[test]
fn only_the_testkit_reads_the_test_environment() {
    let mut readers = Vec::new();
    for (file, text) in sources() {
        let s = file.to_string_lossy();
        let test_code = s.contains("/tests/")
            || s.contains("/benches/")
            || s.contains("/examples/")
            || s.ends_with("/tests.rs");
        if !test_code {
            continue; // production flags (clap `env = "LHG_..."`) belong to their component
        }
        let code = blank(&text);
        for call in ["env::var(", "env::var_os("] {
            for (at, _) in code.match_indices(call) {
                let argument = text[at + call.len()..].trim_start();
                // A literal, or a helper's parameter (`env_usize("LHG_...", 5)`).
                if argument.starts_with("\"LHG_") || argument.starts_with("name)") {
                    let line = 1 + text[..at].matches('\n').count();
                    readers.push(format!("{}:{line}", file.display()));
                }
            }
        }
    }
    assert_none(
        &readers,
        "tests, benches or examples read LHG_* variables themselves; add a field to \
         longhorn_guard_testkit::TestEnv instead",
    );
}
