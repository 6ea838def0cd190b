//! One kind's (re)list, streamed: a single GET at `resourceVersion=0`, which the API server
//! answers from its watch cache (as client-go's informers list), decoded one item at a time
//! while the response arrives and reduced to index entries at once. Neither the response nor
//! a list of full objects is ever held, so a list of 100k objects costs the index its entries
//! and a read buffer, not a second copy of the kind.
//!
//! Why not kube-runtime's watcher: paged lists come from etcd (slow: every page is a quorum
//! read) and an unpaged list is decoded whole by kube (the response plus every object at
//! once). BENCHMARKS.md, "memory and start-up at scale", has the three measured side by side.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::ListParams;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Index, IndexEvent, IndexedKind};

/// How long a list response may stay silent before the list is abandoned and retried (kube's
/// client has no read timeout of its own, and a half-open connection would otherwise leave
/// the kind listing, untrusted, forever).
pub const LIST_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a completed list brought: where its watch starts, and how many items it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub resource_version: String,
    pub items: usize,
}

/// Why a list failed. The kind stays untrusted (listing) and the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("list request failed: {0}")]
    Request(#[from] kube::Error),
    #[error("list response could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("list response has no resourceVersion to watch from")]
    NoResourceVersion,
    #[error("list decoder stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Lists kind `K` at `url_path` (the kind's collection, all namespaces or one) into `index`
/// as a relist: `Init`, one `InitApply` per item as it is decoded, and `InitDone` only after
/// the whole response decoded cleanly. A failed list leaves the previous table serving and
/// the kind untrusted.
pub async fn list_into<K: IndexedKind>(
    client: &Client,
    url_path: &str,
    index: &Arc<Index>,
) -> Result<Listed, ListError> {
    let body = client.request_stream(cache_list_request(url_path)?).await?;
    let runtime = tokio::runtime::Handle::current();
    let index = Arc::clone(index);
    let listed = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(
            64 * 1024,
            BlockingBody {
                body: Box::pin(body),
                runtime,
                idle: LIST_IDLE_TIMEOUT,
            },
        );
        decode_list_into::<K, _>(reader, &index)
    })
    .await??;
    Ok(listed)
}

/// The GET of a whole collection (`url_path`, e.g. `Backup::url_path(&(), Some(ns))`) from
/// the API server's watch cache: `resourceVersion=0` and no limit, which a cache list ignores
/// anyway (with a limit kube-core would drop `resourceVersion=0` and page from etcd).
pub fn cache_list_request(url_path: &str) -> Result<http::Request<Vec<u8>>, kube::Error> {
    let params = ListParams {
        resource_version: Some("0".into()),
        ..ListParams::default()
    };
    kube::core::Request::new(url_path)
        .list(&params)
        .map_err(kube::Error::BuildRequest)
}

/// Decodes a Kubernetes list (`{"metadata":{"resourceVersion":…},"items":[…]}`) from
/// `reader`, handing each item to `each` as soon as it is decoded.
pub fn decode_list<K, R>(reader: R, each: impl FnMut(K)) -> Result<Listed, ListError>
where
    K: serde::de::DeserializeOwned,
    R: Read,
{
    let mut de = serde_json::Deserializer::from_reader(reader);
    let (resource_version, items) = ListVisitor {
        each,
        _kind: PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    let resource_version = resource_version
        .filter(|rv| !rv.is_empty())
        .ok_or(ListError::NoResourceVersion)?;
    Ok(Listed {
        resource_version,
        items,
    })
}

/// Decodes a list of kind `K` from `reader` into `index` as the items of a relist (one
/// `Listed` event per item, reduced as the index reduces a full object), exactly as
/// [`list_into`] does with a response body. The caller sends `RelistStart` before and
/// `RelistDone` only after an `Ok`. Public for fuzzing and tests.
pub fn decode_list_into<K: IndexedKind, R: Read>(
    reader: R,
    index: &Index,
) -> Result<Listed, ListError> {
    decode_list::<Thin<K>, _>(reader, |thin| {
        index.apply(IndexEvent::Listed(thin.into_object()));
    })
}

/// A list item decoded without the metadata the index never reads: managedFields alone are
/// about half the bytes of a Longhorn object as the API server sends it, and skipping them
/// (with annotations, owner references, finalizers) halves the decoding time of a list.
#[derive(Deserialize)]
#[serde(bound(deserialize = ""))]
struct Thin<K: IndexedKind> {
    #[serde(default)]
    metadata: ThinMeta,
    #[serde(default)]
    spec: K::Spec,
    #[serde(default)]
    status: Option<K::Status>,
}

/// The object metadata the index reads ([`IndexedKind::extract`]), and what identifies it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ThinMeta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    labels: Option<BTreeMap<String, String>>,
}

