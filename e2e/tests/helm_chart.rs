//! The Helm chart (`manifests/helm/longhorn-guard`) against the kustomize manifests it mirrors.
//!
//! | test | proves |
//! |---|---|
//! | `defaults_render_the_kustomize_base` | `helm template` with default values (+ `namespace.create`) = `kubectl kustomize manifests/base`, field by field |
//! | `cert_manager_renders_the_cert_manager_overlay` | `certs.provider=cert-manager` = `overlays/cert-manager` |
//! | `monitoring_renders_the_monitoring_overlay` | `monitoring.enabled=true` = `overlays/monitoring` (PrometheusRule and dashboard included) |
//! | `sidecar_mode_renders_the_sidecar_overlay_and_component` | `agent.mode=sidecar` = `overlays/sidecar`, and its patch applied by kubectl = `overlays/sidecar-example` |
//! | `values_reach_the_objects` | non-default values land where they should (and 1.20 gets the v1beta1 CronJob/PDB) |
//! | `schema_refuses_bad_values_naming_them` | `values.schema.json` refuses wrong values, each error naming the value |
//! | `helm_lint_strict_is_clean` | `helm lint --strict` passes for every variant |
//! | `chart_prometheus_rule_passes_the_promtool_tests` | the chart's PrometheusRule passes `promtool check rules` and the unit tests of `manifests/monitoring/rules/tests` |
//! | `notes_tell_how_to_check_it_works` | NOTES.txt names the doctor, the webhook's readiness and the first metrics, per mode |
//! | `comparison_reports_a_changed_field` | the comparison itself catches drift (so the tests above can fail) |
//!
//! Only Helm's own labels (`helm.sh/chart`, `app.kubernetes.io/{managed-by,instance,version}`)
//! are ignored. YAML documents held in ConfigMaps (the policy, the sidecar patch) are compared
//! parsed, so comments and layout may differ but no value may.
//!
//! helm v4.1.4 and kubectl v1.33.9 come from `LHG_TEST_HELM` / `LHG_TEST_KUBECTL`, which `scripts/test.sh`
//! exports after installing them (`ensure_helm_kubectl` in scripts/lib.sh); without them every
//! test here fails saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use longhorn_guard_testkit::test_env;
use serde::Deserialize;
use serde_json::{Value, json};

