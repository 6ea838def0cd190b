//! Hostile and malformed AdmissionReviews sent to the real TLS server (as the API server
//! would reach it, raw HTTP/1.1 over rustls): each gets a clear, specific answer (a keyword
//! asserted per row), never a panic or a bare 500, and the server keeps serving: a valid
//! review after the table is still judged, and the malformed ones are counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use longhorn_guard_testkit::TestCluster;
use longhorn_guard_webhook::Policy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the body goes on the wire.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// `Content-Length: <len>`.
    Length,
    /// `Transfer-Encoding: chunked`, 16 KiB chunks, no length.
    Chunked,
    /// The row's `head` is the whole request head (request line and headers) as is.
    Raw,
}

struct Row {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    framing: Framing,
    head: String,
    body: Vec<u8>,
    status: u16,
    /// Case-insensitive; must appear in the answer's body.
    keyword: &'static str,
}

fn row(name: &'static str, body: impl Into<Vec<u8>>, status: u16, keyword: &'static str) -> Row {
    Row {
        name,
        method: "POST",
        path: "/validate/backups",
        content_type: "application/json",
        framing: Framing::Length,
        head: String::new(),
        body: body.into(),
        status,
        keyword,
    }
}

fn json_row(name: &'static str, v: Value, status: u16, keyword: &'static str) -> Row {
    row(name, serde_json::to_vec(&v).unwrap(), status, keyword)
}

fn backup(ns: &str, snapshot: Value) -> Value {
    json!({
        "apiVersion": "longhorn.io/v1beta2",
        "kind": "Backup",
        "metadata": { "name": "bk-1", "namespace": ns, "labels": { "backup-volume": "vol-1" } },
        "spec": { "snapshotName": snapshot, "labels": {}, "backupMode": "incremental" },
    })
}

fn review(ns: &str, uid: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "longhorn.io", "version": "v1beta2", "kind": "Backup" },
            "resource": { "group": "longhorn.io", "version": "v1beta2", "resource": "backups" },
            "requestKind": { "group": "longhorn.io", "version": "v1beta2", "kind": "Backup" },
            "requestResource": { "group": "longhorn.io", "version": "v1beta2", "resource": "backups" },
            "name": "bk-1",
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": { "username": "alice", "groups": ["system:authenticated"] },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": null,
        },
    })
}

/// A valid review of a Backup of a snapshot that does not exist (denied: snapshot_missing).
fn valid(ns: &str, uid: &str) -> Value {
    review(ns, uid, backup(ns, json!("snap-that-never-exists")))
}

/// Sets (or adds) the field at `pointer`.
fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut v
    } else {
        v.pointer_mut(parent).unwrap()
    };
    target
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), value);
    v
}

