//! The Kubernetes manifests (`manifests/`): every kustomization renders; what the local v1.20
//! API server knows is checked by a server-side dry-run apply; what it does not know is
//! checked against its schema here:
//!
//! | object | checked how |
//! |---|---|
//! | Namespace-scoped core/apps/batch v1/rbac/admissionregistration objects | `kubectl apply --dry-run=server` (namespaces rewritten to the test's own) |
//! | PodDisruptionBudget `policy/v1` | dry-run as `policy/v1beta1` (same fields for what we use) + `minAvailable`/`selector` present |
//! | CronJob `batch/v1` | dry-run as `batch/v1beta1` (same fields) |
//! | cert-manager `Issuer`/`Certificate`, monitoring.coreos.com kinds | hand-written checks: required fields and known `spec` fields |
//!
//! RBAC: the rendered Roles/ClusterRoles/bindings are applied for real (rewritten into the
//! test's namespaces and names), checked with SubjectAccessReviews, and a `bootstrap` run as
//! the certs ServiceAccount proves its permissions are sufficient.

#![allow(clippy::unwrap_used, clippy::too_many_arguments)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::serde::Deserialize;
use kube::Api;
use kube::api::PostParams;
use longhorn_guard_testkit::TestCluster;
use serde_json::{Value, json};

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// `kubectl kustomize <dir>` as JSON objects.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(manifests_dir().join(dir))
        .output()
        .expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_kustomization_renders_with_the_expected_objects() {
    let base = kustomize("base");
    let kinds: Vec<_> = base.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
        "Job",
        "CronJob",
        "DaemonSet",
    ] {
        assert!(kinds.contains(&k), "base lacks {k}");
    }
    // Container args = the CLI flags.
    let webhook = find(&base, "Deployment", "longhorn-guard-webhook");
    assert_eq!(webhook["spec"]["replicas"], 2);
    let c = &webhook["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!([
            "webhook",
            "--listen=0.0.0.0:8443",
            "--metrics-listen=0.0.0.0:9090",
            "--tls-cert=/certs/tls.crt",
            "--tls-key=/certs/tls.key",
            "--policy=/etc/longhorn-guard/policy.yaml",
            "--namespace=longhorn-system",
            "--agent-ca=/client-certs/ca.crt",
            "--agent-client-cert=/client-certs/tls.crt",
            "--agent-client-key=/client-certs/tls.key",
            "--agent-server-name=longhorn-guard-agent.longhorn-guard.svc",
            "--agent-namespace=longhorn-guard",
            "--agent-selector=app.kubernetes.io/name=longhorn-guard,app.kubernetes.io/component=agent",
            "--agent-port=9443",
            "--node-verdict-namespace=longhorn-guard"
        ])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let agent = find(&base, "DaemonSet", "longhorn-guard-agent");
    let spec = &agent["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(
        spec["containers"][0]["command"],
        json!(["/usr/local/bin/longhorn-guard-agent"])
    );
    assert_eq!(spec["containers"][0]["args"][0], "--node=$(NODE_NAME)");
    assert_eq!(
        spec["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(spec["volumes"].as_array().unwrap().iter().any(|v| {
        v["secret"]["secretName"] == "longhorn-grpc-tls" && v["secret"]["optional"] == true
    }));
    // The webhook registration.
    let vwc = find(&base, "ValidatingWebhookConfiguration", "longhorn-guard");
    let wh = &vwc["webhooks"][0];
    assert_eq!(
        wh["rules"],
        json!([{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"],
        "resources": ["backups"], "operations": ["CREATE"], "scope": "Namespaced"}])
    );
    // Events about refused Backups are written for real requests only.
    assert_eq!(wh["sideEffects"], "NoneOnDryRun");
    assert_eq!(wh["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(wh["timeoutSeconds"], 5);
    assert_eq!(wh["matchPolicy"], "Equivalent");
    assert_eq!(wh["failurePolicy"], "Ignore");
    assert_eq!(
        wh["clientConfig"]["service"]["name"],
        "longhorn-guard-webhook"
    );

    // Sidecar: the agent joins longhorn-manager's pod, which shares its process namespace.
    let sidecar = kustomize("overlays/sidecar-example");
    let ds = find(&sidecar, "DaemonSet", "longhorn-manager");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["shareProcessNamespace"], true);
    let names: Vec<_> = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["longhorn-guard-agent", "longhorn-manager"]);

    // cert-manager: no certs Job/CronJob/RBAC, CA injection instead.
    let cm = kustomize("overlays/cert-manager");
    assert!(
        !cm.iter()
            .any(|o| o["kind"] == "Job" || o["kind"] == "CronJob")
    );
    assert!(
        !cm.iter()
            .any(|o| o["metadata"]["name"] == "longhorn-guard-certs")
    );
    assert_eq!(
        find(&cm, "ValidatingWebhookConfiguration", "longhorn-guard")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "longhorn-guard/longhorn-guard-webhook"
    );
    for o in cm.iter().filter(|o| {
        o["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("cert-manager.io/")
    }) {
        check_cert_manager(o);
    }

    // Monitoring: the base plus the colleague's objects, pointed at the guard's namespace.
    let mon = kustomize("overlays/monitoring");
    let sm = find(&mon, "ServiceMonitor", "longhorn-guard-webhook");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["longhorn-guard"])
    );
    for o in mon.iter().filter(|o| {
        o["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("monitoring.coreos.com/")
    }) {
        check_monitoring(o);
    }
}

