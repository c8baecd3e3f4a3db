//! The metadata store: skiff's embedded, crash-safe database (redb).
//!
//! Pods, containers, images and IP allocations live here as JSON values under string
//! keys, one redb table per kind. Every write is one durable transaction: a daemon
//! killed at any moment reopens to the last committed state.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A table of the store: a name, string keys, JSON values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table(&'static str);

impl Table {
    /// Store-wide facts (schema version, settings learnt at run time).
    pub const META: Table = Table("meta");
    /// Pod sandboxes by id.
    pub const PODS: Table = Table("pods");
    /// Containers by id.
    pub const CONTAINERS: Table = Table("containers");
    /// Images by id (config digest).
    pub const IMAGES: Table = Table("images");
    /// Image names (references) to image ids.
    pub const IMAGE_NAMES: Table = Table("image_names");
    /// IP allocations by address.
    pub const IPS: Table = Table("ips");

    /// A table with another name, for a later feature's own data.
    pub const fn named(name: &'static str) -> Table {
        Table(name)
    }

    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.0
    }

    fn def(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.0)
    }
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// A failure of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database could not be opened (corrupt, locked by another process, io).
    #[error("cannot open metadata store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: redb::Error,
    },
    /// A database operation failed.
    #[error("metadata store: {op} in table {table}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// The table.
        table: &'static str,
        /// The cause.
        #[source]
        source: redb::Error,
    },
    /// A stored value does not decode (written by a newer skiff, or damaged).
    #[error("metadata store: value {key:?} in table {table} does not decode: {source}")]
    Decode {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by a newer, incompatible skiff.
    #[error(
        "metadata store {path} has schema version {found}; this skiffd understands {SCHEMA_VERSION}"
    )]
    Schema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

fn db_err<E: Into<redb::Error>>(op: &'static str, table: Table) -> impl FnOnce(E) -> MetaError {
    move |e| MetaError::Db {
        op,
        table: table.0,
        source: e.into(),
    }
}

/// The store.
pub struct MetaStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("path", &self.path)
            .finish()
    }
}

/// A write transaction: all its changes commit together or not at all.
pub struct WriteTxn<'a> {
    txn: &'a redb::WriteTransaction,
}

impl WriteTxn<'_> {
    /// Insert or replace `key` in `table`.
    pub fn put<T: Serialize>(
        &mut self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(value).map_err(|source| MetaError::Decode {
            table: table.0,
            key: key.into(),
            source,
        })?;
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(db_err("open", table))?;
        t.insert(key, bytes.as_slice())
            .map_err(db_err("insert", table))?;
        Ok(())
    }

    /// Remove `key` from `table`; whether it was there.
    pub fn delete(&mut self, table: Table, key: &str) -> Result<bool, MetaError> {
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(db_err("open", table))?;
        let old = t.remove(key).map_err(db_err("remove", table))?;
        Ok(old.is_some())
    }

    /// Read `key` from `table` as this transaction sees it.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, MetaError> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(db_err("open", table))?;
        let value = t.get(key).map_err(db_err("get", table))?;
        value.map(|v| decode(table, key, v.value())).transpose()
    }
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|source| MetaError::Decode {
        table: table.0,
        key: key.into(),
        source,
    })
}