impl<K: IndexedKind> Thin<K> {
    fn into_object(self) -> K {
        let m = self.metadata;
        let metadata = ObjectMeta {
            name: m.name,
            generate_name: m.generate_name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            creation_timestamp: m.creation_timestamp,
            labels: m.labels,
            ..ObjectMeta::default()
        };
        K::assemble(metadata, self.spec, self.status)
    }
}

/// The top-level fields of a list; everything else (`kind`, `apiVersion`) is skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ListField {
    Metadata,
    Items,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: Option<String>,
}

struct ListVisitor<K, F> {
    each: F,
    _kind: PhantomData<fn(K)>,
}

impl<'de, K, F> DeserializeSeed<'de> for ListVisitor<K, F>
where
    K: serde::de::DeserializeOwned,
    F: FnMut(K),
{
    type Value = (Option<String>, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, K, F> Visitor<'de> for ListVisitor<K, F>
where
    K: serde::de::DeserializeOwned,
    F: FnMut(K),
{
    type Value = (Option<String>, usize);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes list object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut resource_version = None;
        let mut items = None;
        while let Some(field) = map.next_key::<ListField>()? {
            match field {
                ListField::Metadata => {
                    resource_version = map.next_value::<ListMeta>()?.resource_version;
                }
                ListField::Items => {
                    items = Some(map.next_value_seed(Items {
                        each: &mut self.each,
                        _kind: PhantomData,
                    })?);
                }
                ListField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // `"items": null` is how an empty list can come back.
        Ok((resource_version, items.unwrap_or(0)))
    }
}

/// The `items` array, consumed element by element.
struct Items<'a, K, F> {
    each: &'a mut F,
    _kind: PhantomData<fn(K)>,
}

impl<'de, K, F> DeserializeSeed<'de> for Items<'_, K, F>
where
    K: serde::de::DeserializeOwned,
    F: FnMut(K),
{
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, K, F> Visitor<'de> for Items<'_, K, F>
where
    K: serde::de::DeserializeOwned,
    F: FnMut(K),
{
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects or null")
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(item) = seq.next_element::<K>()? {
            (self.each)(item);
            n += 1;
        }
        Ok(n)
    }
}

/// The response body as a blocking reader for serde_json, on a `spawn_blocking` thread:
/// each read waits on the runtime for the next bytes, at most `idle`.
struct BlockingBody<B> {
    body: std::pin::Pin<Box<B>>,
    runtime: tokio::runtime::Handle,
    idle: Duration,
}

impl<B: AsyncRead> Read for BlockingBody<B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let idle = self.idle;
        let mut body = self.body.as_mut();
        match self
            .runtime
            .block_on(async move { tokio::time::timeout(idle, body.read(buf)).await })
        {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no bytes of the list response for {} s", idle.as_secs()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::index::{IndexOptions, Interner};
    use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume, shapes};
    use serde_json::{Value, json};

    fn list_json(items: &[serde_json::Value]) -> String {
        serde_json::json!({
            "apiVersion": "longhorn.io/v1beta2",
            "kind": "SnapshotList",
            "metadata": {"resourceVersion": "4711", "continue": ""},
            "items": items,
        })
        .to_string()
    }

    #[test]
    fn items_are_handed_over_one_by_one_in_order() {
        let body = list_json(&[
            shapes::snapshot("a", "s1", "v1"),
            shapes::snapshot("a", "s2", "v1"),
            shapes::snapshot("b", "s3", "v2"),
        ]);
        let mut names = Vec::new();
        let listed = decode_list::<Snapshot, _>(body.as_bytes(), |s| {
            names.push(s.metadata.name.unwrap());
        })
        .unwrap();
        assert_eq!(names, ["s1", "s2", "s3"]);
        assert_eq!(
            listed,
            Listed {
                resource_version: "4711".into(),
                items: 3
            }
        );
    }

    #[test]
    fn metadata_after_items_and_null_items_are_accepted() {
        let body = r#"{"items":null,"kind":"SnapshotList","metadata":{"resourceVersion":"9"}}"#;
        let listed = decode_list::<Snapshot, _>(body.as_bytes(), |_| panic!("no items")).unwrap();
        assert_eq!(listed.items, 0);
        assert_eq!(listed.resource_version, "9");
    }

    #[test]
    fn a_truncated_response_is_an_error_after_the_items_it_held() {
        let body = list_json(&[
            shapes::snapshot("a", "s1", "v1"),
            shapes::snapshot("a", "s2", "v1"),
        ]);
        // Cut inside the second item.
        let cut = &body[..body.find("\"s2\"").unwrap()];
        let mut seen = 0;
        let err = decode_list::<Snapshot, _>(cut.as_bytes(), |_| seen += 1).unwrap_err();
        assert!(matches!(err, ListError::Decode(_)), "{err}");
        assert_eq!(seen, 1, "the complete first item was handed over");
    }

    #[test]
    fn a_list_without_resource_version_cannot_be_watched_from() {
        let body = r#"{"kind":"SnapshotList","metadata":{},"items":[]}"#;
        let err = decode_list::<Snapshot, _>(body.as_bytes(), |_| {}).unwrap_err();
        assert!(matches!(err, ListError::NoResourceVersion), "{err}");
    }

    #[test]
    fn trailing_garbage_and_wrong_shapes_are_errors() {
        let ok = list_json(&[]);
        for bad in [
            format!("{ok} {{"),
            r#"{"metadata":{"resourceVersion":"1"},"items":{}}"#.to_string(),
            r#"{"metadata":{"resourceVersion":"1"},"items":[{"metadata":7}]}"#.to_string(),
            "[]".to_string(),
            String::new(),
        ] {
            let err = decode_list::<Snapshot, _>(bad.as_bytes(), |_| {}).unwrap_err();
            assert!(matches!(err, ListError::Decode(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_silent_response_times_out_instead_of_hanging() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // A body that never yields a byte, like a half-open connection.
        let silent = futures::stream::pending::<std::io::Result<Vec<u8>>>();
        let mut body = BlockingBody {
            body: Box::pin(futures::TryStreamExt::into_async_read(silent)),
            runtime: runtime.handle().clone(),
            idle: Duration::from_millis(50),
        };
        let err = body.read(&mut [0; 16]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        let err = decode_list::<Snapshot, _>(body, |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("no bytes of the list response"),
            "{err}"
        );
    }

    /// As the API server sends objects: with status, timestamps, an annotation, an owner
    /// reference, a finalizer and managedFields.
    fn served(mut obj: Value, status: Value) -> Value {
        obj["status"] = status;
        let meta = &mut obj["metadata"];
        meta["creationTimestamp"] = json!("2026-11-25T14:44:52Z");
        meta["resourceVersion"] = json!("272575");
        meta["uid"] = json!("1b1faa7f-8256-4df2-af2a-aebcf81f6c10");
        meta["annotations"] = json!({"note": "x"});
        meta["finalizers"] = json!(["longhorn.io"]);
        meta["ownerReferences"] = json!([{"apiVersion": "longhorn.io/v1beta2", "kind": "Volume",
            "name": "v1", "uid": "u1", "controller": true}]);
        meta["managedFields"] = json!([{"apiVersion": "longhorn.io/v1beta2",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {".": {}, "f:x": {}}},
            "manager": "longhorn-manager", "operation": "Update",
            "time": "2026-11-25T14:44:52Z"}]);
        obj
    }

    /// The thin decode of a list item gives the index the entry the full object gives.
    fn same_entry<K: IndexedKind>(obj: Value)
    where
        K::Entry: PartialEq + std::fmt::Debug,
    {
        let options = IndexOptions {
            full_backup_label: Some(("backup.example/full".into(), None)),
        };
        let full: K = serde_json::from_value(obj.clone()).unwrap();
        let thin: Thin<K> = serde_json::from_value(obj.clone()).unwrap();
        let thin = thin.into_object();
        let (mut a, mut b) = (Interner::default(), Interner::default());
        let want = full.extract(&mut a, &options).unwrap();
        let got = thin.extract(&mut b, &options).unwrap();
        assert_eq!((&*got.0, &*got.1), (&*want.0, &*want.1), "{obj}");
        assert_eq!(got.2, want.2, "{obj}");
        assert_eq!(thin.meta().resource_version, full.meta().resource_version);
        assert_eq!(thin.meta().uid, full.meta().uid);
    }

    #[test]
    fn thin_items_index_as_the_full_objects_do() {
        for state in [
            "",
            "Pending",
            "InProgress",
            "Completed",
            "Error",
            "Deleting",
            "Odd",
        ] {
            same_entry::<Backup>(served(
                shapes::backup("ns", "b1", "v1", "s1", Some("daily")),
                shapes::backup_status(state, "node-1", "v1", "s1"),
            ));
        }
        same_entry::<Snapshot>(served(
            shapes::snapshot("ns", "s1", "v1"),
            json!({"markRemoved": true, "readyToUse": true}),
        ));
        let mut labelled = shapes::volume("ns", "v1", "node-2");
        labelled["metadata"]["labels"] = json!({"backup.example/full": "yes"});
        same_entry::<Volume>(served(labelled, shapes::volume_status("node-3")));
        same_entry::<Volume>(served(shapes::volume("ns", "v2", "node-2"), Value::Null));
        same_entry::<Engine>(served(
            shapes::engine("ns", "v1", "node-1"),
            shapes::engine_status("node-1", "im-1", "10.0.0.1", 10000),
        ));
        same_entry::<BackupTarget>(served(
            shapes::backup_target("ns", "default", "s3://b@r/"),
            shapes::backup_target_status("node-1", true),
        ));
    }
}