/// Allowed keys of `spec`, and required ones, for the cert-manager kinds we use (v1 schema).
fn check_cert_manager(o: &Value) {
    let spec = o["spec"]
        .as_object()
        .unwrap_or_else(|| panic!("no spec: {o}"));
    let name = &o["metadata"]["name"];
    match o["kind"].as_str().unwrap() {
        "Issuer" => {
            let kinds: Vec<_> = spec
                .keys()
                .filter(|k| ["selfSigned", "ca", "acme", "vault", "venafi"].contains(&k.as_str()))
                .collect();
            assert_eq!(
                kinds.len(),
                1,
                "Issuer {name}: exactly one issuer type: {spec:?}"
            );
            if let Some(ca) = spec.get("ca") {
                assert!(ca["secretName"].is_string(), "Issuer {name}: ca.secretName");
            }
        }
        "Certificate" => {
            let known = [
                "secretName",
                "issuerRef",
                "commonName",
                "dnsNames",
                "duration",
                "renewBefore",
                "usages",
                "privateKey",
                "isCA",
                "ipAddresses",
                "uris",
                "subject",
                "secretTemplate",
                "emailAddresses",
                "keystores",
                "revisionHistoryLimit",
            ];
            for k in spec.keys() {
                assert!(
                    known.contains(&k.as_str()),
                    "Certificate {name}: unknown spec.{k}"
                );
            }
            assert!(
                spec["secretName"].is_string(),
                "Certificate {name}: secretName"
            );
            assert!(
                spec["issuerRef"]["name"].is_string(),
                "Certificate {name}: issuerRef.name"
            );
            assert!(spec.contains_key("commonName") || spec.contains_key("dnsNames"));
            for d in ["duration", "renewBefore"] {
                if let Some(v) = spec.get(d) {
                    assert!(
                        v.as_str().unwrap().ends_with('h'),
                        "Certificate {name}: {d}"
                    );
                }
            }
            let usages = [
                "digital signature",
                "key encipherment",
                "server auth",
                "client auth",
                "cert sign",
            ];
            for u in spec
                .get("usages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                assert!(
                    usages.contains(&u.as_str().unwrap()),
                    "Certificate {name}: usage {u}"
                );
            }
        }
        k => panic!("unexpected cert-manager kind {k}"),
    }
}

