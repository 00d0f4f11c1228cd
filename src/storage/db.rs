//! The CCM's database: typed tables over sled.
//!
//! One sled `Tree` per record kind (`sites`, `jobs`, `runs`…). A record type
//! implements [`Record`]: its table name, its schema version and its key.
//! Values are stored as a small versioned envelope (`{"v":1,"r":{…}}` in
//! JSON): a newer build can still read, and migrate, what an older one wrote,
//! and a record written by a newer build is refused with a clear error rather
//! than misread. `sled::` types never leave this module.
//!
//! Durability: writes land in sled's log; [`Db::flush`] makes everything
//! written so far durable and is called before anything is acknowledged to
//! a client or a peer. [`Db::transaction`] spans tables for invariants that
//! involve several records.

use std::marker::PhantomData;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::ids::{AssignmentId, AssignmentSerial, JobId, NodeId, RunId};

/// Version of the database layout; bumped when tables change incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

/// A database failure.
#[derive(Debug, Error)]
pub enum DbError {
    /// sled failed (I/O, corruption).
    #[error("database {path}: {message}")]
    Storage {
        /// Where the database is.
        path: String,
        /// sled's message.
        message: String,
    },
    /// A stored record cannot be decoded.
    #[error("table {table}, key {key}: cannot decode the stored record ({message})")]
    Decode {
        /// Table.
        table: &'static str,
        /// Key, printable.
        key: String,
        /// Why.
        message: String,
    },
    /// A record or database written by a newer build.
    #[error(
        "{what} has version {found}, newer than this build's {supported}: run the newer cmover, or restore a backup"
    )]
    TooNew {
        /// What.
        what: String,
        /// Version found.
        found: u64,
        /// Highest this build reads.
        supported: u64,
    },
}

/// The key of a record, as sortable bytes.
pub trait Key {
    /// Bytes that sort like the key.
    fn to_bytes(&self) -> Vec<u8>;
    /// Printable form, for errors.
    fn show(&self) -> String;
}

macro_rules! u64_key {
    ($($t:ty => $get:expr),* $(,)?) => {$(
        impl Key for $t {
            fn to_bytes(&self) -> Vec<u8> {
                #[allow(clippy::redundant_closure_call)]
                ($get)(self).to_be_bytes().to_vec()
            }
            fn show(&self) -> String {
                #[allow(clippy::redundant_closure_call)]
                ($get)(self).to_string()
            }
        }
    )*};
}

u64_key!(
    u64 => |v: &u64| *v,
    NodeId => |v: &NodeId| v.0,
    JobId => |v: &JobId| v.0,
    RunId => |v: &RunId| v.0,
    AssignmentId => |v: &AssignmentId| v.0,
    AssignmentSerial => |v: &AssignmentSerial| v.0,
);

impl Key for String {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    /// The first part is length-prefixed so that tuples sort by it first.
    fn to_bytes(&self) -> Vec<u8> {
        let a = self.0.to_bytes();
        let mut out = (a.len() as u32).to_be_bytes().to_vec();
        out.extend(a);
        out.extend(self.1.to_bytes());
        out
    }
    fn show(&self) -> String {
        format!("({}, {})", self.0.show(), self.1.show())
    }
}

/// A kind of record kept in its own table.
pub trait Record: Serialize + DeserializeOwned {
    /// Name of the table.
    const TABLE: &'static str;
    /// Schema version of the record type.
    const VERSION: u64;
    /// Its key type.
    type Key: Key;
    /// This record's key.
    fn key(&self) -> Self::Key;
    /// Upgrades a record stored by an older version (the default refuses).
    fn migrate(version: u64, value: serde_json::Value) -> Result<Self, String> {
        Err(format!("no migration from version {version}"))
            .and_then(|e: String| serde_json::from_value(value).map_err(|d| format!("{e}: {d}")))
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u64,
    r: T,
}

/// The open database.
#[derive(Clone)]
pub struct Db {
    db: sled::Db,
    path: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.path)
    }
}

