//! The agent's small local state store: which assignments it has carried
//! out (so a re-delivered or re-fetched one is not applied twice, across
//! restarts too) and which verified copies it holds, with their SHA-256.
//!
//! What is live is *not* kept here: the site roots say it themselves (the
//! `live` symlink), so the two can never disagree.
//!
//! The store is one small JSON file, `agent-state.json` in the agent's data
//! directory, rewritten whole on every change: a temporary file is written,
//! flushed to disk, renamed over the old one and the directory flushed, so a
//! crash leaves the old state or the new one, never a mix. Every write
//! returns only once it is durable, so a result is recorded before it is
//! reported. Records are few (one per assignment) and the oldest are pruned
//! beyond [`KEEP_RECORDS`].

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::protocol::assignment::Kind;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Name of the store's file in the data directory.
pub const STATE_FILE: &str = "agent-state.json";
/// Records of applied assignments kept; older ones are pruned.
pub const KEEP_RECORDS: usize = 4096;
const VERSION: u32 = 1;

/// The state store could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// A file system call failed.
    #[error("agent state {path}: cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not a state store this version understands.
    #[error(
        "agent state {path} is unreadable ({message}); move it away to start with an empty state \
         (assignments already applied are then recognised by their releases only)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// An assignment this agent carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The site.
    pub site: String,
    /// The release serial it concerned.
    pub serial: u64,
    /// What it did.
    pub kind: Kind,
    /// When, Unix milliseconds.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// Assignment id → what was done.
    applied: BTreeMap<u64, Applied>,
    /// Assignment id → SHA-256 (hex) of the verified copy held.
    #[serde(default)]
    held: BTreeMap<u64, String>,
}

/// The store. Cheap to share behind an `Arc`; every method locks it briefly.
#[derive(Debug)]
pub struct AgentState {
    path: PathBuf,
    state: Mutex<StateFile>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io { op, path: path.to_owned(), source }
}

impl AgentState {
    /// Opens (or starts) the store in `dir`, creating the directory.
    pub fn open(dir: &Path) -> Result<AgentState, StateError> {
        fs::create_dir_all(dir).map_err(io_err("create the directory", dir))?;
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                StateFile { version: VERSION, ..StateFile::default() }
            }
            Err(e) => return Err(io_err("read", &path)(e)),
            Ok(bytes) => {
                let s: StateFile = serde_json::from_slice(&bytes)
                    .map_err(|e| StateError::Corrupt { path: path.clone(), message: e.to_string() })?;
                if s.version != VERSION {
                    return Err(StateError::Corrupt {
                        path,
                        message: format!("version {} (this agent writes {VERSION})", s.version),
                    });
                }
                s
            }
        };
        Ok(AgentState { path, state: Mutex::new(state) })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateFile> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was done with assignment `id`, if it was carried out.
    pub fn applied(&self, id: u64) -> Option<Applied> {
        self.lock().applied.get(&id).cloned()
    }

    /// Every assignment carried out, by id.
    pub fn all_applied(&self) -> BTreeMap<u64, Applied> {
        self.lock().applied.clone()
    }

    /// Records that assignment `id` was carried out; durable on return.
    pub fn record_applied(&self, id: u64, applied: Applied) -> Result<(), StateError> {
        self.update(|s| {
            s.applied.insert(id, applied);
            while s.applied.len() > KEEP_RECORDS {
                s.applied.pop_first();
            }
        })
    }

    /// The verified copies held: id → SHA-256.
    pub fn held(&self) -> BTreeMap<u64, [u8; 32]> {
        self.lock()
            .held
            .iter()
            .filter_map(|(id, h)| {
                let bytes: [u8; 32] = hex::decode(h).ok()?.try_into().ok()?;
                Some((*id, bytes))
            })
            .collect()
    }

    /// The SHA-256 of the verified copy of `id`, if one is held.
    pub fn held_hash(&self, id: u64) -> Option<[u8; 32]> {
        self.held().get(&id).copied()
    }

    /// Records that a verified copy of `id` with SHA-256 `hash` is held.
    pub fn record_held(&self, id: u64, hash: [u8; 32]) -> Result<(), StateError> {
        let h = hex::encode(hash);
        if self.lock().held.get(&id) == Some(&h) {
            return Ok(());
        }
        self.update(|s| {
            s.held.insert(id, h);
        })
    }

    /// Forgets the copies of these ids (their files are gone).
    pub fn forget_held(&self, ids: &[u64]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.update(|s| {
            for id in ids {
                s.held.remove(id);
            }
        })
    }

    /// Applies `change` and writes the store durably. On a write error the
    /// change stays in memory (and is written with the next change).
    fn update(&self, change: impl FnOnce(&mut StateFile)) -> Result<(), StateError> {
        let mut s = self.lock();
        change(&mut s);
        let bytes = serde_json::to_vec_pretty(&*s)
            .map_err(|e| StateError::Corrupt { path: self.path.clone(), message: e.to_string() })?;
        write_atomically(&self.path, &bytes)
    }
}

/// Writes `bytes` to `path` through a flushed temporary file renamed over it,
/// then flushes the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("flush", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("flush the directory of", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(serial: u64, kind: Kind) -> Applied {
        Applied { site: "www".into(), serial, kind, at_ms: 5 }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = AgentState::open(dir.path()).unwrap();
        assert_eq!(s.applied(7), None);
        s.record_applied(7, applied(3, Kind::Content)).unwrap();
        s.record_held(7, [9; 32]).unwrap();
        s.record_held(8, [1; 32]).unwrap();
        s.forget_held(&[8]).unwrap();
        drop(s);
        let s = AgentState::open(dir.path()).unwrap();
        assert_eq!(s.applied(7), Some(applied(3, Kind::Content)));
        assert_eq!(s.held_hash(7), Some([9; 32]));
        assert_eq!(s.held_hash(8), None);
        s.record_applied(8, applied(2, Kind::Rollback)).unwrap();
        drop(s);
        let s = AgentState::open(dir.path()).unwrap();
        assert_eq!(s.all_applied().len(), 2);
        assert!(!dir.path().join("agent-state.tmp").exists());
    }

    #[test]
    fn old_records_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = AgentState::open(dir.path()).unwrap();
        {
            let mut st = s.lock();
            for id in 0..KEEP_RECORDS as u64 {
                st.applied.insert(id, applied(id, Kind::Content));
            }
        }
        s.record_applied(KEEP_RECORDS as u64, applied(0, Kind::Commit)).unwrap();
        assert_eq!(s.all_applied().len(), KEEP_RECORDS);
        assert_eq!(s.applied(0), None);
    }

    #[test]
    fn a_corrupt_store_is_named_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        let err = AgentState::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(STATE_FILE) && err.contains("move it away"), "{err}");
    }
}
