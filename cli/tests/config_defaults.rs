//! One config convention, pinned: every webhook and agent container the manifests render
//! (kustomize base, the sidecar overlay, the Helm chart in daemonset and sidecar mode) is parsed
//! with the component's own clap parser (`webhook::cli::WebhookArgs`, `agent::cli::AgentArgs`),
//! its config is built, and every flag the manifests set equals the flag's default, except the
//! flags listed below, which the manifests set deliberately. The flags' defaults are the
//! configs' defaults (`WebhookConfig::default()`, `AgentConfig::new`): the crates' own unit
//! tests `the_flags_defaults_are_the_config_default(s)` pin that half.
//!
//! Needs `LHG_TEST_HELM` and `LHG_TEST_KUBECTL` (`scripts/test.sh` exports both).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use k8s_openapi::serde::Deserialize;
use longhorn_guard_agent::cli::AgentArgs;
use longhorn_guard_webhook::cli::WebhookArgs;
use serde_json::Value;

/// Flags the webhook manifests set on purpose (no default, or not the default), and why.
const WEBHOOK_DELIBERATE: &[&str] = &[
    // the policy ConfigMap's mount
    "policy",
    // Longhorn's namespace (default: all namespaces)
    "namespace",
    // engine-truth checks on, with the client certificate mounted at /client-certs
    "agent-ca",
    // the guard's namespace, where the agents publish their nodes' verdict Leases
    "node-verdict-namespace",
];

/// In sidecar mode the agents are Longhorn's longhorn-manager pods: the webhook finds them there.
const WEBHOOK_SIDECAR_MODE: &[&str] = &["agent-namespace", "agent-selector"];

/// Flags the agent manifests set on purpose, and why.
const AGENT_DELIBERATE: &[&str] = &[
    // the node, from the downward API
    "node",
    // webhook<->agent mTLS
    "client-ca",
    // the node verdict's Lease in the guard's namespace (the Helm release's)
    "verdict-namespace",
    // the policy ConfigMap's mount (nodeProtection.thresholds)
    "policy-file",
];

#[derive(Parser)]
struct WebhookFlags {
    #[command(flatten)]
    args: WebhookArgs,
}

#[derive(Parser)]
struct AgentFlags {
    #[command(flatten)]
    args: AgentArgs,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rendered(mut cmd: Command, what: &str) -> Vec<Value> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).unwrap())
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomize(dir: &str) -> Vec<Value> {
    let mut cmd = Command::new(common::kubectl());
    cmd.arg("kustomize")
        .arg(repo().join("manifests").join(dir))
        .env("HOME", std::env::temp_dir());
    rendered(cmd, &format!("kubectl kustomize manifests/{dir}"))
}

fn helm_template(sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(common::helm());
    cmd.args(["template", "longhorn-guard"])
        .arg(repo().join("manifests/helm/longhorn-guard"))
        .args(["--namespace", "longhorn-guard"])
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", std::env::temp_dir());
    for s in sets {
        cmd.args(["--set", s]);
    }
    rendered(cmd, &format!("helm template {sets:?}"))
}

/// Which component a container runs, by its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Webhook,
    Agent,
}

/// (component, flags) of every guard container in `value`, also inside YAML held as ConfigMap
/// data (the chart's sidecar patch).
fn containers(value: &Value, out: &mut Vec<(Component, Vec<String>)>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get("containers") {
                for c in list {
                    let strings = |k: &str| -> Vec<String> {
                        c[k].as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|s| s.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    let (command, args) = (strings("command"), strings("args"));
                    if command.iter().any(|c| c.ends_with("/longhorn-guard-agent")) {
                        out.push((Component::Agent, args));
                    } else if args.first().map(String::as_str) == Some("webhook") {
                        out.push((Component::Webhook, args[1..].to_vec()));
                    } else if args.first().map(String::as_str) == Some("agent") {
                        out.push((Component::Agent, args[1..].to_vec()));
                    }
                }
            }
            for v in map.values() {
                containers(v, out);
            }
        }
        Value::Array(list) => list.iter().for_each(|v| containers(v, out)),
        Value::String(text) if text.contains("containers:") => {
            for doc in documents(text) {
                containers(&doc, out);
            }
        }
        _ => {}
    }
}