fn check_monitoring(o: &Value) {
    let name = &o["metadata"]["name"];
    let spec = &o["spec"];
    match o["kind"].as_str().unwrap() {
        "ServiceMonitor" => {
            assert!(
                spec["selector"].is_object(),
                "ServiceMonitor {name}: selector"
            );
            for e in spec["endpoints"].as_array().unwrap() {
                assert!(
                    e["port"].is_string() || e["targetPort"].is_number(),
                    "ServiceMonitor {name}"
                );
            }
        }
        "PodMonitor" => {
            assert!(spec["selector"].is_object(), "PodMonitor {name}: selector");
            assert!(!spec["podMetricsEndpoints"].as_array().unwrap().is_empty());
        }
        "PrometheusRule" => {
            for g in spec["groups"].as_array().unwrap() {
                assert!(g["name"].is_string());
                for r in g["rules"].as_array().unwrap() {
                    assert!(
                        r["expr"].is_string(),
                        "PrometheusRule {name}: rule without expr"
                    );
                    assert!(
                        r["alert"].is_string() != r["record"].is_string(),
                        "alert xor record"
                    );
                }
            }
        }
        k => panic!("unexpected monitoring kind {k}"),
    }
}

/// Rewrites the rendered objects into the test's namespaces (`longhorn-guard` → `guard_ns`,
/// `longhorn-system` → `longhorn_ns`) and suffixes cluster-scoped names, so parallel tests
/// never collide. The Namespace object is dropped (the test namespaces exist).
fn rewrite(objs: Vec<Value>, guard_ns: &str, longhorn_ns: &str, suffix: &str) -> Vec<Value> {
    let ns_map = |v: &mut Value| {
        if v == "longhorn-guard" {
            *v = json!(guard_ns);
        } else if v == "longhorn-system" {
            *v = json!(longhorn_ns);
        }
    };
    objs.into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .map(|mut o| {
            ns_map(&mut o["metadata"]["namespace"]);
            let kind = o["kind"].as_str().unwrap().to_string();
            if [
                "ClusterRole",
                "ClusterRoleBinding",
                "ValidatingWebhookConfiguration",
            ]
            .contains(&kind.as_str())
            {
                let n = format!("{}-{suffix}", o["metadata"]["name"].as_str().unwrap());
                o["metadata"]["name"] = json!(n);
            }
            if kind == "ClusterRoleBinding" {
                let n = format!("{}-{suffix}", o["roleRef"]["name"].as_str().unwrap());
                o["roleRef"]["name"] = json!(n);
            }
            if kind == "ClusterRole" {
                for rule in o["rules"].as_array_mut().unwrap() {
                    if let Some(names) = rule["resourceNames"].as_array_mut() {
                        for n in names {
                            *n = json!(format!("{}-{suffix}", n.as_str().unwrap()));
                        }
                    }
                }
            }
            if let Some(subjects) = o["subjects"].as_array_mut() {
                for s in subjects {
                    ns_map(&mut s["namespace"]);
                }
            }
            if let Some(whs) = o["webhooks"].as_array_mut() {
                for w in whs {
                    ns_map(&mut w["clientConfig"]["service"]["namespace"]);
                }
            }
            // Objects 1.20 does not serve: the older group version with the same fields.
            if o["apiVersion"] == "policy/v1" {
                assert!(o["spec"]["minAvailable"].is_number() && o["spec"]["selector"].is_object());
                o["apiVersion"] = json!("policy/v1beta1");
            }
            if kind == "CronJob" && o["apiVersion"] == "batch/v1" {
                o["apiVersion"] = json!("batch/v1beta1");
            }
            o
        })
        .collect()
}

