//! A secondary grouping of one kind's entries, kept up to date with every change: per
//! namespace, group key → names. Engines are grouped by volume, Backups in flight
//! (non-terminal, with a snapshot name) by volume, so the throttle reads the few entries it
//! needs instead of scanning a namespace that may hold hundreds of thousands.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// An entry's secondary key; entries without one are not grouped.
pub trait Grouped {
    fn group(&self) -> Option<Arc<str>> {
        None
    }

    /// A label the entries are counted by, per namespace (e.g. a Backup's state), so a
    /// figure over every entry needs no scan; `None` = not counted.
    fn tally(&self) -> Option<&'static str> {
        None
    }

    /// For an entry whose name the API server generated, its key among the generated
    /// entries (`generateName` base and snapshot, [`super::generated_key`]), so a reservation
    /// of a `generateName` CREATE finds its Backup without scanning the namespace; `None` =
    /// not generated.
    fn generated_key(&self, _name: &str) -> Option<Arc<str>> {
        None
    }
}

/// Namespace → tally label → entries, kept up to date with every change.
#[derive(Debug, Default)]
pub struct Tallies {
    by_namespace: HashMap<Arc<str>, HashMap<&'static str, u64>>,
}

impl Tallies {
    pub(super) fn add(&mut self, namespace: &Arc<str>, label: &'static str) {
        *self
            .by_namespace
            .entry(namespace.clone())
            .or_default()
            .entry(label)
            .or_default() += 1;
    }

    pub(super) fn remove(&mut self, namespace: &str, label: &'static str) {
        let Some(counts) = self.by_namespace.get_mut(namespace) else {
            return;
        };
        if let Some(n) = counts.get_mut(label) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(label);
            }
        }
        if counts.is_empty() {
            self.by_namespace.remove(namespace);
        }
    }

    /// The tallies of `table`, from scratch (after a relist).
    pub(super) fn of<V: Grouped>(table: &HashMap<Arc<str>, HashMap<Arc<str>, V>>) -> Self {
        let mut tallies = Self::default();
        for (ns, entries) in table {
            for v in entries.values() {
                if let Some(label) = v.tally() {
                    tallies.add(ns, label);
                }
            }
        }
        tallies
    }

    /// (label, count) of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|(label, n)| (*label, *n))
    }
}

/// Group key → names, in one namespace.
type NamespaceGroups = HashMap<Arc<str>, HashSet<Arc<str>>>;

/// Namespace → group key → names.
#[derive(Debug, Default)]
pub struct Groups {
    by_namespace: HashMap<Arc<str>, NamespaceGroups>,
}

impl Groups {
    pub(super) fn add(&mut self, namespace: &Arc<str>, group: Arc<str>, name: &Arc<str>) {
        self.by_namespace
            .entry(namespace.clone())
            .or_default()
            .entry(group)
            .or_default()
            .insert(name.clone());
    }

    pub(super) fn remove(&mut self, namespace: &str, group: &str, name: &str) {
        let Some(groups) = self.by_namespace.get_mut(namespace) else {
            return;
        };
        if let Some(names) = groups.get_mut(group) {
            names.remove(name);
            if names.is_empty() {
                groups.remove(group);
            }
        }
        if groups.is_empty() {
            self.by_namespace.remove(namespace);
        }
    }

    /// The groups of `table` by `key`, from scratch (after a relist).
    pub(super) fn of<V>(
        table: &HashMap<Arc<str>, HashMap<Arc<str>, V>>,
        key: impl Fn(&Arc<str>, &V) -> Option<Arc<str>>,
    ) -> Self {
        let mut groups = Self::default();
        for (ns, entries) in table {
            for (name, v) in entries {
                if let Some(g) = key(name, v) {
                    groups.add(ns, g, name);
                }
            }
        }
        groups
    }