/// A typed view of one table.
pub struct Table<R: Record> {
    tree: sled::Tree,
    path: String,
    _r: PhantomData<fn() -> R>,
}

impl<R: Record> Clone for Table<R> {
    fn clone(&self) -> Self {
        Table { tree: self.tree.clone(), path: self.path.clone(), _r: PhantomData }
    }
}

fn storage(path: &str) -> impl Fn(sled::Error) -> DbError + '_ {
    move |e| DbError::Storage { path: path.to_owned(), message: e.to_string() }
}

const META: &str = "meta";

impl Db {
    /// Opens (or creates) the database in directory `path` and checks its schema version.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let shown = path.display().to_string();
        // sled releases its file lock from a background thread a little after
        // the last handle is dropped; a restart in the same process waits for it.
        let mut waited = std::time::Duration::ZERO;
        let db = loop {
            match sled::Config::new().path(path).open() {
                // sled reports the lock as `Other` with this message, or as `WouldBlock`.
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && waited.as_secs() < 10 =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    waited += std::time::Duration::from_millis(20);
                }
                r => break r.map_err(storage(&shown))?,
            }
        };
        Db::init(db, shown)
    }

    /// A database that lives only as long as the value (tests).
    pub fn temporary() -> Result<Db, DbError> {
        let db = sled::Config::new().temporary(true).open().map_err(storage("temporary"))?;
        Db::init(db, "temporary".into())
    }

    fn init(db: sled::Db, path: String) -> Result<Db, DbError> {
        let meta = db.open_tree(META).map_err(storage(&path))?;
        match meta.get("schema_version").map_err(storage(&path))? {
            Some(v) => {
                let found = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                if found > SCHEMA_VERSION {
                    return Err(DbError::TooNew {
                        what: format!("database {path}"),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes()).map_err(storage(&path))?;
            }
        }
        Ok(Db { db, path })
    }

    /// The table of record type `R`.
    pub fn table<R: Record>(&self) -> Result<Table<R>, DbError> {
        let tree = self.db.open_tree(R::TABLE).map_err(storage(&self.path))?;
        Ok(Table { tree, path: self.path.clone(), _r: PhantomData })
    }

    /// The next value of a named counter (1, 2, 3…), durable once flushed.
    pub fn next(&self, counter: &str) -> Result<u64, DbError> {
        let meta = self.db.open_tree(META).map_err(storage(&self.path))?;
        let key = format!("counter/{counter}");
        let new = meta
            .update_and_fetch(key, |old| {
                let n = old.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                Some(n.saturating_add(1).to_be_bytes().to_vec())
            })
            .map_err(storage(&self.path))?;
        Ok(new.and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(1))
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), DbError> {
        self.db.flush().map(|_| ()).map_err(storage(&self.path))
    }
}

impl<R: Record> Table<R> {
    fn encode(&self, r: &R) -> Vec<u8> {
        // Serialising plain data structs to JSON cannot fail.
        serde_json::to_vec(&Envelope { v: R::VERSION, r }).unwrap_or_default()
    }

    fn decode(&self, key: &dyn Fn() -> String, bytes: &[u8]) -> Result<R, DbError> {
        let bad = |message: String| DbError::Decode { table: R::TABLE, key: key(), message };
        let env: Envelope<serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if env.v > R::VERSION {
            return Err(DbError::TooNew {
                what: format!("record {} in table {}", key(), R::TABLE),
                found: env.v,
                supported: R::VERSION,
            });
        }
        if env.v == R::VERSION {
            serde_json::from_value(env.r).map_err(|e| bad(e.to_string()))
        } else {
            R::migrate(env.v, env.r).map_err(bad)
        }
    }

    /// The record with this key.
    pub fn get(&self, key: &R::Key) -> Result<Option<R>, DbError> {
        match self.tree.get(key.to_bytes()).map_err(storage(&self.path))? {
            Some(v) => self.decode(&|| key.show(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Inserts or replaces a record; returns the previous one.
    pub fn put(&self, r: &R) -> Result<Option<R>, DbError> {
        let key = r.key();
        let old = self.tree.insert(key.to_bytes(), self.encode(r)).map_err(storage(&self.path))?;
        old.map(|v| self.decode(&|| key.show(), &v)).transpose()
    }

    /// Deletes a record; returns it.
    pub fn delete(&self, key: &R::Key) -> Result<Option<R>, DbError> {
        let old = self.tree.remove(key.to_bytes()).map_err(storage(&self.path))?;
        old.map(|v| self.decode(&|| key.show(), &v)).transpose()
    }

    /// Every record, in key order.
    pub fn all(&self) -> Result<Vec<R>, DbError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(storage(&self.path))?;
                self.decode(&|| hex::encode(&k), &v)
            })
            .collect()
    }

    /// The last `n` records in key order, the last first (for ids: newest first).
    pub fn last(&self, n: usize) -> Result<Vec<R>, DbError> {
        self.tree
            .iter()
            .rev()
            .take(n)
            .map(|kv| {
                let (k, v) = kv.map_err(storage(&self.path))?;
                self.decode(&|| hex::encode(&k), &v)
            })
            .collect()
    }

    /// Records whose key starts with the first part `prefix` of a tuple key.
    pub fn with_prefix<A: Key>(&self, prefix: &A) -> Result<Vec<R>, DbError> {
        let a = prefix.to_bytes();
        let mut p = (a.len() as u32).to_be_bytes().to_vec();
        p.extend(a);
        self.tree
            .scan_prefix(p)
            .map(|kv| {
                let (k, v) = kv.map_err(storage(&self.path))?;
                self.decode(&|| hex::encode(&k), &v)
            })
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Reads, changes and writes a record atomically (retried on conflict).
    /// `f` gets the current record (if any) and returns the new one (or
    /// `None` to delete). Returns what was stored.
    pub fn update(
        &self,
        key: &R::Key,
        mut f: impl FnMut(Option<R>) -> Option<R>,
    ) -> Result<Option<R>, DbError> {
        let k = key.to_bytes();
        loop {
            let current = self.tree.get(&k).map_err(storage(&self.path))?;
            let decoded = current.as_ref().map(|v| self.decode(&|| key.show(), v)).transpose()?;
            let new = f(decoded);
            let new_bytes = new.as_ref().map(|r| self.encode(r));
            match self.tree.compare_and_swap(&k, current, new_bytes).map_err(storage(&self.path))? {
                Ok(()) => return Ok(new),
                Err(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        id: u64,
        name: String,
    }

    impl Record for Thing {
        const TABLE: &'static str = "things";
        const VERSION: u64 = 2;
        type Key = u64;
        fn key(&self) -> u64 {
            self.id
        }
        fn migrate(version: u64, value: serde_json::Value) -> Result<Self, String> {
            // Version 1 called the field `title`.
            if version == 1 {
                let id = value["id"].as_u64().ok_or("no id")?;
                let name = value["title"].as_str().ok_or("no title")?.to_owned();
                return Ok(Thing { id, name });
            }
            Err(format!("unknown version {version}"))
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pair {
        site: String,
        serial: u64,
    }

    impl Record for Pair {
        const TABLE: &'static str = "pairs";
        const VERSION: u64 = 1;
        type Key = (String, u64);
        fn key(&self) -> (String, u64) {
            (self.site.clone(), self.serial)
        }
    }

    #[test]
    fn put_get_delete_update_and_counters() {
        let db = Db::temporary().unwrap();
        let t = db.table::<Thing>().unwrap();
        assert_eq!(t.put(&Thing { id: 1, name: "a".into() }).unwrap(), None);
        assert_eq!(t.put(&Thing { id: 1, name: "b".into() }).unwrap().unwrap().name, "a");
        assert_eq!(t.get(&1).unwrap().unwrap().name, "b");
        let r = t.update(&1, |cur| {
            cur.map(|mut c| {
                c.name.push('!');
                c
            })
        });
        assert_eq!(r.unwrap().unwrap().name, "b!");
        assert_eq!(t.delete(&1).unwrap().unwrap().name, "b!");
        assert!(t.get(&1).unwrap().is_none());
        assert_eq!((db.next("jobs").unwrap(), db.next("jobs").unwrap(), db.next("runs").unwrap()), (1, 2, 1));
    }

    #[test]
    fn last_gives_the_highest_keys_first() {
        let db = Db::temporary().unwrap();
        let t = db.table::<Thing>().unwrap();
        for id in [3, 300, 1, 256, 2] {
            t.put(&Thing { id, name: id.to_string() }).unwrap();
        }
        let ids: Vec<u64> = t.last(3).unwrap().iter().map(|x| x.id).collect();
        assert_eq!(ids, [300, 256, 3]);
        assert_eq!(t.last(10).unwrap().len(), 5);
    }

    #[test]
    fn tuple_keys_scan_by_their_first_part() {
        let db = Db::temporary().unwrap();
        let t = db.table::<Pair>().unwrap();
        for (site, serial) in [("a", 2), ("ab", 1), ("a", 1), ("b", 9)] {
            t.put(&Pair { site: site.into(), serial }).unwrap();
        }
        let a: Vec<u64> = t.with_prefix(&"a".to_string()).unwrap().iter().map(|p| p.serial).collect();
        assert_eq!(a, [1, 2], "'ab' must not match prefix 'a'");
    }

    #[test]
    fn old_records_migrate_and_newer_ones_are_refused() {
        let db = Db::temporary().unwrap();
        let t = db.table::<Thing>().unwrap();
        t.tree.insert(7u64.to_be_bytes(), br#"{"v":1,"r":{"id":7,"title":"old"}}"#.to_vec()).unwrap();
        assert_eq!(t.get(&7).unwrap().unwrap().name, "old");
        t.tree.insert(8u64.to_be_bytes(), br#"{"v":3,"r":{}}"#.to_vec()).unwrap();
        let err = t.get(&8).unwrap_err();
        assert!(matches!(err, DbError::TooNew { found: 3, supported: 2, .. }), "{err}");
        t.tree.insert(9u64.to_be_bytes(), b"garbage".to_vec()).unwrap();
        assert!(matches!(t.get(&9), Err(DbError::Decode { table: "things", .. })));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u64, String),
        Delete(u64),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..20, "[a-z]{0,8}").prop_map(|(k, v)| Op::Put(k, v)),
            (0u64..20).prop_map(Op::Delete),
            Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Random operations, including closing and reopening the database,
        /// against a BTreeMap model (as in sled's own tests).
        #[test]
        fn behaves_like_a_map_across_reopens(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut db = Db::open(dir.path()).unwrap();
            let mut model = BTreeMap::new();
            for op in ops {
                let t = db.table::<Thing>().unwrap();
                match op {
                    Op::Put(k, v) => {
                        t.put(&Thing { id: k, name: v.clone() }).unwrap();
                        model.insert(k, v);
                    }
                    Op::Delete(k) => {
                        t.delete(&k).unwrap();
                        model.remove(&k);
                    }
                    Op::Reopen => {
                        db.flush().unwrap();
                        drop(t);
                        drop(db);
                        db = Db::open(dir.path()).unwrap();
                    }
                }
                let got: BTreeMap<u64, String> =
                    db.table::<Thing>().unwrap().all().unwrap().into_iter().map(|t| (t.id, t.name)).collect();
                prop_assert_eq!(&got, &model);
            }
        }
    }
}