fn kubectl_apply(cluster: &TestCluster, objs: &[Value], dry_run: bool) {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["apply", "-f", "-"]);
    if dry_run {
        cmd.arg("--dry-run=server");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objs});
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), list.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply (dry-run {dry_run}): {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn is_known_to_1_20(o: &Value) -> bool {
    let api = o["apiVersion"].as_str().unwrap();
    !(api.starts_with("cert-manager.io/") || api.starts_with("monitoring.coreos.com/"))
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn server_side_dry_run_of_every_rendering() {
    let cluster = TestCluster::connect().await.unwrap();
    let guard = cluster.namespace("lhg-guard").await.unwrap();
    let longhorn = cluster.namespace("lhg-longhorn").await.unwrap();
    for dir in [
        "base",
        "overlays/cert-manager",
        "overlays/monitoring",
        "overlays/sidecar",
        "overlays/sidecar-example",
    ] {
        let objs: Vec<_> = rewrite(kustomize(dir), &guard, &longhorn, &guard)
            .into_iter()
            .filter(is_known_to_1_20)
            .map(|mut o| {
                // The local API server runs without --allow-privileged; the stand-in
                // longhorn-manager container (Longhorn's, not ours) is privileged.
                if o["metadata"]["name"] == "longhorn-manager" {
                    for c in o["spec"]["template"]["spec"]["containers"]
                        .as_array_mut()
                        .unwrap()
                    {
                        if let Some(sc) = c["securityContext"].as_object_mut() {
                            sc.remove("privileged");
                        }
                    }
                }
                o
            })
            .collect();
        assert!(!objs.is_empty(), "{dir}");
        kubectl_apply(&cluster, &objs, true);
    }
}

async fn can(
    cluster: &TestCluster,
    ns: &str,
    sa: &str,
    verb: &str,
    group: &str,
    resource: &str,
    in_ns: Option<&str>,
    name: Option<&str>,
) -> bool {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{ns}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: in_ns.map(Into::into),
                name: name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(cluster.client());
    let r = api.create(&PostParams::default(), &sar).await.unwrap();
    r.status.unwrap().allowed
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn rbac_grants_exactly_what_each_component_needs() {
    let cluster = TestCluster::connect().await.unwrap();
    let guard = cluster.namespace("lhg-rbac-guard").await.unwrap();
    let longhorn = cluster.namespace("lhg-rbac-longhorn").await.unwrap();
    let elsewhere = cluster.namespace("lhg-rbac-other").await.unwrap();
    let rbac: Vec<_> = rewrite(kustomize("base"), &guard, &longhorn, &guard)
        .into_iter()
        .filter(|o| {
            let k = o["kind"].as_str().unwrap();
            k.contains("Role") || k == "ServiceAccount"
        })
        .collect();
    kubectl_apply(&cluster, &rbac, false);
    let (g, l, e) = (
        Some(guard.as_str()),
        Some(longhorn.as_str()),
        Some(elsewhere.as_str()),
    );

    // Events on the Volume of a refused Backup: create/patch in Longhorn's namespace only.
    for (verb, allowed) in [("create", true), ("patch", true), ("delete", false)] {
        for (ns, here) in [(l, true), (e, false)] {
            assert_eq!(
                can(
                    &cluster,
                    &guard,
                    "longhorn-guard-webhook",
                    verb,
                    "events.k8s.io",
                    "events",
                    ns,
                    None
                )
                .await,
                allowed && here,
                "webhook {verb} events in {ns:?}"
            );
        }
    }
    for verb in ["get", "list", "watch"] {
        for r in [
            "backups",
            "snapshots",
            "volumes",
            "engines",
            "backuptargets",
            "instancemanagers",
        ] {
            assert!(
                can(
                    &cluster,
                    &guard,
                    "longhorn-guard-webhook",
                    verb,
                    "longhorn.io",
                    r,
                    l,
                    None
                )
                .await,
                "webhook {verb} {r}"
            );
            assert!(
                !can(
                    &cluster,
                    &guard,
                    "longhorn-guard-webhook",
                    verb,
                    "longhorn.io",
                    r,
                    e,
                    None
                )
                .await,
                "webhook {verb} {r} elsewhere"
            );
        }
        for r in ["engines", "instancemanagers"] {
            assert!(
                can(
                    &cluster,
                    &guard,
                    "longhorn-guard-agent",
                    verb,
                    "longhorn.io",
                    r,
                    l,
                    None
                )
                .await,
                "agent {verb} {r}"
            );
        }
        assert!(
            !can(
                &cluster,
                &guard,
                "longhorn-guard-agent",
                verb,
                "longhorn.io",
                "backups",
                l,
                None
            )
            .await
        );
    }
    for sa in [
        "longhorn-guard-webhook",
        "longhorn-guard-agent",
        "longhorn-guard-certs",
    ] {
        for verb in ["create", "update", "patch", "delete"] {
            for r in ["backups", "snapshots", "volumes", "engines"] {
                assert!(
                    !can(&cluster, &guard, sa, verb, "longhorn.io", r, l, None).await,
                    "{sa} {verb} {r}"
                );
            }
        }
        assert!(
            !can(
                &cluster,
                &guard,
                sa,
                "get",
                "",
                "secrets",
                e,
                Some("longhorn-guard-ca")
            )
            .await,
            "{sa} secrets elsewhere"
        );
        assert!(
            !can(&cluster, &guard, sa, "list", "", "secrets", g, None).await,
            "{sa} list secrets"
        );
    }
    let certs = "longhorn-guard-certs";
    assert!(can(&cluster, &guard, certs, "create", "", "secrets", g, None).await);
    for verb in ["get", "update"] {
        assert!(
            can(
                &cluster,
                &guard,
                certs,
                verb,
                "",
                "secrets",
                g,
                Some("longhorn-guard-webhook-tls")
            )
            .await
        );
        assert!(
            !can(
                &cluster,
                &guard,
                certs,
                verb,
                "",
                "secrets",
                g,
                Some("someone-elses")
            )
            .await
        );
    }
    assert!(!can(&cluster, &guard, certs, "create", "", "secrets", e, None).await);
    assert!(
        !can(
            &cluster,
            &guard,
            "longhorn-guard-webhook",
            "get",
            "",
            "secrets",
            g,
            Some("longhorn-guard-ca")
        )
        .await
    );
    let vwc = format!("longhorn-guard-{guard}");
    for verb in ["get", "patch"] {
        assert!(
            can(
                &cluster,
                &guard,
                certs,
                verb,
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                None,
                Some(&vwc)
            )
            .await
        );
        assert!(
            !can(
                &cluster,
                &guard,
                certs,
                verb,
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                None,
                Some("longhorn-webhook-validator")
            )
            .await
        );
    }

    // The certs ServiceAccount's permissions are enough for a real bootstrap.
    let vwc_obj: Vec<_> = rewrite(kustomize("base"), &guard, &longhorn, &guard)
        .into_iter()
        .filter(|o| o["kind"] == "ValidatingWebhookConfiguration")
        .map(|mut o| {
            // Never judge anything: select only a label no namespace carries.
            o["webhooks"][0]["namespaceSelector"] =
                json!({"matchLabels": {"longhorn-guard.io/none": guard}});
            o
        })
        .collect();
    kubectl_apply(&cluster, &vwc_obj, false);
    let as_certs = cluster
        .client_as(
            &format!("system:serviceaccount:{guard}:{certs}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{guard}"),
                "system:authenticated",
            ],
        )
        .unwrap();
    let opts = longhorn_guard_certs::Options {
        namespace: guard.clone(),
        validating_webhook_configuration: vwc.clone(),
        mutating_webhook_configuration: Some(vwc.clone()),
        ..Default::default()
    };
    let report = longhorn_guard_certs::bootstrap(as_certs.clone(), &opts)
        .await
        .unwrap();
    assert!(
        report
            .actions
            .iter()
            .any(|a| matches!(a, longhorn_guard_certs::Action::CaBundlePatched { .. })),
        "{:#?}",
        report.actions
    );
    let again = longhorn_guard_certs::rotate(as_certs, &opts).await.unwrap();
    assert!(!again.changed(), "{:#?}", again.actions);
}

/// An object of the rendered manifests a runbook command can name: the workloads' pods
/// (kind `Pod`, from their templates), and every object itself.
struct Target {
    kind: String,
    namespace: Option<String>,
    name: String,
    labels: serde_json::Map<String, Value>,
    containers: Vec<String>,
}

fn targets(objs: &[Value]) -> Vec<Target> {
    let mut out = Vec::new();
    for o in objs {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        let namespace = o["metadata"]["namespace"].as_str().map(str::to_string);
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let template = match kind.as_str() {
            "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => Some(&o["spec"]["template"]),
            "CronJob" => Some(&o["spec"]["jobTemplate"]["spec"]["template"]),
            _ => None,
        };
        if let Some(t) = template {
            out.push(Target {
                kind: "Pod".into(),
                namespace: namespace.clone(),
                name: format!("{name}-<generated>"),
                labels: t["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                containers: t["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect(),
            });
        }
        out.push(Target {
            kind,
            namespace,
            name,
            labels: o["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            containers: Vec::new(),
        });
    }
    out
}

/// The kinds a kubectl resource name stands for (endpoints carry their Service's labels).
fn kinds_of(resource: &str) -> Vec<&'static str> {
    let kind = match resource.split('.').next().unwrap_or_default() {
        "po" | "pod" | "pods" => "Pod",
        "ep" | "endpoints" | "svc" | "service" | "services" => "Service",
        "deploy" | "deployment" | "deployments" => "Deployment",
        "ds" | "daemonset" | "daemonsets" => "DaemonSet",
        "cj" | "cronjob" | "cronjobs" => "CronJob",
        "job" | "jobs" => "Job",
        "cm" | "configmap" | "configmaps" => "ConfigMap",
        "secret" | "secrets" => "Secret",
        "servicemonitor" | "servicemonitors" => "ServiceMonitor",
        "podmonitor" | "podmonitors" => "PodMonitor",
        "prometheusrule" | "prometheusrules" => "PrometheusRule",
        _ => return Vec::new(),
    };
    vec![kind]
}

/// `key=value`, `key!=value` and `key` terms, all of which must hold.
fn selector_matches(selector: &str, labels: &serde_json::Map<String, Value>) -> bool {
    selector.split(',').all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels.get(k).and_then(Value::as_str) == Some(v.trim_start_matches('='))
        } else {
            labels.contains_key(term)
        }
    })
}