const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
/// ConfigMap keys whose value is a YAML document, compared parsed.
const YAML_DATA_KEYS: [&str; 2] = ["policy.yaml", "patch.yaml"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn chart() -> PathBuf {
    repo().join("manifests/helm/longhorn-guard")
}

fn helm() -> Command {
    let mut cmd = Command::new(test_env().helm().unwrap_or_else(|e| panic!("{e}")));
    // Keep helm away from any developer configuration, cache or cluster.
    let home = std::env::temp_dir().join(format!("lhg-helm-home-{}", std::process::id()));
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", "/dev/null")
        .stdin(Stdio::null());
    cmd
}

fn kubectl() -> Command {
    let mut cmd = Command::new(test_env().kubectl().unwrap_or_else(|e| panic!("{e}")));
    cmd.env("KUBECONFIG", "/dev/null").stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm <subcommand...> [longhorn-guard] <chart> --namespace longhorn-guard --set <each of sets>`
/// (the release name only for template and install).
fn helm_on_chart(subcommand: &[&str], sets: &[&str]) -> Command {
    let mut cmd = helm();
    cmd.args(subcommand);
    if matches!(subcommand.first(), Some(&"template" | &"install")) {
        cmd.arg("longhorn-guard");
    }
    cmd.arg(chart()).args(["--namespace", "longhorn-guard"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// `helm template` of the chart into namespace longhorn-guard with `--set` pairs.
fn helm_template(sets: &[&str]) -> Vec<Value> {
    let cmd = helm_on_chart(&["template"], sets);
    documents(&run(cmd, &format!("helm template {sets:?}")))
}

fn kustomize(dir: &str) -> Vec<Value> {
    let mut cmd = kubectl();
    cmd.arg("kustomize").arg(repo().join("manifests").join(dir));
    documents(&run(cmd, &format!("kubectl kustomize manifests/{dir}")))
}

fn key(o: &Value) -> String {
    format!(
        "{} {} {}/{}",
        o["apiVersion"].as_str().unwrap_or("?"),
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or("-"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Objects by key, Helm's labels removed, YAML held in ConfigMaps parsed, pod volumes sorted.
fn normalise(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for mut o in objs {
        if let Some(labels) = o["metadata"]
            .get_mut("labels")
            .and_then(Value::as_object_mut)
        {
            for l in HELM_LABELS {
                labels.remove(l);
            }
        }
        if o["kind"] == "ConfigMap"
            && let Some(data) = o.get_mut("data").and_then(Value::as_object_mut)
        {
            for k in YAML_DATA_KEYS {
                if let Some(Value::String(text)) = data.get(k) {
                    let parsed: Value = serde_yaml::from_str(text)
                        .unwrap_or_else(|e| panic!("ConfigMap data {k}: {e}"));
                    data.insert(k.to_owned(), parsed);
                }
            }
        }
        // Pod volumes are a set keyed by name; kubectl's and kustomize's strategic merges
        // order a patched list differently.
        if let Some(volumes) = o
            .pointer_mut("/spec/template/spec/volumes")
            .and_then(Value::as_array_mut)
        {
            volumes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        }
        let k = key(&o);
        assert!(out.insert(k.clone(), o).is_none(), "{k} rendered twice");
    }
    out
}

/// Every path where `a` and `b` differ, as `path: a != b`.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (x.get(k), y.get(k));
                let p = format!("{path}.{k}");
                match (va, vb) {
                    (Some(va), Some(vb)) => differences(va, vb, &p, out),
                    _ => out.push(format!(
                        "{p}: {} != {}",
                        short(va.unwrap_or(&Value::Null)),
                        short(vb.unwrap_or(&Value::Null))
                    )),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {} != {}", short(a), short(b))),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 160 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(160).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// Every difference between two renderings, `chart` on the left.
fn drift(chart: &BTreeMap<String, Value>, kustomize: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for k in kustomize.keys().filter(|k| !chart.contains_key(*k)) {
        out.push(format!("{k}: in kustomize, not in the chart"));
    }
    for k in chart.keys().filter(|k| !kustomize.contains_key(*k)) {
        out.push(format!("{k}: in the chart, not in kustomize"));
    }
    for (k, c) in chart {
        if let Some(z) = kustomize.get(k) {
            differences(c, z, k, &mut out);
        }
    }
    out
}

fn assert_same(chart: Vec<Value>, kustomize: Vec<Value>, what: &str) {
    let (chart, kustomize) = (normalise(chart), normalise(kustomize));
    assert!(!kustomize.is_empty(), "{what}: kustomize rendered nothing");
    let drift = drift(&chart, &kustomize);
    assert!(
        drift.is_empty(),
        "{what}: the chart (left) and kustomize (right) differ:\n  {}",
        drift.join("\n  ")
    );
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn defaults_render_the_kustomize_base() {
    // `helm install` needs the release namespace before it renders, so by default the chart
    // leaves the Namespace object out; with namespace.create it is the base's, labels included.
    let defaults = helm_template(&[]);
    assert!(
        !defaults.iter().any(|o| o["kind"] == "Namespace"),
        "a Namespace rendered by default: `helm install -n longhorn-guard` could not install it"
    );
    let chart = helm_template(&["namespace.create=true"]);
    assert_eq!(chart.len(), defaults.len() + 1);
    assert_same(
        chart,
        kustomize("base"),
        "defaults + namespace.create vs manifests/base",
    );
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn cert_manager_renders_the_cert_manager_overlay() {
    assert_same(
        helm_template(&["namespace.create=true", "certs.provider=cert-manager"]),
        kustomize("overlays/cert-manager"),
        "certs.provider=cert-manager vs manifests/overlays/cert-manager",
    );
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn monitoring_renders_the_monitoring_overlay() {
    let chart = helm_template(&["namespace.create=true", "monitoring.enabled=true"]);
    let kinds: Vec<_> = chart.iter().map(|o| o["kind"].clone()).collect();
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(kinds.contains(&json!(kind)), "no {kind} rendered");
    }
    assert_same(
        chart,
        kustomize("overlays/monitoring"),
        "monitoring.enabled=true vs manifests/overlays/monitoring",
    );
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn sidecar_mode_renders_the_sidecar_overlay_and_component() {
    let mut chart = helm_template(&["namespace.create=true", "agent.mode=sidecar"]);
    let at = chart
        .iter()
        .position(|o| {
            o["kind"] == "ConfigMap" && o["metadata"]["name"] == "longhorn-guard-sidecar-patch"
        })
        .expect("sidecar mode renders the ConfigMap longhorn-guard-sidecar-patch");
    let patch = chart.remove(at)["data"]["patch.yaml"]
        .as_str()
        .expect("patch.yaml")
        .to_owned();
    assert_same(
        chart,
        kustomize("overlays/sidecar"),
        "agent.mode=sidecar vs manifests/overlays/sidecar",
    );

    // The patch, applied the way NOTES.txt tells the user (a strategic merge patch by
    // kubectl), to the stand-in longhorn-manager DaemonSet = the kustomize Component's result.
    let dir = std::env::temp_dir().join(format!("lhg-helm-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let patch_file = dir.join("patch.yaml");
    std::fs::write(&patch_file, &patch).unwrap();
    let mut cmd = kubectl();
    cmd.args(["patch", "--local", "--type=strategic", "-o", "json", "-f"])
        .arg(repo().join("manifests/overlays/sidecar-example/longhorn-manager.yaml"))
        .arg("--patch-file")
        .arg(&patch_file);
    let patched = run(cmd, "kubectl patch --local longhorn-manager");
    std::fs::remove_dir_all(&dir).ok();
    let patched: Value = serde_json::from_str(&patched).unwrap();
    assert_same(
        vec![patched],
        kustomize("overlays/sidecar-example"),
        "the chart's sidecar patch applied by kubectl vs manifests/overlays/sidecar-example",
    );
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn values_reach_the_objects() {
    let objs = helm_template(&[
        "image.repository=registry.example/guard",
        "image.tag=9.9.9",
        "webhook.failurePolicy=Fail",
        "webhook.replicas=3",
        "webhook.resources.limits.memory=512Mi",
        "webhook.nodeSelector.disktype=ssd",
        "global.tolerations[0].key=storage",
        "global.tolerations[0].operator=Exists",
        "policy.mode=warn-only",
        "policy.throttle.maxInFlightPerVolume=2",
        "policy.throttle.clusterRate.perMinute=30",
        "policy.exemptions.users[0]=admin",
        "longhornNamespace=storage",
        "certs.rotateSchedule=0 4 * * *",
    ]);
    let deploy = find(&objs, "Deployment", "longhorn-guard-webhook");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example/guard:9.9.9"
    );
    assert_eq!(
        pod["containers"][0]["resources"]["limits"]["memory"],
        "512Mi"
    );
    assert_eq!(pod["nodeSelector"], json!({"disktype": "ssd"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "storage", "operator": "Exists"}])
    );
    assert!(
        pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--namespace=storage"))
    );
    let agent = find(&objs, "DaemonSet", "longhorn-guard-agent");
    assert_eq!(
        agent["spec"]["template"]["spec"]["tolerations"],
        json!([{"operator": "Exists"}, {"key": "storage", "operator": "Exists"}]),
        "the agent keeps its own toleration and gets the global one"
    );
    let vwc = find(&objs, "ValidatingWebhookConfiguration", "longhorn-guard");
    assert_eq!(vwc["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        vwc["webhooks"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "storage"
    );
    assert_eq!(
        find(&objs, "Role", "longhorn-guard-webhook")["metadata"]["namespace"],
        "storage"
    );
    let cron = find(&objs, "CronJob", "longhorn-guard-certs-rotate");
    assert_eq!(cron["spec"]["schedule"], "0 4 * * *");
    let policy: Value = serde_yaml::from_str(
        find(&objs, "ConfigMap", "longhorn-guard-policy")["data"]["policy.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        policy,
        json!({"mode": "warn-only", "onDeadline": "open", "deadlineMs": 3000,
               "indexStalenessMs": 30000, "exemptions": {"users": ["admin"]},
               "throttle": {"maxInFlightPerVolume": 2, "clusterRate": {"perMinute": 30}}})
    );

    // The local API server is 1.20: no batch/v1 CronJob, no policy/v1 PDB there.
    let cmd = helm_on_chart(&["template", "--kube-version", "1.20.15"], &[]);
    let old = documents(&run(cmd, "helm template --kube-version 1.20.15"));
    assert_eq!(
        find(&old, "CronJob", "longhorn-guard-certs-rotate")["apiVersion"],
        "batch/v1beta1"
    );
    assert_eq!(
        find(&old, "PodDisruptionBudget", "longhorn-guard-webhook")["apiVersion"],
        "policy/v1beta1"
    );
}

/// One wrong value and the text its error must contain (the value's path in values.yaml).
const BAD_VALUES: &[(&str, &str)] = &[
    (
        "webhook.failurePolicy=Sometimes",
        "at '/webhook/failurePolicy'",
    ),
    ("webhook.replicas=0", "at '/webhook/replicas'"),
    ("webhook.timeoutSeconds=31", "at '/webhook/timeoutSeconds'"),
    ("agent.mode=everywhere", "at '/agent/mode'"),
    ("certs.provider=vault", "at '/certs/provider'"),
    ("certs.rotateSchedule=daily", "at '/certs/rotateSchedule'"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    ("image.repository=", "at '/image/repository'"),
    ("policy.mode=enforcing", "at '/policy/mode'"),
    ("policy.onDeadline=maybe", "at '/policy/onDeadline'"),
    ("policy.deadlineMs=-1", "at '/policy/deadlineMs'"),
    ("policy.engineCheck=strict", "at '/policy/engineCheck'"),
    (
        "policy.throttle.recurringJobs.caps=allow",
        "at '/policy/throttle/recurringJobs/caps'",
    ),
    (
        "policy.throttle.warnAtPercent=150",
        "at '/policy/throttle/warnAtPercent'",
    ),
    (
        "policy.throttle.clusterRate.perMinut=5",
        "'perMinut' not allowed",
    ),
    ("policy.deadlinems=3000", "'deadlinems' not allowed"),
    (
        "policy.exemptions.serviceAccounts[0]=ci-bot",
        "at '/policy/exemptions/serviceAccounts/0'",
    ),
    ("webhook.tolerations=none", "at '/webhook/tolerations'"),
    ("agent.nodeSelector.disk=1", "at '/agent/nodeSelector/disk'"),
    (
        "longhornNamespace=Longhorn_System",
        "at '/longhornNamespace'",
    ),
    ("monitoring.enabled=yes", "at '/monitoring/enabled'"),
    (
        "monitoring.podMonitor.interval=often",
        "at '/monitoring/podMonitor/interval'",
    ),
    (
        "webhook.resources.limits.memory=lots",
        "at '/webhook/resources/limits/memory'",
    ),
];

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn schema_refuses_bad_values_naming_them() {
    let mut problems = Vec::new();
    for (set, named) in BAD_VALUES {
        // --set parses types as users' --set does (--set-string would hide type errors).
        let out = helm_on_chart(&["template"], &[set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            problems.push(format!("{set}: accepted"));
        } else if !err.contains("values don't meet the specifications of the schema") {
            problems.push(format!("{set}: refused, but not by the schema: {err}"));
        } else if !err.contains(named) {
            problems.push(format!("{set}: the error does not name {named}: {err}"));
        }
    }
    assert!(BAD_VALUES.len() >= 10);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn helm_lint_strict_is_clean() {
    for sets in [
        &[][..],
        &["certs.provider=cert-manager"][..],
        &["monitoring.enabled=true"][..],
        &["agent.mode=sidecar", "monitoring.enabled=true"][..],
    ] {
        let cmd = helm_on_chart(&["lint", "--strict"], sets);
        let out = run(cmd, &format!("helm lint --strict {sets:?}"));
        assert!(
            out.contains("0 chart(s) failed"),
            "helm lint {sets:?}:\n{out}"
        );
    }
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn chart_prometheus_rule_passes_the_promtool_tests() {
    let objs = helm_template(&["namespace.create=true", "monitoring.enabled=true"]);
    let rule = find(&objs, "PrometheusRule", "longhorn-guard");
    let groups = json!({"groups": rule["spec"]["groups"]});
    assert!(
        groups["groups"].as_array().is_some_and(|g| !g.is_empty()),
        "the chart's PrometheusRule has no groups"
    );
    // The chart's rules where the unit tests expect the rule file: <dir>/longhorn-guard.rules.yaml
    // next to <dir>/tests/*.yaml (`rule_files: [../longhorn-guard.rules.yaml]`).
    let dir = std::env::temp_dir().join(format!("lhg-helm-promtool-{}", std::process::id()));
    let tests_dir = dir.join("tests");
    std::fs::create_dir_all(&tests_dir).unwrap();
    std::fs::write(
        dir.join("longhorn-guard.rules.yaml"),
        serde_yaml::to_string(&groups).unwrap(),
    )
    .unwrap();
    let mut tests = Vec::new();
    for entry in std::fs::read_dir(repo().join("manifests/monitoring/rules/tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_owned();
            std::fs::copy(&path, tests_dir.join(&name)).unwrap();
            tests.push(name);
        }
    }
    assert!(!tests.is_empty(), "no promtool unit tests found");
    let promtool = ["promtool", "/usr/bin/promtool"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    let mut check = Command::new(promtool);
    check
        .args(["check", "rules", "longhorn-guard.rules.yaml"])
        .current_dir(&dir);
    run(check, "promtool check rules (chart)");
    let mut test = Command::new(promtool);
    test.args(["test", "rules"])
        .args(&tests)
        .current_dir(&tests_dir);
    let out = run(test, "promtool test rules (chart)");
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.contains("SUCCESS"), "promtool test rules:\n{out}");
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn comparison_reports_a_changed_field() {
    let base = kustomize("base");
    let mut changed = base.clone();
    let deploy = changed
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    deploy["spec"]["template"]["spec"]["containers"][0]["args"][1] = json!("--listen=0.0.0.0:9443");
    let drift = drift(&normalise(changed), &normalise(base));
    assert_eq!(
        drift,
        vec![
            "apps/v1 Deployment longhorn-guard/longhorn-guard-webhook.spec.template.spec.containers[0].args[1]: \
             \"--listen=0.0.0.0:9443\" != \"--listen=0.0.0.0:8443\""
                .to_owned()
        ]
    );
}

#[test]
#[ignore = "needs helm and kubectl: bash scripts/test.sh"]
fn notes_tell_how_to_check_it_works() {
    for (sets, wanted) in [
        (
            &[][..],
            &[
                "kubectl longhorn-guard doctor -n longhorn-system",
                "rollout status deployment/longhorn-guard-webhook",
                "wait --for=condition=complete job/longhorn-guard-certs-bootstrap",
                "rollout status daemonset/longhorn-guard-agent",
                "longhorn_guard_webhook_(reviews_total|index_trusted)",
                "failurePolicy is Ignore",
            ][..],
        ),
        (
            &[
                "agent.mode=sidecar",
                "certs.provider=cert-manager",
                "webhook.failurePolicy=Fail",
            ][..],
            &[
                "patch daemonset longhorn-manager --type strategic",
                "configmap longhorn-guard-sidecar-patch",
                "wait --for=condition=Ready certificate --all",
                "failurePolicy is Fail",
            ][..],
        ),
    ] {
        let cmd = helm_on_chart(&["install", "--dry-run=client"], sets);
        let out = run(cmd, &format!("helm install --dry-run=client {sets:?}"));
        let notes = out
            .split_once("NOTES:")
            .map(|(_, n)| n)
            .unwrap_or_else(|| panic!("helm install --dry-run {sets:?} printed no NOTES:\n{out}"));
        for w in wanted {
            assert!(notes.contains(w), "NOTES for {sets:?} lack {w:?}:\n{notes}");
        }
    }
}
