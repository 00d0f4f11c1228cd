//! Building an assignment from two trees: the old one (the CCM's shadow copy
//! of what is live) and the new one (staging).
//!
//! [`pack`] scans both trees, plans the change ([`delta::plan`]), and writes
//! the commands in the order a server must run them: removals, new
//! directories, moves, file contents and symlinks, then mode changes. A
//! changed file is sent as a byte delta when the delta is clearly smaller
//! than the file, whole otherwise. The assignment is written to a temporary
//! file beside the output and renamed into place, so a crash never leaves a
//! half-written assignment under the final name.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::tree::{check_links, hash_file, scan, ScanError, TreeFilter};
use crate::protocol::assignment::{AssignmentWriter, Command, FileMeta, NewAssignment};
use crate::protocol::crypto::{ContentKey, Digest, Sha256};
use crate::protocol::delta::{self, EntryKind, Manifest, Side};
use crate::protocol::ids::{AssignmentSerial, JobId};
use crate::protocol::paths::{SiteName, SitePath};

/// Why an assignment could not be built.
#[derive(Debug, Error)]
pub enum PackError {
    /// One of the trees could not be read.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// Reading a file or writing the assignment failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The options do not make sense for these trees.
    #[error("{0}")]
    Options(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.to_owned(), source }
}

/// How to build an assignment.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The site the assignment belongs to.
    pub site: SiteName,
    /// Serial of the release the assignment builds.
    pub serial: AssignmentSerial,
    /// Serial of the release built from the old tree. Ignored (0) when the
    /// old tree is empty; required otherwise.
    pub base_serial: AssignmentSerial,
    /// The job (0 offline).
    pub job_id: JobId,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Which entries are content.
    pub filter: TreeFilter,
    /// Lowercase extensions whose data is stored without compression.
    pub incompressible: HashSet<String>,
    /// Which files may be compressed (a job's compression include/exclude).
    pub compression: TreeFilter,
    /// Keep a compressed chunk only if it saves this fraction.
    pub min_compression_gain: f64,
    /// Encrypt the data with this key and random salt.
    pub encrypt: Option<(ContentKey, [u8; 32])>,
}

/// What went into an assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PackSummary {
    /// Serial of the release it builds.
    pub serial: u64,
    /// Release it is a delta against (0: full).
    pub base_serial: u64,
    /// Files sent whole because they are new.
    pub files_new: u64,
    /// Changed files (as deltas or whole).
    pub files_changed: u64,
    /// Of those, sent as deltas.
    pub files_patched: u64,
    /// Entries removed (outermost only).
    pub removed: u64,
    /// Files moved without resending.
    pub files_renamed: u64,
    /// New directories.
    pub dirs_new: u64,
    /// New or changed symlinks.
    pub symlinks: u64,
    /// Mode or mtime changes.
    pub attr_changes: u64,
    /// Commands in the assignment.
    pub commands: u64,
    /// Bytes of data before compression.
    pub data_raw_bytes: u64,
    /// Bytes of data as stored (compressed, framed).
    pub data_stored_bytes: u64,
    /// Size of the assignment file.
    pub assignment_bytes: u64,
}

impl std::fmt::Display for PackSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "assignment {} ({}): {} new, {} changed ({} as deltas), {} removed, {} renamed, {} dirs, {} symlinks, \
             {} mode changes; data {} bytes raw, {} stored; file {} bytes",
            self.serial,
            if self.base_serial == 0 { "full".to_string() } else { format!("delta from {}", self.base_serial) },
            self.files_new,
            self.files_changed,
            self.files_patched,
            self.removed,
            self.files_renamed,
            self.dirs_new,
            self.symlinks,
            self.attr_changes,
            self.data_raw_bytes,
            self.data_stored_bytes,
            self.assignment_bytes,
        )
    }
}

/// What an assignment from `old` to `new` would change, for people to read
/// before a run: counts, and the first paths with a sign (`+` new, `~`
/// changed, `-` removed, `>` moved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChangePreview {
    /// New files.
    pub files_new: u64,
    /// Changed files.
    pub files_changed: u64,
    /// Entries removed (outermost only).
    pub removed: u64,
    /// Files moved.
    pub files_renamed: u64,
    /// New directories.
    pub dirs_new: u64,
    /// New or changed symlinks.
    pub symlinks: u64,
    /// Mode or mtime changes.
    pub attr_changes: u64,
    /// The first paths, each with its sign.
    pub paths: Vec<String>,
    /// Paths not listed.
    pub more: u64,
}

impl ChangePreview {
    /// True when the trees are the same.
    pub fn is_empty(&self) -> bool {
        self.files_new
            + self.files_changed
            + self.removed
            + self.files_renamed
            + self.dirs_new
            + self.symlinks
            + self.attr_changes
            == 0
    }
}