/// The kubectl commands of a Markdown file: those in fenced code blocks (continuation lines
/// joined, one command per `kubectl` in a pipeline, a `$( )` or a loop) and in inline code
/// spans, as (block number, command words with quotes removed and `$VAR`s of the file's
/// `VAR=value` lines substituted).
fn kubectl_commands(markdown: &str) -> Vec<(usize, Vec<String>)> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    let (mut block, mut in_fence, mut pending) = (0, false, String::new());
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            block += 1;
            continue;
        }
        if in_fence {
            pending.push_str(line.trim_end_matches('\\'));
            pending.push(' ');
            if !line.ends_with('\\') {
                lines.push((block, std::mem::take(&mut pending)));
            }
        } else {
            block += usize::from(line.trim().is_empty());
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("kubectl ") {
                    lines.push((block, span.to_string()));
                }
            }
        }
    }
    let vars: Vec<(String, String)> = lines
        .iter()
        .filter_map(|(_, l)| {
            let (k, v) = l.trim().split_once('=')?;
            (k.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !v.contains(' '))
                .then(|| (format!("${k}"), v.trim().to_string()))
        })
        .collect();
    let mut out = Vec::new();
    for (block, line) in lines {
        let mut line = line.replace(['\'', '"'], "");
        for (k, v) in &vars {
            line = line.replace(k.as_str(), v);
        }
        for part in line.split("kubectl ").skip(1) {
            let end = part.find(['|', ';', ')']).unwrap_or(part.len());
            let words = part[..end].split_whitespace().map(str::to_string).collect();
            out.push((block, words));
        }
    }
    out
}