    /// Names in one group of a namespace.
    pub fn names<'a>(
        &'a self,
        namespace: &str,
        group: &str,
    ) -> impl Iterator<Item = &'a Arc<str>> + use<'a> {
        self.by_namespace
            .get(namespace)
            .and_then(|g| g.get(group))
            .into_iter()
            .flatten()
    }

    /// (group, name) of every grouped entry of a namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .flat_map(|(g, names)| names.iter().map(move |n| (g, n)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::index::IndexEvent;
    use longhorn_types::{Backup, Engine, shapes};
    use serde_json::json;

    use crate::index::Index;

    fn backup(name: &str, volume: Option<&str>, state: &str) -> Backup {
        let mut obj = shapes::backup("ns", name, volume.unwrap_or_default(), "s1", None);
        if volume.is_none() {
            obj["metadata"]["labels"] = json!({});
        }
        obj["status"] = shapes::backup_status(state, "node-1", "", "s1");
        serde_json::from_value(obj).unwrap()
    }

    /// (group, name) of the Backups in flight in "ns", sorted.
    fn in_flight(idx: &Index) -> Vec<(String, String)> {
        let view = idx.view();
        let mut v: Vec<_> = view
            .data()
            .backups
            .grouped("ns")
            .map(|(g, n, _)| (g.to_string(), n.to_string()))
            .collect();
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(g, n)| (g.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn backups_in_flight_follow_every_change() {
        let idx = Index::default();
        idx.apply(IndexEvent::Upsert(backup("b1", Some("v1"), "InProgress")));
        idx.apply(IndexEvent::Upsert(backup("b2", Some("v1"), "Completed")));
        idx.apply(IndexEvent::Upsert(backup("b3", None, "")));
        assert_eq!(in_flight(&idx), pairs(&[("", "b3"), ("v1", "b1")]));

        // State changes move Backups in and out; a changed volume moves it between groups.
        idx.apply(IndexEvent::Upsert(backup("b1", Some("v1"), "Completed")));
        idx.apply(IndexEvent::Upsert(backup("b2", Some("v2"), "Pending")));
        idx.apply(IndexEvent::Upsert(backup("b3", Some("v2"), "Pending")));
        assert_eq!(in_flight(&idx), pairs(&[("v2", "b2"), ("v2", "b3")]));
        let view = idx.view();
        assert_eq!(view.data().backups.in_group("ns", "v2").count(), 2);
        assert_eq!(view.data().backups.in_group("ns", "v1").count(), 0);
        assert_eq!(view.data().backups.in_group("other", "v2").count(), 0);
        drop(view);

        // Deletion, then a relist that keeps only b9: the grouping is rebuilt from it.
        idx.apply(IndexEvent::Delete(backup("b2", Some("v2"), "Pending")));
        assert_eq!(in_flight(&idx), pairs(&[("v2", "b3")]));
        idx.apply::<Backup>(IndexEvent::RelistStart);
        idx.apply(IndexEvent::Listed(backup("b9", Some("v9"), "New")));
        assert_eq!(
            in_flight(&idx),
            pairs(&[("v2", "b3")]),
            "not before InitDone"
        );
        idx.apply::<Backup>(IndexEvent::RelistDone);
        assert_eq!(in_flight(&idx), pairs(&[("v9", "b9")]));
    }

    fn tallies(idx: &Index) -> Vec<(String, u64)> {
        let view = idx.view();
        let mut v: Vec<_> = view
            .data()
            .backups
            .tallies("ns")
            .map(|(l, n)| (l.to_string(), n))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn backups_are_counted_by_state_through_every_change_and_relist() {
        let idx = Index::default();
        idx.apply(IndexEvent::Upsert(backup("b1", Some("v1"), "InProgress")));
        idx.apply(IndexEvent::Upsert(backup("b2", Some("v1"), "Completed")));
        idx.apply(IndexEvent::Upsert(backup("b3", Some("v2"), "Completed")));
        let t = |p: &[(&str, u64)]| -> Vec<(String, u64)> {
            p.iter().map(|(l, n)| (l.to_string(), *n)).collect()
        };
        assert_eq!(tallies(&idx), t(&[("Completed", 2), ("InProgress", 1)]));
        idx.apply(IndexEvent::Upsert(backup("b1", Some("v1"), "Completed")));
        idx.apply(IndexEvent::Delete(backup("b2", Some("v1"), "Completed")));
        assert_eq!(tallies(&idx), t(&[("Completed", 2)]));
        idx.apply::<Backup>(IndexEvent::RelistStart);
        idx.apply(IndexEvent::Listed(backup("b9", Some("v9"), "Error")));
        assert_eq!(tallies(&idx), t(&[("Completed", 2)]), "not before InitDone");
        idx.apply::<Backup>(IndexEvent::RelistDone);
        assert_eq!(tallies(&idx), t(&[("Error", 1)]));
        idx.apply(IndexEvent::Delete(backup("b9", Some("v9"), "Error")));
        assert!(tallies(&idx).is_empty());
    }

    #[test]
    fn non_terminal_backups_without_a_snapshot_are_grouped_apart_from_every_volume() {
        let idx = Index::default();
        let mut synced = shapes::backup("ns", "synced", "v1", "", None);
        synced["status"] = shapes::backup_status("Pending", "node-1", "v1", "");
        idx.apply(IndexEvent::Upsert(
            serde_json::from_value::<Backup>(synced).unwrap(),
        ));
        idx.apply(IndexEvent::Upsert(backup("b1", Some("v1"), "Pending")));
        assert_eq!(
            in_flight(&idx),
            pairs(&[(super::super::NO_SNAPSHOT_GROUP, "synced"), ("v1", "b1")])
        );
        let view = idx.view();
        let v1: Vec<_> = view
            .data()
            .backups
            .in_group("ns", "v1")
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(
            v1,
            ["b1"],
            "a volume's lookup never meets a Backup without a snapshot"
        );
    }

    #[test]
    fn engines_are_grouped_by_volume() {
        let idx = Index::default();
        let engine = |volume: &str, node: &str| -> Engine {
            serde_json::from_value(shapes::engine("ns", volume, node)).unwrap()
        };
        idx.apply(IndexEvent::Upsert(engine("v1", "node-1")));
        idx.apply(IndexEvent::Upsert(engine("v2", "node-2")));
        let view = idx.view();
        let nodes: Vec<_> = view
            .data()
            .engines
            .in_group("ns", "v1")
            .map(|(_, e)| e.node.as_deref().unwrap_or_default().to_string())
            .collect();
        assert_eq!(nodes, vec!["node-1".to_string()]);
        drop(view);
        idx.apply(IndexEvent::Delete(engine("v1", "node-1")));
        assert_eq!(idx.view().data().engines.in_group("ns", "v1").count(), 0);
        assert_eq!(idx.view().data().engines.in_group("ns", "v2").count(), 1);
    }
}
