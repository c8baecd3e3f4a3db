//! The shim's containers, under stable keys.
//!
//! A key is handed out once and never reused, so a poll token that names a container
//! stays right even if another container is removed in the same turn; the id index
//! finds a container by the id skiffd uses.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use skiff_shim_proto::protocol::{Exit, Status};

use super::conns::ConnId;
use super::output::Output;

/// A container's key in the shim, stable for its life and never reused.
pub(super) type Key = u64;

/// One container.
pub(super) struct Container {
    /// skiffd's id.
    pub(super) id: String,
    /// Its OCI bundle.
    pub(super) bundle: PathBuf,
    /// Its init process.
    pub(super) pid: Option<i32>,
    pub(super) status: Status,
    pub(super) exit: Option<Exit>,
    /// Its stdio, log and attach pipes.
    pub(super) output: Output,
    /// Connections waiting for its exit.
    pub(super) waiters: Vec<ConnId>,
}

/// The containers of the pod.
#[derive(Default)]
pub(super) struct Containers {
    by_key: BTreeMap<Key, Container>,
    ids: HashMap<String, Key>,
    next: Key,
}

impl Containers {
    /// Add `c`; `None` if a container with its id exists.
    pub(super) fn insert(&mut self, c: Container) -> Option<Key> {
        if self.ids.contains_key(&c.id) {
            return None;
        }
        self.next += 1;
        self.ids.insert(c.id.clone(), self.next);
        self.by_key.insert(self.next, c);
        Some(self.next)
    }

    /// Take the container out.
    pub(super) fn remove(&mut self, key: Key) -> Option<Container> {
        let c = self.by_key.remove(&key)?;
        self.ids.remove(&c.id);
        Some(c)
    }

    /// The key of the container with skiffd's id `id`.
    pub(super) fn find(&self, id: &str) -> Option<Key> {
        self.ids.get(id).copied()
    }

    pub(super) fn get(&self, key: Key) -> Option<&Container> {
        self.by_key.get(&key)
    }

    pub(super) fn get_mut(&mut self, key: Key) -> Option<&mut Container> {
        self.by_key.get_mut(&key)
    }

    /// The container with skiffd's id `id`.
    pub(super) fn find_ref(&self, id: &str) -> Option<&Container> {
        self.get(self.find(id)?)
    }

    /// The container with skiffd's id `id`.
    pub(super) fn find_mut(&mut self, id: &str) -> Option<&mut Container> {
        let key = self.find(id)?;
        self.get_mut(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, &Container)> {
        self.by_key.iter().map(|(k, c)| (*k, c))
    }

    /// Every container's id.
    pub(super) fn ids(&self) -> Vec<String> {
        self.by_key.values().map(|c| c.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(id: &str) -> Container {
        Container {
            id: id.into(),
            bundle: PathBuf::from("/b"),
            pid: None,
            status: Status::Created,
            exit: None,
            output: Output::discard(),
            waiters: Vec::new(),
        }
    }

    #[test]
    fn keys_stay_valid_across_removals() {
        let mut cs = Containers::default();
        let a = cs.insert(ctr("a")).unwrap();
        let b = cs.insert(ctr("b")).unwrap();
        let c = cs.insert(ctr("c")).unwrap();
        assert!(cs.insert(ctr("b")).is_none(), "ids are unique");
        // Removing the first one does not shift what the others' keys name.
        cs.remove(a).unwrap();
        assert_eq!(cs.get(b).unwrap().id, "b");
        assert_eq!(cs.get(c).unwrap().id, "c");
        assert!(cs.get(a).is_none());
        // A new container never takes a removed key.
        let d = cs.insert(ctr("a")).unwrap();
        assert_ne!(d, a);
        assert_eq!(cs.find("a"), Some(d));
    }
}