/// Checks every kubectl command of `markdown` that names objects of the rendered manifests:
/// its `-n` must be the namespace they are deployed in. Returns (commands checked, errors).
fn check_commands(markdown: &str, objs: &[Value]) -> (usize, Vec<String>) {
    const WITH_VALUE: &[&str] = &[
        "-n",
        "--namespace",
        "-l",
        "--selector",
        "-o",
        "-c",
        "--container",
        "--field-selector",
        "--sort-by",
    ];
    let targets = targets(objs);
    let (mut checked, mut errors) = (0, Vec::new());
    // Pods found by the last command of each block (a `--raw` pod proxy path names them).
    let mut pod_namespace: Option<(usize, String)> = None;
    for (block, words) in kubectl_commands(markdown) {
        let shown = format!("kubectl {}", words.join(" "));
        let (mut namespace, mut selector, mut container, mut positional) =
            (None, None, None, Vec::new());
        let mut raw = None;
        let mut it = words.iter();
        while let Some(w) = it.next() {
            let (flag, inline) = match w.split_once('=') {
                Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
                _ => (w.as_str(), None),
            };
            let value = if WITH_VALUE.contains(&flag) || flag == "--raw" {
                inline.or_else(|| it.next().cloned())
            } else {
                None
            };
            match flag {
                "-n" | "--namespace" => namespace = value,
                "-l" | "--selector" => selector = value,
                "-c" | "--container" => container = value,
                "--raw" => raw = value,
                f if f.starts_with('-') => {}
                _ => positional.push(w.clone()),
            }
        }
        if let Some(path) = raw {
            if let Some(ns) = path
                .strip_prefix("/api/v1/namespaces/")
                .and_then(|rest| rest.split_once("/pods/"))
                .map(|(ns, _)| ns)
            {
                checked += 1;
                match &pod_namespace {
                    Some((b, want)) if *b == block && want == ns => {}
                    Some((b, want)) if *b == block => errors.push(format!(
                        "{shown}: pod proxy path in namespace {ns}, the pods listed above are in {want}"
                    )),
                    _ => errors.push(format!("{shown}: no pods listed before it in its block")),
                }
            }
            continue;
        }
        // `logs` reads pods; `top pod`, `get a,b NAME`, `delete TYPE NAME`, `rollout restart
        // TYPE/NAME`: the resource, then the name.
        let verb = positional.first().cloned().unwrap_or_default();
        let rest: Vec<String> = positional
            .iter()
            .skip(if verb == "rollout" { 2 } else { 1 })
            .cloned()
            .collect();
        let (resources, name): (Vec<&str>, Option<String>) = match rest.first() {
            _ if verb == "logs" => (
                vec!["pods"],
                rest.first().filter(|n| !n.starts_with('<')).cloned(),
            ),
            Some(r) if r.contains('/') => {
                let (t, n) = r.split_once('/').unwrap();
                (vec![t], Some(n.to_string()))
            }
            Some(r) => (r.split(',').collect(), rest.get(1).cloned()),
            None => (Vec::new(), None),
        };
        let (resources, name) = match name.as_deref().and_then(|n| n.split_once('/')) {
            Some((t, n)) if verb == "logs" => (vec![t], Some(n.to_string())),
            _ => (resources, name),
        };
        let kinds: Vec<&str> = resources.iter().flat_map(|r| kinds_of(r)).collect();
        // The node verdict Leases are written by the agents at run time, not rendered.
        if resources.iter().any(|r| r.starts_with("lease")) {
            continue;
        }
        let name = name.filter(|n| !n.starts_with('<') && !n.starts_with('$'));
        if selector.is_none() && name.is_none() {
            continue;
        }
        let matched: Vec<&Target> = targets
            .iter()
            .filter(|t| kinds.contains(&t.kind.as_str()))
            .filter(|t| {
                selector
                    .as_deref()
                    .is_none_or(|s| selector_matches(s, &t.labels))
            })
            .filter(|t| name.as_deref().is_none_or(|n| t.name == n))
            .filter(|t| {
                container
                    .as_deref()
                    .is_none_or(|c| t.containers.iter().any(|x| x == c))
            })
            .collect();
        let ours = selector
            .iter()
            .chain(name.iter())
            .any(|s| s.contains("longhorn-guard") || s.contains("app.kubernetes.io/component"));
        if matched.is_empty() {
            if ours {
                errors.push(format!(
                    "{shown}: names no object of the rendered manifests"
                ));
            }
            continue;
        }
        checked += 1;
        let mut wrong: Vec<String> = matched
            .iter()
            .filter(|t| t.namespace != namespace)
            .map(|t| {
                format!(
                    "{} {} is in namespace {}",
                    t.kind,
                    t.name,
                    t.namespace.as_deref().unwrap_or("(cluster)")
                )
            })
            .collect();
        wrong.dedup();
        if !wrong.is_empty() {
            errors.push(format!(
                "{shown}: runs in namespace {}, but {}",
                namespace.as_deref().unwrap_or("(kubeconfig default)"),
                wrong.join(", ")
            ));
        }
        if kinds.contains(&"Pod")
            && let Some(ns) = matched
                .iter()
                .find(|t| t.kind == "Pod")
                .and_then(|t| t.namespace.clone())
        {
            pod_namespace = Some((block, ns));
        }
    }
    (checked, errors)
}