/// The changes that turn `old` into `new` (entries `filter` selects), with
/// at most `first` paths listed. Reads only what the plan must (the hashes
/// of files whose size is equal and mtime not); writes nothing.
pub fn preview(
    old: &Path,
    new: &Path,
    filter: &TreeFilter,
    first: usize,
) -> Result<ChangePreview, PackError> {
    if !new.is_dir() {
        return Err(PackError::Options(format!("new tree {} is not a directory", new.display())));
    }
    let old_m = scan(old, filter)?;
    let new_m = scan(new, filter)?;
    let cs = delta::plan(&old_m, &new_m, |side, p| {
        let path = p.under(if side == Side::Old { old } else { new });
        hash_file(&path).map_err(io_at(&path))
    })?;
    let n = |v: usize| v as u64;
    let mut all = Vec::new();
    all.extend(cs.added.iter().map(|p| format!("+ {}", p.as_str())));
    all.extend(cs.changed.iter().map(|p| format!("~ {}", p.as_str())));
    all.extend(cs.renamed.iter().map(|r| format!("> {} -> {}", r.from.as_str(), r.to.as_str())));
    all.extend(cs.removed.iter().map(|p| format!("- {}", p.as_str())));
    all.extend(cs.symlinks.iter().map(|(p, t)| format!("@ {} -> {t}", p.as_str())));
    let more = all.len().saturating_sub(first) as u64;
    all.truncate(first);
    Ok(ChangePreview {
        files_new: n(cs.added.len()),
        files_changed: n(cs.changed.len()),
        removed: n(cs.removed.len()),
        files_renamed: n(cs.renamed.len()),
        dirs_new: n(cs.dirs.len()),
        symlinks: n(cs.symlinks.len()),
        attr_changes: n(cs.attrs.len()),
        paths: all,
        more,
    })
}

/// A delta is sent only when it is at most this fraction of the file.
const DELTA_WORTH: f64 = 0.9;

struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Builds an assignment turning `old` into `new`, written to `out`. A
/// missing or empty `old` makes a full assignment.
pub fn pack(old: &Path, new: &Path, out: &Path, opts: &PackOptions) -> Result<PackSummary, PackError> {
    if !new.is_dir() {
        return Err(PackError::Options(format!("new tree {} is not a directory", new.display())));
    }
    let old_m = scan(old, &opts.filter)?;
    let new_m = scan(new, &opts.filter)?;
    check_links(new, &new_m)?;
    let base_serial = if old_m.is_empty() { AssignmentSerial(0) } else { opts.base_serial };
    if !old_m.is_empty() && (base_serial.0 == 0 || base_serial >= opts.serial) {
        return Err(PackError::Options(format!(
            "the old tree is not empty, so assignment {} is a delta against the release built from it: \
             give that release's serial (below {}) as the base serial",
            opts.serial, opts.serial
        )));
    }
    let changes = delta::plan(&old_m, &new_m, |side, p| {
        let root = if side == Side::Old { old } else { new };
        let path = p.under(root);
        hash_file(&path).map_err(io_at(&path))
    })?;

    let tmp = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("assignment")
    ));
    let result = write(old, new, &tmp, opts, base_serial, &new_m, &changes);
    match result {
        Ok(mut summary) => {
            fs::rename(&tmp, out).map_err(io_at(out))?;
            summary.assignment_bytes = fs::metadata(out).map_err(io_at(out))?.len();
            Ok(summary)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write(
    old: &Path,
    new: &Path,
    tmp: &Path,
    opts: &PackOptions,
    base_serial: AssignmentSerial,
    new_m: &Manifest,
    cs: &delta::ChangeSet,
) -> Result<PackSummary, PackError> {
    let file = fs::File::create(tmp).map_err(io_at(tmp))?;
    let params = NewAssignment {
        site: opts.site.clone(),
        serial: opts.serial,
        base_serial,
        job_id: opts.job_id,
        created_ms: opts.created_ms,
        min_compression_gain: opts.min_compression_gain,
    };
    let key = opts.encrypt.as_ref().map(|(k, salt)| (k, *salt));
    let mut w =
        AssignmentWriter::new(BufWriter::with_capacity(1 << 20, file), params, key).map_err(io_at(tmp))?;
    let mut s = PackSummary { serial: opts.serial.0, base_serial: base_serial.0, ..PackSummary::default() };
    let compress = |p: &SitePath| {
        p.extension().is_none_or(|e| !opts.incompressible.contains(&e)) && opts.compression.selects(p)
    };
    let meta_of = |p: &SitePath| match new_m.get(p) {
        Some(EntryKind::File { meta, .. }) => *meta,
        _ => FileMeta::default(),
    };

    for path in &cs.removed {
        w.push(&Command::Remove { path: path.clone() });
    }
    for (path, mode) in &cs.dirs {
        w.push(&Command::MakeDir { path: path.clone(), mode: *mode });
    }
    for r in &cs.renamed {
        w.push(&Command::Rename { from: r.from.clone(), to: r.to.clone(), sha256: r.sha256 });
    }

    enum Item<'a> {
        Put(&'a SitePath),
        Change(&'a SitePath),
        Link(&'a SitePath, &'a str),
    }
    let mut items: Vec<Item<'_>> = cs.added.iter().map(Item::Put).collect();
    items.extend(cs.changed.iter().map(Item::Change));
    items.extend(cs.symlinks.iter().map(|(p, t)| Item::Link(p, t.as_str())));
    items.sort_by(|a, b| {
        let key = |i: &Item<'_>| match i {
            Item::Put(p) | Item::Change(p) | Item::Link(p, _) => (*p).clone(),
        };
        key(a).cmp(&key(b))
    });

    for item in items {
        match item {
            Item::Put(path) => {
                let src = path.under(new);
                let f = fs::File::open(&src).map_err(io_at(&src))?;
                let mut reader = Hashing { inner: f, hash: Sha256::default() };
                let (data, stats) = w.add_section(&mut reader, compress(path)).map_err(io_at(&src))?;
                s.data_raw_bytes += stats.raw;
                s.data_stored_bytes += stats.stored;
                s.files_new += 1;
                w.push(&Command::PutFile {
                    path: path.clone(),
                    meta: meta_of(path),
                    size: data.raw_len,
                    sha256: reader.hash.digest(),
                    data,
                });
            }
            Item::Change(path) => {
                let (old_path, new_path) = (path.under(old), path.under(new));
                let old_bytes = fs::read(&old_path).map_err(io_at(&old_path))?;
                let new_bytes = fs::read(&new_path).map_err(io_at(&new_path))?;
                let ops = delta::compute(&old_bytes, &new_bytes);
                let sha256 = Digest::of(&new_bytes);
                s.files_changed += 1;
                let cmd_data;
                if (delta::encoded_len(&ops) as f64) <= new_bytes.len() as f64 * DELTA_WORTH {
                    let mut enc = Vec::with_capacity(delta::encoded_len(&ops));
                    delta::encode(&ops, &mut enc);
                    let (data, stats) = w.add_section(&mut &enc[..], compress(path)).map_err(io_at(tmp))?;
                    cmd_data = (
                        stats,
                        Command::PatchFile {
                            path: path.clone(),
                            base: path.clone(),
                            base_sha256: Digest::of(&old_bytes),
                            meta: meta_of(path),
                            size: new_bytes.len() as u64,
                            sha256,
                            data,
                        },
                    );
                    s.files_patched += 1;
                } else {
                    let (data, stats) =
                        w.add_section(&mut &new_bytes[..], compress(path)).map_err(io_at(tmp))?;
                    cmd_data = (
                        stats,
                        Command::PutFile {
                            path: path.clone(),
                            meta: meta_of(path),
                            size: new_bytes.len() as u64,
                            sha256,
                            data,
                        },
                    );
                }
                s.data_raw_bytes += cmd_data.0.raw;
                s.data_stored_bytes += cmd_data.0.stored;
                w.push(&cmd_data.1);
            }
            Item::Link(path, target) => {
                w.push(&Command::Symlink { path: path.clone(), target: target.to_owned() });
            }
        }
    }
    for (path, mode, mtime) in &cs.attrs {
        w.push(&Command::SetMode { path: path.clone(), mode: *mode, mtime: *mtime });
    }
    s.removed = cs.removed.len() as u64;
    s.files_renamed = cs.renamed.len() as u64;
    s.dirs_new = cs.dirs.len() as u64;
    s.symlinks = cs.symlinks.len() as u64;
    s.attr_changes = cs.attrs.len() as u64;
    let (header, out) = w.finish().map_err(io_at(tmp))?;
    s.commands = u64::from(header.command_count);
    out.into_inner().map_err(|e| PackError::Io { path: tmp.to_owned(), source: e.into_error() })?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_counts_what_a_run_would_change_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
        fs::create_dir_all(old.join("docs")).unwrap();
        fs::write(old.join("index.html"), "v1").unwrap();
        fs::write(old.join("gone.html"), "bye").unwrap();
        fs::write(old.join("docs/a.html"), "same").unwrap();
        copy_dir(&old, &new);
        fs::remove_file(new.join("gone.html")).unwrap();
        fs::write(new.join("index.html"), "version 2").unwrap();
        fs::write(new.join("new.html"), "hello").unwrap();
        let filter = TreeFilter::new(&[], &[]).unwrap();
        let p = preview(&old, &new, &filter, 2).unwrap();
        assert_eq!((p.files_new, p.files_changed, p.removed), (1, 1, 1), "{p:?}");
        assert_eq!(p.paths, vec!["+ new.html".to_string(), "~ index.html".into()]);
        assert_eq!(p.more, 1);
        assert!(!p.is_empty());
        let same = preview(&new, &new, &filter, 10).unwrap();
        assert!(same.is_empty() && same.paths.is_empty(), "{same:?}");
        // Nothing was written beside the trees.
        let mut names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec!["new", "old"]);
    }

    fn copy_dir(from: &Path, to: &Path) {
        super::super::tree::copy_tree(from, to).unwrap();
    }
}