/// The flags of `args` that differ from their default or have none, other than `deliberate`.
fn undeclared_settings(cmd: &clap::Command, args: &[String], deliberate: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for a in args {
        let Some(flag) = a.strip_prefix("--") else {
            found.push(format!("{a}: not a --flag"));
            continue;
        };
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        if deliberate.contains(&name) {
            continue;
        }
        let Some(arg) = cmd.get_arguments().find(|x| x.get_long() == Some(name)) else {
            found.push(format!("--{name}: unknown flag"));
            continue;
        };
        match arg.get_default_values() {
            [default] if default.to_str() == Some(value) => {}
            [default] => found.push(format!(
                "--{name}={value} but the default is {}",
                default.to_string_lossy()
            )),
            _ => found.push(format!("--{name}={value} has no default")),
        }
    }
    found
}

/// Parses each container's flags with its component's parser, builds its config, and returns
/// every manifest setting that is neither a default nor declared deliberate.
fn check(what: &str, objs: &[Value], expect: &[Component], sidecar_mode: bool) -> Vec<String> {
    let mut found = Vec::new();
    for o in objs {
        containers(o, &mut found);
    }
    let mut kinds: Vec<_> = found.iter().map(|(c, _)| *c).collect();
    kinds.sort_by_key(|c| *c as u8);
    assert_eq!(kinds, expect, "{what}: the guard containers rendered");
    let mut problems = Vec::new();
    for (component, args) in found {
        let argv = std::iter::once("x".to_string()).chain(args.iter().cloned());
        let (cmd, deliberate) = match component {
            Component::Webhook => {
                let flags = WebhookFlags::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{what}: webhook flags {args:?}: {e}"));
                flags
                    .args
                    .config()
                    .unwrap_or_else(|e| panic!("{what}: webhook config: {e:#}"));
                let mut deliberate = WEBHOOK_DELIBERATE.to_vec();
                if sidecar_mode {
                    deliberate.extend(WEBHOOK_SIDECAR_MODE);
                }
                (WebhookFlags::command(), deliberate)
            }
            Component::Agent => {
                let flags = AgentFlags::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{what}: agent flags {args:?}: {e}"));
                flags
                    .args
                    .config()
                    .validate()
                    .unwrap_or_else(|e| panic!("{what}: agent config: {e}"));
                (AgentFlags::command(), AGENT_DELIBERATE.to_vec())
            }
        };
        problems.extend(
            undeclared_settings(&cmd, &args, &deliberate)
                .into_iter()
                .map(|p| format!("{what}, {component:?}: {p}")),
        );
    }
    problems
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn manifests_set_only_defaults_and_the_listed_flags() {
    use Component::{Agent, Webhook};
    let renderings = [
        (
            "kustomize base",
            kustomize("base"),
            vec![Webhook, Agent],
            false,
        ),
        (
            "kustomize overlays/sidecar",
            kustomize("overlays/sidecar"),
            vec![Webhook],
            true,
        ),
        (
            "kustomize overlays/sidecar-example",
            kustomize("overlays/sidecar-example"),
            vec![Agent],
            true,
        ),
        (
            "helm defaults",
            helm_template(&[]),
            vec![Webhook, Agent],
            false,
        ),
        (
            "helm agent.mode=sidecar",
            helm_template(&["agent.mode=sidecar"]),
            vec![Webhook, Agent],
            true,
        ),
    ];
    let mut problems = Vec::new();
    for (what, objs, expect, sidecar_mode) in &renderings {
        problems.extend(check(what, objs, expect, *sidecar_mode));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The check itself: a manifest setting a flag to something other than its default, or a
/// flag without default that is not listed, is reported.
#[test]
fn a_setting_that_is_not_the_default_is_reported() {
    let args: Vec<String> = [
        "--metrics-listen=0.0.0.0:9080",
        "--tls-cert=/certs/tls.crt",
        "--agent-address-pattern=x",
    ]
    .map(String::from)
    .to_vec();
    let problems = undeclared_settings(&WebhookFlags::command(), &args, WEBHOOK_DELIBERATE);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("--metrics-listen=0.0.0.0:9080 but the default is 0.0.0.0:9090"));
    assert!(problems[1].contains("--agent-address-pattern=x has no default"));
}