/// Every runbook command for the guard's own objects (its pods, their logs, endpoints,
/// ServiceMonitor, `/readyz` through the pod proxy) runs in the namespace the rendered
/// manifests deploy them in; Longhorn's own objects are looked for in `longhorn-system`.
#[test]
fn runbook_commands_use_the_namespaces_of_the_rendered_manifests() {
    let mut objs = kustomize("overlays/monitoring");
    objs.extend(kustomize("overlays/sidecar-example"));
    let runbook = std::fs::read_to_string(manifests_dir().join("../docs/runbook.md")).unwrap();
    let (checked, errors) = check_commands(&runbook, &objs);
    assert!(errors.is_empty(), "docs/runbook.md:\n{}", errors.join("\n"));
    assert!(
        checked >= 10,
        "only {checked} commands named manifest objects"
    );

    // The checker catches what the runbook once said (the guard's pods in longhorn-system).
    let old = "```bash\n\
        kubectl -n longhorn-system get pods,endpoints -l app.kubernetes.io/component=webhook\n\
        for p in $(kubectl -n longhorn-guard get pods -l app.kubernetes.io/component=webhook -o name); do\n  \
        kubectl get --raw \"/api/v1/namespaces/longhorn-system/pods/${p#pod/}:9090/proxy/readyz\"; done\n\
        ```\n\
        Logs: `kubectl -n longhorn-system logs -l app.kubernetes.io/component=agent`,\n\
        `kubectl -n longhorn-guard get servicemonitors.monitoring.coreos.com longhorn-guard-webhook`,\n\
        `kubectl -n longhorn-guard logs deploy/longhorn-guard-webhook-typo`.\n";
    let (_, errors) = check_commands(old, &objs);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    for (error, says) in errors.iter().zip([
        "Pod longhorn-guard-webhook-<generated> is in namespace longhorn-guard",
        "pod proxy path in namespace longhorn-system, the pods listed above are in longhorn-guard",
        "Pod longhorn-guard-agent-<generated> is in namespace longhorn-guard",
        "ServiceMonitor longhorn-guard-webhook is in namespace longhorn-system",
        "names no object of the rendered manifests",
    ]) {
        assert!(error.contains(says), "{error}");
    }
}