impl MetaStore {
    /// Open (or create) the store at `path`. Fails if another process holds it open.
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let open_err = |source: redb::Error| MetaError::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = redb::Database::create(path).map_err(|e| open_err(e.into()))?;
        let store = MetaStore {
            db,
            path: path.to_path_buf(),
        };
        match store.get::<u32>(Table::META, "schema_version")? {
            None => store.put(Table::META, "schema_version", &SCHEMA_VERSION)?,
            Some(v) if v <= SCHEMA_VERSION => {}
            Some(found) => {
                return Err(MetaError::Schema {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` in one durable write transaction; nothing is written if it fails.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R, MetaError>,
    ) -> Result<R, MetaError> {
        let txn = self
            .db
            .begin_write()
            .map_err(db_err("begin", Table::META))?;
        let result = f(&mut WriteTxn { txn: &txn })?;
        txn.commit().map_err(db_err("commit", Table::META))?;
        Ok(result)
    }

    /// Insert or replace one value.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), MetaError> {
        self.write(|tx| tx.put(table, key, value))
    }

    /// Remove one value; whether it was there.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool, MetaError> {
        self.write(|tx| tx.delete(table, key))
    }

    /// Read one value.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err("begin", table))?;
        let t = match txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err("open", table)(e)),
        };
        let value = t.get(key).map_err(db_err("get", table))?;
        value.map(|v| decode(table, key, v.value())).transpose()
    }

    /// Every entry of `table`, in key order; one that does not decode fails the list.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, MetaError> {
        self.list_each(table)?
            .into_iter()
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    /// Every entry of `table`, in key order, each decoded on its own: a damaged entry
    /// is an `Err` beside the others (for lists that must go on showing the rest).
    #[allow(clippy::type_complexity)]
    pub fn list_each<T: DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<(String, Result<T, MetaError>)>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err("begin", table))?;
        let t = match txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err("open", table)(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err("iterate", table))? {
            let (k, v) = entry.map_err(db_err("iterate", table))?;
            let key = k.value().to_string();
            let value = decode(table, &key, v.value());
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Pod {
        name: String,
        ip: Option<String>,
    }

    #[test]
    fn put_get_list_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            assert_eq!(store.get::<Pod>(Table::PODS, "a").unwrap(), None);
            assert!(store.list::<Pod>(Table::PODS).unwrap().is_empty());
            let pod = Pod {
                name: "a".into(),
                ip: None,
            };
            store.put(Table::PODS, "a", &pod).unwrap();
            store
                .write(|tx| {
                    tx.put(
                        Table::PODS,
                        "b",
                        &Pod {
                            name: "b".into(),
                            ip: Some("10.88.0.2".into()),
                        },
                    )?;
                    tx.put(Table::IPS, "10.88.0.2", &"b")?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(store.get::<Pod>(Table::PODS, "a").unwrap(), Some(pod));
            assert!(store.delete(Table::PODS, "a").unwrap());
            assert!(!store.delete(Table::PODS, "a").unwrap());
        }
        let store = MetaStore::open(&path).unwrap();
        let pods = store.list::<Pod>(Table::PODS).unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].0, "b");
        assert_eq!(
            store
                .get::<String>(Table::IPS, "10.88.0.2")
                .unwrap()
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn a_damaged_entry_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let pod = Pod {
            name: "ok".into(),
            ip: None,
        };
        store.put(Table::PODS, "a", &pod).unwrap();
        // Not a Pod: what a damaged (or foreign) record looks like to a reader.
        store.put(Table::PODS, "b", &[1, 2, 3]).unwrap();
        let each = store.list_each::<Pod>(Table::PODS).unwrap();
        assert_eq!(each.len(), 2);
        assert_eq!(each[0].1.as_ref().unwrap(), &pod);
        let e = each[1].1.as_ref().unwrap_err().to_string();
        assert!(e.contains('b'), "the error names the key: {e}");
        // The strict list fails, naming it.
        assert!(store.list::<Pod>(Table::PODS).is_err());
    }

    #[test]
    fn failed_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        let r: Result<(), MetaError> = store.write(|tx| {
            tx.put(Table::PODS, "x", &1u32)?;
            Err(MetaError::Schema {
                path: "/".into(),
                found: 99,
            })
        });
        assert!(r.is_err());
        assert_eq!(store.get::<u32>(Table::PODS, "x").unwrap(), None);
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let _first = MetaStore::open(&path).unwrap();
        let err = MetaStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("m.redb"), "{err}");
    }

    #[test]
    fn undecodable_value_names_table_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        store.put(Table::PODS, "k", &"text").unwrap();
        let err = store.get::<Pod>(Table::PODS, "k").unwrap_err().to_string();
        assert!(err.contains("pods") && err.contains("\"k\""), "{err}");
    }
}
