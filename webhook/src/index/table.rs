//! The index's storage: one [`KindTable`] per kind (entries by namespace then name, the
//! table a relist builds aside, and the groups and tallies kept in step with the entries),
//! and the [`Interner`] their strings share.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Grouped, Groups, Tallies, generated_base, generated_key};

/// Shares repeated strings (namespaces, volume, node and object names). Strings no entry
/// holds any more are dropped by [`Interner::purge`], run after relists and every few
/// thousand deletions, so churn does not grow it.
#[derive(Default, Debug)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return Arc::clone(found);
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&new));
        new
    }

    pub fn purge(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

type Table<V> = HashMap<Arc<str>, HashMap<Arc<str>, V>>;

/// One kind's entries by namespace then name, plus the table a relist is building.
#[derive(Debug)]
pub struct KindTable<V> {
    live: Table<V>,
    len: usize,
    relist: Option<(Table<V>, usize)>,
    /// The live entries by their [`Grouped::group`] key.
    groups: Groups,
    /// The live entries with a generated name, by [`Grouped::generated_key`].
    generated: Groups,
    /// The live entries counted by their [`Grouped::tally`] label.
    tallies: Tallies,
}

impl<V> Default for KindTable<V> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
            len: 0,
            relist: None,
            groups: Groups::default(),
            generated: Groups::default(),
            tallies: Tallies::default(),
        }
    }
}

impl<V: Grouped> KindTable<V> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.live.get(namespace)?.get(name)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Namespaces with at least one entry.
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<str>> {
        self.live.keys()
    }

    /// Entries of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.live.get(namespace).into_iter().flat_map(|m| m.iter())
    }

    /// Entries of one group of a namespace (see [`Grouped`]).
    pub fn in_group<'a>(
        &'a self,
        namespace: &'a str,
        group: &str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a V)> {
        self.groups
            .names(namespace, group)
            .filter_map(move |n| Some((n, self.get(namespace, n)?)))
    }

    /// Entries of a namespace of `snapshot` whose names the API server generated from
    /// `generate_name` (see [`Grouped::generated_key`]): an index lookup, not a scan.
    pub fn generated_from<'a>(
        &'a self,
        namespace: &'a str,
        generate_name: &str,
        snapshot: &str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a V)> {
        let key = generated_key(generated_base(generate_name), snapshot);
        self.generated
            .names(namespace, &key)
            .filter_map(move |n| Some((n, self.get(namespace, n)?)))
    }

    /// (label, count) of the entries of a namespace (see [`Grouped::tally`]).
    pub fn tallies(&self, namespace: &str) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.tallies.in_namespace(namespace)
    }

    /// (group, name, entry) of every grouped entry of a namespace.
    pub fn grouped<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>, &'a V)> {
        self.groups
            .in_namespace(namespace)
            .filter_map(move |(g, n)| Some((g, n, self.get(namespace, n)?)))
    }

    pub(super) fn insert_into(
        table: &mut Table<V>,
        len: &mut usize,
        ns: Arc<str>,
        name: Arc<str>,
        v: V,
    ) {
        if table.entry(ns).or_default().insert(name, v).is_none() {
            *len += 1;
        }
    }

    pub(super) fn apply(&mut self, ns: Arc<str>, name: Arc<str>, v: V) {
        if let Some(old) = self.live.get(&ns).and_then(|m| m.get(&name)) {
            if let Some(g) = old.group() {
                self.groups.remove(&ns, &g, &name);
            }
            if let Some(key) = old.generated_key(&name) {
                self.generated.remove(&ns, &key, &name);
            }
            if let Some(label) = old.tally() {
                self.tallies.remove(&ns, label);
            }
        }
        if let Some(g) = v.group() {
            self.groups.add(&ns, g, &name);
        }
        if let Some(key) = v.generated_key(&name) {
            self.generated.add(&ns, key, &name);
        }
        if let Some(label) = v.tally() {
            self.tallies.add(&ns, label);
        }
        Self::insert_into(&mut self.live, &mut self.len, ns, name, v);
    }

    pub(super) fn remove(&mut self, ns: &str, name: &str) -> bool {
        let Some(m) = self.live.get_mut(ns) else {
            return false;
        };
        let removed = match m.remove(name) {
            Some(old) => {
                if let Some(g) = old.group() {
                    self.groups.remove(ns, &g, name);
                }
                if let Some(key) = old.generated_key(name) {
                    self.generated.remove(ns, &key, name);
                }
                if let Some(label) = old.tally() {
                    self.tallies.remove(ns, label);
                }
                true
            }
            None => false,
        };
        if removed {
            self.len -= 1;
            if m.is_empty() {
                self.live.remove(ns);
            }
        }
        removed
    }

    /// Starts building a relist aside; true when none was in progress (a retry of a failed
    /// list is not a new relist).
    pub(super) fn relist_start(&mut self) -> bool {
        self.relist.replace((HashMap::new(), 0)).is_none()
    }

    pub(super) fn relist_apply(&mut self, ns: Arc<str>, name: Arc<str>, v: V) {
        match &mut self.relist {
            Some((table, len)) => Self::insert_into(table, len, ns, name, v),
            // InitApply without Init: treat as a plain apply rather than lose it.
            None => self.apply(ns, name, v),
        }
    }

    pub(super) fn relist_done(&mut self) {
        if let Some((table, len)) = self.relist.take() {
            self.groups = Groups::of(&table, |_, v| v.group());
            self.generated = Groups::of(&table, |name, v| v.generated_key(name));
            self.tallies = Tallies::of(&table);
            self.live = table;
            self.len = len;
        }
    }
}