fn without(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    v
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn rows(ns: &str) -> Vec<Row> {
    let v = || valid(ns, "uid-1");
    let huge = "x".repeat(2 * 1024 * 1024);
    let mut rows = vec![
        // Not JSON / not an object.
        row("empty body", "", 400, "empty body"),
        row("not JSON", "hello", 400, "not a valid admission.k8s.io/v1"),
        row("JSON null", "null", 400, "AdmissionReview"),
        row("JSON array", "[]", 400, "AdmissionReview"),
        row("JSON string", "\"review\"", 400, "AdmissionReview"),
        row("JSON number", "42", 400, "AdmissionReview"),
        row("empty object", "{}", 400, "AdmissionReview"),
        row("NUL bytes", vec![0u8; 64], 400, "not a valid"),
        row("UTF-8 BOM before JSON", [b"\xEF\xBB\xBF".as_slice(), &serde_json::to_vec(&v()).unwrap()].concat(), 400, "not a valid"),
        row("truncated JSON", serde_json::to_vec(&v()).unwrap()[..200].to_vec(), 400, "EOF"),
        row("trailing garbage", [serde_json::to_vec(&v()).unwrap(), b"}}garbage".to_vec()].concat(), 400, "trailing"),
        row("invalid UTF-8 inside a string", "", 400, "not a valid"),
        row("lone surrogate escape", serde_json::to_string(&v()).unwrap().replace("snap-that-never-exists", "\\ud800"), 400, "hex escape"),
        row("deep nesting (100k objects)", format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)), 400, "recursion limit"),
        row("deep nesting (100k arrays)", nested(100_000), 400, "invalid type: sequence"),
        row("deep nesting inside the object", serde_json::to_string(&v()).unwrap().replace("\"incremental\"", &nested(5000)), 400, "recursion limit"),
        // Wrong envelope.
        json_row("kind Pod with uid", with(v(), "/kind", json!("Pod")), 200, "expected kind AdmissionReview"),
        json_row("apiVersion admission.k8s.io/v1beta1 with uid", with(v(), "/apiVersion", json!("admission.k8s.io/v1beta1")), 200, "admission.k8s.io/v1"),
        json_row("apiVersion v1beta1 without uid", without(with(v(), "/apiVersion", json!("admission.k8s.io/v1beta1")), "/request/uid"), 400, "uid"),
        json_row("apiVersion missing (uid readable)", without(v(), "/apiVersion"), 200, "missing field `apiVersion`"),
        json_row("kind as object (uid readable)", with(v(), "/kind", json!({"k": 1})), 200, "invalid type: map"),
        json_row("no request", without(v(), "/request"), 400, "no request"),
        json_row("request null", with(v(), "/request", Value::Null), 400, "no request"),
        json_row("request is a string", with(v(), "/request", json!("r")), 400, "invalid type"),
        json_row("response instead of request", with(without(v(), "/request"), "/kind", json!("AdmissionReview")).as_object().cloned().map(|mut m| { m.insert("response".into(), json!({"uid": "u", "allowed": true})); Value::Object(m) }).unwrap(), 400, "missing field `status`"),
        // uid.
        json_row("missing uid", without(v(), "/request/uid"), 400, "uid"),
        json_row("empty uid", with(v(), "/request/uid", json!("")), 400, "empty request.uid"),
        json_row("uid is a number", with(v(), "/request/uid", json!(7)), 400, "invalid type"),
        json_row("duplicate uid key", Value::Null, 200, "duplicate field"),
        // Operations and kinds the registration should never send.
        json_row("UPDATE", with(v(), "/request/operation", json!("UPDATE")), 200, "only checks CREATE"),
        json_row("DELETE", with(v(), "/request/operation", json!("DELETE")), 200, "only checks CREATE"),
        json_row("CONNECT", with(v(), "/request/operation", json!("CONNECT")), 200, "only checks CREATE"),
        json_row("unknown operation", with(v(), "/request/operation", json!("FROB")), 200, "unknown variant"),
        json_row("kind Snapshot", with(with(v(), "/request/resource/resource", json!("snapshots")), "/request/kind/kind", json!("Snapshot")), 200, "unchecked"),
        json_row("backups of another group", with(v(), "/request/resource/group", json!("example.com")), 200, "unchecked"),
        json_row("backups v1beta1", with(v(), "/request/resource/version", json!("v1beta1")), 200, "unchecked"),
        json_row("status subresource", with(v(), "/request/subResource", json!("status")), 200, "unchecked"),
        // The object.
        json_row("object null", with(v(), "/request/object", Value::Null), 200, "carries no object"),
        json_row("object missing", without(v(), "/request/object"), 200, "carries no object"),
        json_row("object is an array", with(v(), "/request/object", json!([1, 2])), 200, "invalid type"),
        json_row("spec.snapshotName is a number", review(ns, "uid-1", backup(ns, json!(42))), 200, "spec.snapshotName must be a string, got a number"),
        json_row("spec.snapshotName is an object", review(ns, "uid-1", backup(ns, json!({"a": 1}))), 200, "spec.snapshotName must be a string, got an object"),
        json_row("spec is an array", with(v(), "/request/object/spec", json!(["snap"])), 200, "spec must be an object, got an array"),
        json_row("spec.backupMode is a bool", with(v(), "/request/object/spec/backupMode", json!(true)), 200, "spec.backupMode must be a string"),
        json_row("labels as an array", with(v(), "/request/object/metadata/labels", json!(["a", "b"])), 200, "invalid type"),
        json_row("label value a number", with(v(), "/request/object/metadata/labels", json!({"backup-volume": 1})), 200, "invalid type"),
        json_row("metadata is a string", with(v(), "/request/object/metadata", json!("m")), 200, "invalid type"),
        json_row("userInfo.groups is a string", with(v(), "/request/userInfo/groups", json!("system:masters")), 200, "invalid type"),
        json_row("dryRun is a string", with(v(), "/request/dryRun", json!("yes")), 200, "invalid type"),
        json_row("number out of range", Value::Null, 400, "number out of range"),
        // Size.
        json_row("snapshotName of 64 KiB (judged)", review(ns, "uid-1", backup(ns, json!("s".repeat(64 * 1024)))), 200, "longhorn-guard"),
        json_row("uid of 10 KiB (echoed, judged)", valid(ns, &"u".repeat(10 * 1024)), 200, "snapshot_missing"),
        row("2 MiB body with Content-Length", huge.clone(), 413, "exceeds the limit of 1048576 bytes"),
        Row { framing: Framing::Chunked, ..row("2 MiB chunked body without length", huge, 413, "exceeds the limit") },
        Row { framing: Framing::Chunked, ..json_row("valid review, chunked without length", v(), 200, "snapshot_missing") },
        // Content type, method, path.
        Row { content_type: "text/plain", ..json_row("content-type text/plain (judged as JSON)", v(), 200, "snapshot_missing") },
        Row { content_type: "application/yaml", ..row("content-type yaml with a YAML body", "apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\n", 400, "not a valid") },
        Row { method: "GET", ..row("GET /validate/backups", "", 405, "") },
        Row { method: "PUT", ..json_row("PUT /validate/backups", v(), 405, "") },
        Row { path: "/validate/pods", ..json_row("unknown path", v(), 404, "") },
        Row { path: "/mutate/backups", ..row("garbage to /mutate/backups", "{", 400, "not a valid") },
        Row { path: "/mutate/backups", ..json_row("v1beta1 to /mutate/backups", with(v(), "/apiVersion", json!("admission.k8s.io/v1beta1")), 200, "admission.k8s.io/v1") },
        // Broken HTTP framing: hyper answers these itself (400/431), never a 500.
        Row { framing: Framing::Raw, head: "POST /validate/backups HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\nconnection: close\r\n\r\n".into(), ..row("negative Content-Length", "", 400, "") },
        Row { framing: Framing::Raw, head: "POST /validate/backups HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\nconnection: close\r\n\r\n".into(), ..row("two different Content-Lengths", "hello", 400, "") },
        Row { framing: Framing::Raw, head: format!("POST /validate/backups HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n", "h".repeat(600 * 1024)), ..row("600 KiB header", "", 431, "") },
    ];
    // Rows whose body is easier to write by hand.
    for r in rows.iter_mut() {
        match r.name {
            "duplicate uid key" => {
                let text = serde_json::to_string(&v()).unwrap();
                r.body = text
                    .replacen(
                        "\"uid\":\"uid-1\"",
                        "\"uid\":\"uid-1\",\"uid\":\"uid-2\"",
                        1,
                    )
                    .into_bytes();
            }
            "invalid UTF-8 inside a string" => {
                let text = serde_json::to_vec(&v()).unwrap();
                let at = text
                    .windows(22)
                    .position(|w| w == b"snap-that-never-exists")
                    .unwrap();
                r.body = [&text[..at], b"snap-\xC3\x28".as_slice(), &text[at + 22..]].concat();
            }
            "number out of range" => {
                let text = serde_json::to_string(&v()).unwrap();
                r.body = text
                    .replacen("\"dryRun\":false", "\"dryRun\":1e400", 1)
                    .into_bytes();
            }
            _ => {}
        }
    }
    rows
}

