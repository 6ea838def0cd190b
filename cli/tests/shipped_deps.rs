//! What ships links no test support: the image's build (the Dockerfile's `cargo build`) leaves
//! out the cli's `demo` feature, and then neither `longhorn-guard` nor `longhorn-guard-agent`
//! depends on the testkit, the fake engine or the demo (checked with `cargo tree`, offline).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages that exist for tests and the demo only.
const TEST_SUPPORT: [&str; 3] = [
    "longhorn-guard-testkit",
    "fake-engine",
    "longhorn-guard-demo",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The normal (non-dev, non-build) dependency tree of `package`, one package name per line.
fn normal_deps(package: &str, extra: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

fn test_support_in(deps: &[String]) -> Vec<&String> {
    deps.iter()
        .filter(|name| TEST_SUPPORT.contains(&name.as_str()))
        .collect()
}

#[test]
fn the_image_builds_without_the_demo_feature() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let build = dockerfile
        .split("RUN ")
        .find(|step| step.contains("cargo build"))
        .expect("the Dockerfile builds with cargo");
    assert!(
        build.contains("--no-default-features") && !build.contains("--features"),
        "the image's cargo build must leave out the cli's default `demo` feature: {build}"
    );
}

#[test]
fn the_shipped_executables_link_no_test_support() {
    for package in ["longhorn-guard", "longhorn-guard-agent"] {
        let deps = normal_deps(package, &["--no-default-features"]);
        assert!(
            deps.iter().any(|name| name == package),
            "cargo tree listed nothing for {package}: {deps:?}"
        );
        assert_eq!(
            test_support_in(&deps),
            Vec::<&String>::new(),
            "{package} as the image builds it links test support"
        );
    }
}

#[test]
fn the_demo_feature_is_what_brings_the_test_support_in() {
    let deps = normal_deps("longhorn-guard", &["--features", "demo"]);
    assert_eq!(
        test_support_in(&deps).len(),
        TEST_SUPPORT.len(),
        "with `demo`, longhorn-guard links the demo and its test support: {deps:?}"
    );
}