struct Answer {
    status: u16,
    body: String,
}

async fn tls_stream(
    served: &Served,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    Ok(tls_connect(served, &[b"http/1.1"]).await?.0)
}

fn decode_chunked(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..i]).trim(), 16).unwrap_or(0);
        if size == 0 || body.len() < i + 2 + size {
            return out;
        }
        out.extend_from_slice(&body[i + 2..i + 2 + size]);
        body = &body[(i + 2 + size + 2).min(body.len())..];
    }
}

/// Sends one request on a fresh TLS connection and reads the answer until the server closes.
async fn send(served: &Served, r: &Row) -> Result<Answer> {
    let mut tls = tls_stream(served).await?;
    let mut req = match r.framing {
        Framing::Raw => r.head.clone().into_bytes(),
        _ => format!(
            "{} {} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {}\r\nconnection: close\r\n{}\r\n",
            r.method,
            r.path,
            r.content_type,
            match r.framing {
                Framing::Chunked => "transfer-encoding: chunked\r\n".to_string(),
                _ => format!("content-length: {}\r\n", r.body.len()),
            }
        )
        .into_bytes(),
    };
    match r.framing {
        Framing::Chunked => {
            for chunk in r.body.chunks(16 * 1024) {
                req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                req.extend_from_slice(chunk);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
        }
        _ => req.extend_from_slice(&r.body),
    }
    // The server may answer (413) and close before it read everything: a failed write is fine.
    let _ = tls.write_all(&req).await;
    let _ = tls.flush().await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut raw)).await;
    anyhow::ensure!(read.is_ok(), "{}: no answer within 20 s", r.name);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| {
            format!(
                "{}: no HTTP answer: {:?}",
                r.name,
                String::from_utf8_lossy(&raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: bad status line {head:?}", r.name))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        decode_chunked(&raw[split + 4..])
    } else {
        raw[split + 4..].to_vec()
    };
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn hostile_reviews_get_specific_answers_and_the_server_keeps_serving() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("lhg-bad-input").await?;
    let served = serve(cluster.client(), &ns, Policy::default()).await?;
    wait_ready(&served).await?;

    let rows = rows(&ns);
    assert!(rows.len() >= 50, "only {} rows", rows.len());
    let mut failures = Vec::new();
    for r in &rows {
        let answer = match send(&served, r).await {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{}: {e:#}", r.name));
                continue;
            }
        };
        let lower = answer.body.to_lowercase();
        let ok_status = answer.status == r.status;
        let ok_keyword = lower.contains(&r.keyword.to_lowercase());
        let mut ok_shape = true;
        if answer.status == 200 {
            // A 200 is always an AdmissionReview answering the request's uid.
            let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            ok_shape = v["kind"] == "AdmissionReview"
                && v["response"]["uid"].as_str().is_some_and(|u| !u.is_empty());
            if r.name.starts_with("uid of 10 KiB") {
                ok_shape &= v["response"]["uid"].as_str().map(str::len) == Some(10 * 1024);
            }
        }
        if !(ok_status && ok_keyword && ok_shape) || answer.status >= 500 {
            failures.push(format!(
                "{}: expected {} with {:?}, got {} {}",
                r.name,
                r.status,
                r.keyword,
                answer.status,
                answer.body.chars().take(400).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    // Still serving: a valid review is judged, readiness holds, the rejects were counted.
    let (status, body) = tls_post(
        &served,
        "/validate/backups",
        serde_json::to_vec(&valid(&ns, "after-the-table"))?,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["response"]["uid"], "after-the-table");
    assert_eq!(v["response"]["allowed"], false, "{body}");
    assert!(body.contains("snapshot_missing"), "{body}");
    assert_eq!(served.ops_get("/readyz").await?.0, 200);
    let metrics = served.metrics().await?;
    let malformed = metric(
        &metrics,
        "longhorn_guard_webhook_malformed_reviews_total",
        "",
    );
    assert!(
        malformed >= 30,
        "malformed_reviews_total = {malformed}\n{metrics}"
    );
    served.stop().await?;
    Ok(())
}

/// The policy file: a precise error naming the file and the field, and a hot reload that
/// fails keeps the last good policy in force (what `policy` and `policy::reload` do not
/// already cover end to end).
#[test]
fn invalid_policy_files_name_the_file_and_the_field() -> Result<()> {
    let dir = tempfile_dir()?;
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "typo.yaml",
            "snapshotNotRedy: deny\n",
            &["typo.yaml", "snapshotNotRedy"],
        ),
        (
            "type.yaml",
            "deadlineMs: soon\n",
            &["type.yaml", "deadlineMs"],
        ),
        (
            "zero.yaml",
            "deadlineMs: 0\n",
            &["zero.yaml", "deadlineMs must be > 0"],
        ),
        (
            "body.yaml",
            "maxBodyBytes: 10\n",
            &["body.yaml", "maxBodyBytes must be at least 1024"],
        ),
        (
            "enum.yaml",
            "onDeadline: sideways\n",
            &["enum.yaml", "onDeadline", "sideways"],
        ),
        (
            "nested.yaml",
            "exemptions:\n  userz: [a]\n",
            &["nested.yaml", "userz"],
        ),
    ];
    for (file, text, needles) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        let err = Policy::load(&path).expect_err(file).to_string();
        for n in needles {
            assert!(err.contains(n), "{file}: {err:?} lacks {n:?}");
        }
    }
    let missing = dir.join("absent.yaml");
    let err = Policy::load(&missing).expect_err("absent").to_string();
    assert!(err.contains("absent.yaml"), "{err}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "lhg-bad-input-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The webhook's TLS files: a missing or mismatched pair is refused at start with the file
/// named (the certs crate's own reload tests cover the rotating resolver).
#[tokio::test]
async fn bad_tls_files_are_refused_at_start_naming_the_file() -> Result<()> {
    let dir = tempfile_dir()?;
    let a = TestCert::new()?;
    let b = TestCert::new()?;
    let start = |cert: std::path::PathBuf, key: std::path::PathBuf| async move {
        let config = longhorn_guard_webhook::WebhookConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: cert,
            tls_key: key,
            policy: Some(Policy::default()),
            ..Default::default()
        };
        longhorn_guard_webhook::start_with_source(
            config,
            None,
            Arc::new(longhorn_guard_webhook::NoSnapshotSource),
        )
        .await
        .map(|_| ())
    };
    let missing = dir.join("nope.crt");
    let err = format!("{:#}", start(missing, a.key.clone()).await.unwrap_err());
    assert!(err.contains("nope.crt"), "{err}");
    let err = format!(
        "{:#}",
        start(a.cert.clone(), b.key.clone()).await.unwrap_err()
    );
    assert!(
        err.contains("tls.key") && err.contains("does not match certificate"),
        "{err}"
    );
    let garbage = dir.join("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    )?;
    let err = format!("{:#}", start(a.cert.clone(), garbage).await.unwrap_err());
    assert!(err.contains("garbage.key"), "{err}");
    let empty = dir.join("empty.crt");
    std::fs::write(&empty, "")?;
    let err = format!("{:#}", start(empty, a.key.clone()).await.unwrap_err());
    assert!(
        err.contains("empty.crt") && err.contains("no CERTIFICATE block"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
