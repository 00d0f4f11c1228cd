//! Checkpoints: compressed archives of a site's shadow copy, to restore later.
//!
//! DESIGN §4 ("Other job types") and §7: a checkpoint is the site's live
//! release, as the CCM's shadow copy holds it, packed as a `tar` stream
//! inside an lz4 frame. One directory holds them all:
//!
//! ```text
//! <dir>/<site>/<id>-<serial>.tar.lz4    the archive
//! <dir>/<site>/<id>-<serial>.json       its CheckpointInfo (written last: the commit mark)
//! ```
//!
//! Both files are written to a temporary name, fsynced and renamed, the
//! archive first; a checkpoint without its JSON file does not exist. The
//! archive keeps regular files, directories and symlinks (as links, never
//! followed), permission bits and file mtimes. Every path must be a valid
//! [`SitePath`] and every symlink must stay inside the tree
//! ([`check_symlink_target`]), the same rules as for assignments, so that a
//! checkpoint can always be restored.
//!
//! Extracting trusts nothing on disk: the archive's SHA-256 and size are
//! checked against the JSON record before anything is written; every entry
//! path is checked again, no path is resolved through a symlink, files are
//! created with `O_EXCL` (never over an existing link), and the
//! decompressed stream and entry count are bounded by the record and by
//! [`Limits`]. On any error the destination is left empty.

// Sizes and counts here come from the network or the disk: no silent
// truncation (tests may build what they like).
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use lz4_flex::frame::{FrameDecoder, FrameEncoder};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::crypto::Sha256;
use crate::protocol::paths::{check_symlink_target, PathError, SiteName, SitePath};

/// What a checkpoint holds, as recorded beside its archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The checkpoint's number (from the CCM's counter; grows with time).
    pub id: u64,
    /// The site.
    pub site: String,
    /// The release (assignment serial) the tree was at.
    pub serial: u64,
    /// Size of the archive file (compressed), in bytes.
    pub bytes: u64,
    /// Regular files and symlinks in the tree.
    pub files: u64,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// SHA-256 of the archive file, hex.
    pub sha256: String,
    /// All entries, directories included.
    #[serde(default)]
    pub entries: u64,
    /// Size of the uncompressed tar stream, in bytes.
    #[serde(default)]
    pub tar_bytes: u64,
}

/// Hard caps on what one extraction may produce, whatever the record says
/// (the record is on disk too, and could be rewritten along with the archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries in one archive.
    pub max_entries: u64,
    /// Most bytes of uncompressed tar stream.
    pub max_tar_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 10_000_000,
            max_tar_bytes: 1 << 40, // 1 TiB
        }
    }
}

/// Why a checkpoint could not be made, listed, removed or extracted.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A file system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The site name is not a safe directory name.
    #[error(transparent)]
    BadSite(#[from] PathError),
    /// A checkpoint with this id exists already.
    #[error("checkpoint {id} of site {site} exists already: use a new id")]
    Exists {
        /// The site.
        site: String,
        /// The id.
        id: u64,
    },
    /// No checkpoint with this id.
    #[error("site {site} has no checkpoint {id}")]
    NotFound {
        /// The site.
        site: String,
        /// The id.
        id: u64,
    },
    /// The tree to archive holds something a checkpoint cannot keep.
    #[error("cannot archive {path}: {reason}")]
    Unarchivable {
        /// The offending file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The extraction target exists and is not an empty directory.
    #[error("{path} exists and is not an empty directory: extract into a new or empty directory")]
    DestNotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// The archive does not match its record: damaged or tampered with.
    #[error(
        "checkpoint {id} of site {site} is corrupt ({what}): expected {expected}, found {found}; \
         restore another checkpoint"
    )]
    Corrupt {
        /// The site.
        site: String,
        /// The id.
        id: u64,
        /// What differs.
        what: &'static str,
        /// What the record says.
        expected: String,
        /// What is on disk.
        found: String,
    },
    /// An entry of the archive is unsafe or malformed; nothing was kept.
    #[error("checkpoint {id} of site {site}: entry {entry:?} refused: {reason}")]
    BadEntry {
        /// The site.
        site: String,
        /// The id.
        id: u64,
        /// The entry's path as stored.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive is bigger than its record or the limits allow.
    #[error("checkpoint {id} of site {site} exceeds its {what} limit of {limit}: refusing to extract")]
    TooLarge {
        /// The site.
        site: String,
        /// The id.
        id: u64,
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A record file that cannot be read as JSON.
    #[error("checkpoint record {path} is unreadable: {reason}; delete it and its archive")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io { op, path: path.to_owned(), source }
}

/// The checkpoints of every site, in one directory.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    limits: Limits,
}

impl Checkpoints {
    /// Checkpoints kept under `dir` (created when the first is made).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Checkpoints { dir: dir.into(), limits: Limits::default() }
    }

    /// The same, with other extraction caps.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn site_dir(&self, site: &str) -> Result<PathBuf, CheckpointError> {
        let name = SiteName::new(site)?;
        Ok(self.dir.join(name.as_str()))
    }

    /// Path of the archive of `info`.
    pub fn archive_path(&self, info: &CheckpointInfo) -> Result<PathBuf, CheckpointError> {
        Ok(self.site_dir(&info.site)?.join(format!("{}-{}.tar.lz4", info.id, info.serial)))
    }

    fn record_path(&self, info: &CheckpointInfo) -> Result<PathBuf, CheckpointError> {
        Ok(self.site_dir(&info.site)?.join(format!("{}-{}.json", info.id, info.serial)))
    }

    /// Archives `tree` as checkpoint `id` of `site` at release `serial`,
    /// atomically (temp file + fsync + rename); returns its info.
    pub fn create(
        &self,
        site: &str,
        id: u64,
        serial: u64,
        tree: &Path,
        created_ms: u64,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let site_dir = self.site_dir(site)?;
        if self.get(site, id)?.is_some() {
            return Err(CheckpointError::Exists { site: site.to_owned(), id });
        }
        fs::create_dir_all(&site_dir).map_err(io_err("create directory", &site_dir))?;

        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{id}-{serial}."))
            .suffix(".tmp")
            .tempfile_in(&site_dir)
            .map_err(io_err("create temporary file in", &site_dir))?;
        let file = tmp.as_file().try_clone().map_err(io_err("open", tmp.path()))?;
        let hashed = Counting::new(BufWriter::new(file));
        let tar_stream = Counting::new(FrameEncoder::new(hashed));
        let mut builder = tar::Builder::new(tar_stream);
        builder.follow_symlinks(false);
        let counts = append_tree(&mut builder, tree)?;
        let tar_stream = builder.into_inner().map_err(io_err("write archive for", tree))?;
        let tar_bytes = tar_stream.count;
        let hashed = tar_stream.inner.finish().map_err(|e| CheckpointError::Io {
            op: "compress archive of",
            path: tree.to_owned(),
            source: e.into(),
        })?;
        let Counting { inner, count: bytes, hash } = hashed;
        let digest = hash.digest();
        let file = inner.into_inner().map_err(|e| CheckpointError::Io {
            op: "write",
            path: tmp.path().to_owned(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("fsync", tmp.path()))?;

        let info = CheckpointInfo {
            id,
            site: site.to_owned(),
            serial,
            bytes,
            files: counts.files,
            created_ms,
            sha256: digest.to_string(),
            entries: counts.entries,
            tar_bytes,
        };
        let archive = self.archive_path(&info)?;
        tmp.persist(&archive).map_err(|e| CheckpointError::Io {
            op: "rename into place",
            path: archive.clone(),
            source: e.error,
        })?;
        let record = self.record_path(&info)?;
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| CheckpointError::BadRecord { path: record.clone(), reason: e.to_string() })?;
        let written = write_atomically(&site_dir, &record, &json);
        if written.is_err() {
            let _ = fs::remove_file(&archive);
        }
        written?;
        sync_dir(&site_dir)?;
        Ok(info)
    }

    /// The checkpoints of `site`, oldest (lowest id) first. Archives without
    /// their record (a crash while creating) are not listed.
    pub fn list(&self, site: &str) -> Result<Vec<CheckpointInfo>, CheckpointError> {
        let site_dir = self.site_dir(site)?;
        let entries = match fs::read_dir(&site_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &site_dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &site_dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = entry.path();
            let bad = |reason: String| CheckpointError::BadRecord { path: path.clone(), reason };
            let data = read_small(&path)?;
            let info: CheckpointInfo = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
            if info.site != site || format!("{}-{}.json", info.id, info.serial) != name {
                return Err(bad(format!("it describes checkpoint {} of site {}", info.id, info.site)));
            }
            out.push(info);
        }
        out.sort_by_key(|i| i.id);
        Ok(out)
    }

    /// Checkpoint `id` of `site`, if it exists.
    pub fn get(&self, site: &str, id: u64) -> Result<Option<CheckpointInfo>, CheckpointError> {
        Ok(self.list(site)?.into_iter().find(|i| i.id == id))
    }

    /// Deletes all but the newest `keep` of `site`; returns the deleted ids.
    pub fn prune(&self, site: &str, keep: usize) -> Result<Vec<u64>, CheckpointError> {
        let all = self.list(site)?;
        let excess = all.len().saturating_sub(keep);
        let mut deleted = Vec::new();
        for info in &all[..excess] {
            self.remove_files(info)?;
            deleted.push(info.id);
        }
        Ok(deleted)
    }

    /// Deletes checkpoint `id` of `site`; false if there was none.
    pub fn delete(&self, site: &str, id: u64) -> Result<bool, CheckpointError> {
        match self.get(site, id)? {
            Some(info) => {
                self.remove_files(&info)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The record first: from then on the checkpoint does not exist, even
    /// if removing the archive fails.
    fn remove_files(&self, info: &CheckpointInfo) -> Result<(), CheckpointError> {
        for path in [self.record_path(info)?, self.archive_path(info)?] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("delete", &path)(e)),
            }
        }
        Ok(())
    }

    /// Extracts checkpoint `id` into `dest` (must not exist or be empty),
    /// verifying the archive's SHA-256 first. Every entry path must stay
    /// inside `dest`; sizes are bounded by the record and the [`Limits`].
    /// On error `dest` is left empty (or absent, if it did not exist).
    pub fn extract(&self, site: &str, id: u64, dest: &Path) -> Result<CheckpointInfo, CheckpointError> {
        let info =
            self.get(site, id)?.ok_or_else(|| CheckpointError::NotFound { site: site.to_owned(), id })?;
        let archive = self.archive_path(&info)?;
        let mut file = File::open(&archive).map_err(io_err("open", &archive))?;
        self.verify(&info, &mut file)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err("rewind", &archive))?;

        let created = prepare_dest(dest)?;
        let result = Extractor { info: &info, limits: self.limits, dest }.run(file);
        if result.is_err() {
            clean(dest, created);
        }
        result.map(|()| info)
    }

    fn verify(&self, info: &CheckpointInfo, file: &mut File) -> Result<(), CheckpointError> {
        let corrupt = |what, expected: String, found: String| CheckpointError::Corrupt {
            site: info.site.clone(),
            id: info.id,
            what,
            expected,
            found,
        };
        let path = self.archive_path(info)?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len != info.bytes {
            return Err(corrupt("size", info.bytes.to_string(), len.to_string()));
        }
        let mut h = Sha256::default();
        io::copy(&mut (&mut *file).take(info.bytes), &mut h).map_err(io_err("read", &path))?;
        let found = h.digest().to_string();
        if found != info.sha256 {
            return Err(corrupt("SHA-256", info.sha256.clone(), found));
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counts {
    entries: u64,
    files: u64,
}

/// Appends everything under `tree` (not `tree` itself), sorted by name.
fn append_tree<W: Write>(builder: &mut tar::Builder<W>, tree: &Path) -> Result<Counts, CheckpointError> {
    let unarchivable =
        |path: &Path, reason: String| CheckpointError::Unarchivable { path: path.to_owned(), reason };
    let root_md = fs::symlink_metadata(tree).map_err(io_err("stat", tree))?;
    if !root_md.is_dir() {
        return Err(unarchivable(tree, "not a directory".into()));
    }
    let mut counts = Counts::default();
    let walk = walkdir::WalkDir::new(tree).min_depth(1).follow_links(false).sort_by_file_name();
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(tree).to_owned();
            CheckpointError::Io { op: "walk", path, source: e.into() }
        })?;
        let path = entry.path();
        let rel = path.strip_prefix(tree).map_err(|_| unarchivable(path, "outside the tree".into()))?;
        let site_path = SitePath::from_relative(rel).map_err(|e| unarchivable(path, e.to_string()))?;
        let md = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(md.mode() & 0o7777);
        header.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        header.set_uid(0);
        header.set_gid(0);
        let ft = md.file_type();
        let name = site_path.as_str();
        let appended = if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, name, io::empty())
        } else if ft.is_file() {
            counts.files += 1;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(md.len());
            let f = File::open(path).map_err(io_err("open", path))?;
            // A file that changes size while being read would make a
            // broken archive: read exactly the length in the header.
            let mut data = f.take(md.len());
            let r = builder.append_data(&mut header, name, &mut data);
            if r.is_ok() && data.limit() != 0 {
                return Err(unarchivable(path, "the file shrank while being archived".into()));
            }
            r
        } else if ft.is_symlink() {
            counts.files += 1;
            let target = fs::read_link(path).map_err(io_err("read link", path))?;
            let target_str =
                target.to_str().ok_or_else(|| unarchivable(path, "symlink target is not UTF-8".into()))?;
            check_symlink_target(&site_path, target_str).map_err(|e| unarchivable(path, e.to_string()))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, name, &target)
        } else {
            return Err(unarchivable(
                path,
                "only regular files, directories and symlinks can be archived".into(),
            ));
        };
        appended.map_err(io_err("archive", path))?;
        counts.entries += 1;
    }
    Ok(counts)
}

/// Creates `dest` or checks that it is an empty directory (not a symlink).
/// True if it was created.
fn prepare_dest(dest: &Path) -> Result<bool, CheckpointError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(dest).map_err(io_err("create directory", dest))?;
            Ok(true)
        }
        Err(e) => Err(io_err("stat", dest)(e)),
        Ok(md) if md.is_dir() => {
            let mut entries = fs::read_dir(dest).map_err(io_err("list", dest))?;
            if entries.next().is_some() {
                return Err(CheckpointError::DestNotEmpty { path: dest.to_owned() });
            }
            Ok(false)
        }
        Ok(_) => Err(CheckpointError::DestNotEmpty { path: dest.to_owned() }),
    }
}

/// Empties `dest` after a failed extraction (or removes it if we made it).
fn clean(dest: &Path, created: bool) {
    if created {
        let _ = make_writable(dest).and_then(|()| fs::remove_dir_all(dest));
        return;
    }
    let _ = make_writable(dest);
    if let Ok(entries) = fs::read_dir(dest) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let _ = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// Gives every directory under `root` (not following links) owner rwx, so
/// that a read-only directory from the archive does not block the cleanup.
fn make_writable(root: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(root).follow_links(false).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let md = entry.metadata()?;
            let mode = md.permissions().mode() | 0o700;
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

struct Extractor<'a> {
    info: &'a CheckpointInfo,
    limits: Limits,
    dest: &'a Path,
}

impl Extractor<'_> {
    fn bad(&self, entry: &[u8], reason: impl Into<String>) -> CheckpointError {
        CheckpointError::BadEntry {
            site: self.info.site.clone(),
            id: self.info.id,
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn too_large(&self, what: &'static str, limit: u64) -> CheckpointError {
        CheckpointError::TooLarge { site: self.info.site.clone(), id: self.info.id, what, limit }
    }

    fn run(&self, file: File) -> Result<(), CheckpointError> {
        let archive_path = self.dest; // for I/O errors while decoding
        let max_tar = self.info.tar_bytes.min(self.limits.max_tar_bytes);
        let max_entries = self.info.entries.min(self.limits.max_entries);
        let stream = Bounded { inner: FrameDecoder::new(BufReader::new(file)), left: max_tar };
        let mut archive = tar::Archive::new(stream);
        let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
        let mut count = 0u64;
        let entries = archive.entries().map_err(io_err("read archive into", archive_path))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            count += 1;
            if count > max_entries {
                return Err(self.too_large("entry count", max_entries));
            }
            let raw = entry.path_bytes().into_owned();
            let path = self.checked_path(&raw)?;
            let target = self.dest.join(path.as_str());
            self.check_parents(&raw, &path)?;
            let header = entry.header();
            let mode = header.mode().map_err(|e| self.bad(&raw, e.to_string()))? & 0o777;
            let mtime = header.mtime().unwrap_or(0);
            match header.entry_type() {
                tar::EntryType::Directory => {
                    fs::create_dir(&target)
                        .map_err(|e| self.bad(&raw, format!("cannot create directory: {e}")))?;
                    dirs.push((target, mode, mtime));
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut out = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                        .mode(0o600)
                        .open(&target)
                        .map_err(|e| self.bad(&raw, format!("cannot create file: {e}")))?;
                    io::copy(&mut entry, &mut out).map_err(|e| self.read_error(e))?;
                    out.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(io_err("chmod", &target))?;
                    let t = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
                    filetime::set_file_handle_times(&out, None, Some(t))
                        .map_err(io_err("set mtime", &target))?;
                }
                tar::EntryType::Symlink => {
                    let link =
                        entry.link_name_bytes().ok_or_else(|| self.bad(&raw, "symlink without target"))?;
                    let link = std::str::from_utf8(&link)
                        .map_err(|_| self.bad(&raw, "symlink target is not UTF-8"))?;
                    check_symlink_target(&path, link).map_err(|e| self.bad(&raw, e.to_string()))?;
                    symlink(link, &target)
                        .map_err(|e| self.bad(&raw, format!("cannot create symlink: {e}")))?;
                }
                other => return Err(self.bad(&raw, format!("unsupported entry type {other:?}"))),
            }
        }
        // Modes and mtimes of directories last, deepest first: a read-only
        // directory could not have been filled, and filling one changes its mtime.
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (dir, mode, mtime) in dirs {
            let t = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
            filetime::set_file_mtime(&dir, t).map_err(io_err("set mtime", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &dir))?;
        }
        Ok(())
    }

    fn read_error(&self, e: io::Error) -> CheckpointError {
        if e.kind() == io::ErrorKind::FileTooLarge {
            return self.too_large("uncompressed size", self.info.tar_bytes.min(self.limits.max_tar_bytes));
        }
        CheckpointError::Corrupt {
            site: self.info.site.clone(),
            id: self.info.id,
            what: "archive",
            expected: "a valid tar stream in an lz4 frame".into(),
            found: e.to_string(),
        }
    }

    /// The entry's path as a [`SitePath`]: relative, no `..`, normalised
    /// (a trailing `/` of a directory entry is allowed).
    fn checked_path(&self, raw: &[u8]) -> Result<SitePath, CheckpointError> {
        let s = std::str::from_utf8(raw).map_err(|_| self.bad(raw, "path is not UTF-8"))?;
        let s = s.strip_suffix('/').unwrap_or(s);
        SitePath::new(s).map_err(|e| self.bad(raw, e.to_string()))
    }

    /// Every ancestor of `path` under `dest` must be a real directory
    /// already made by this extraction: never a symlink, never missing.
    fn check_parents(&self, raw: &[u8], path: &SitePath) -> Result<(), CheckpointError> {
        let mut at = self.dest.to_path_buf();
        let parts: Vec<&str> = path.components().collect();
        for part in &parts[..parts.len() - 1] {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(self.bad(raw, format!("its parent {} is a symlink", at.display())))
                }
                Ok(_) => return Err(self.bad(raw, format!("its parent {} is not a directory", at.display()))),
                Err(_) => {
                    return Err(
                        self.bad(raw, format!("its parent {} is not in the archive before it", at.display()))
                    )
                }
            }
        }
        Ok(())
    }
}

/// A reader that fails with `FileTooLarge` past `left` bytes.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed proves the stream is too long.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(io::ErrorKind::FileTooLarge, "archive larger than recorded")),
            };
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that counts and hashes what passes through it.
struct Counting<W> {
    inner: W,
    count: u64,
    hash: Sha256,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Self {
        Counting { inner, count: 0, hash: Sha256::default() }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a record file, refusing anything bigger than a record can be.
fn read_small(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut data = Vec::new();
    f.take(64 * 1024).read_to_end(&mut data).map_err(io_err("read", path))?;
    Ok(data)
}

/// Writes `data` to `path` through a fsynced temporary file and a rename.
fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<(), CheckpointError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".record.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err("create temporary file in", dir))?;
    tmp.write_all(data).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("fsync", tmp.path()))?;
    tmp.persist(path).map_err(|e| CheckpointError::Io {
        op: "rename into place",
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// What a tree holds, by relative path: enough to compare two trees.
    #[derive(Debug, PartialEq, Eq)]
    enum Node {
        Dir { mode: u32 },
        File { mode: u32, data: Vec<u8>, mtime: i64 },
        Link { target: PathBuf },
    }

    fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_owned();
            let md = fs::symlink_metadata(e.path()).unwrap();
            let node = if md.file_type().is_symlink() {
                Node::Link { target: fs::read_link(e.path()).unwrap() }
            } else if md.is_dir() {
                Node::Dir { mode: md.mode() & 0o777 }
            } else {
                Node::File { mode: md.mode() & 0o777, data: fs::read(e.path()).unwrap(), mtime: md.mtime() }
            };
            out.insert(rel, node);
        }
        out
    }

    fn sample_tree(root: &Path) {
        let w = |p: &str, data: &[u8]| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        };
        w("index.html", b"<h1>hello</h1>");
        w("empty", b"");
        w("a/b/c/deep.txt", b"deep");
        w("bin/data.bin", &(0..=255u8).cycle().take(100_000).collect::<Vec<_>>());
        w("ünïcødé/日本語.html", "こんにちは".as_bytes());
        w(&format!("long/{}/{}.txt", "d".repeat(120), "f".repeat(200)), b"long name");
        fs::create_dir_all(root.join("empty-dir")).unwrap();
        fs::set_permissions(root.join("bin/data.bin"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(root.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
        filetime::set_file_mtime(root.join("index.html"), FileTime::from_unix_time(1_600_000_000, 0))
            .unwrap();
        symlink("index.html", root.join("home.html")).unwrap();
        symlink("../../index.html", root.join("a/b/up.html")).unwrap();
        symlink("c", root.join("a/b/c-link")).unwrap();
        symlink("missing", root.join("dangling")).unwrap();
    }

    fn setup() -> (tempfile::TempDir, Checkpoints, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).unwrap();
        sample_tree(&tree);
        let cps = Checkpoints::new(tmp.path().join("checkpoints"));
        (tmp, cps, tree)
    }

    #[test]
    fn a_tree_survives_the_round_trip() {
        let (tmp, cps, tree) = setup();
        let info = cps.create("www.example", 1, 42, &tree, 1_000).unwrap();
        assert_eq!(
            (info.id, info.serial, info.site.as_str(), info.created_ms),
            (1, 42, "www.example", 1_000)
        );
        assert_eq!(info.files, 11);
        assert!(info.bytes > 0 && info.bytes < info.tar_bytes, "{info:?}");
        assert_eq!(info.bytes, fs::metadata(cps.archive_path(&info).unwrap()).unwrap().len());
        let dest = tmp.path().join("restored");
        assert_eq!(cps.extract("www.example", 1, &dest).unwrap(), info);
        assert_eq!(snapshot(&dest), snapshot(&tree));
        // An empty existing directory is fine too.
        let empty = tmp.path().join("empty-dest");
        fs::create_dir(&empty).unwrap();
        cps.extract("www.example", 1, &empty).unwrap();
        assert_eq!(snapshot(&empty), snapshot(&tree));
        // The same tree archives to the same bytes.
        let again = cps.create("www.example", 2, 42, &tree, 1_000).unwrap();
        assert_eq!(again.sha256, info.sha256);
    }

    #[test]
    fn list_is_oldest_first_and_prune_keeps_the_newest() {
        let (_tmp, cps, tree) = setup();
        assert!(cps.list("site").unwrap().is_empty());
        for id in [3, 1, 2, 5, 4] {
            cps.create("site", id, id * 10, &tree, id).unwrap();
        }
        cps.create("other", 1, 1, &tree, 0).unwrap();
        let ids = |site| cps.list(site).unwrap().iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids("site"), vec![1, 2, 3, 4, 5]);
        assert!(matches!(cps.create("site", 3, 99, &tree, 0), Err(CheckpointError::Exists { id: 3, .. })));
        assert_eq!(cps.get("site", 4).unwrap().unwrap().serial, 40);
        assert_eq!(cps.get("site", 9).unwrap(), None);
        assert_eq!(cps.prune("site", 2).unwrap(), vec![1, 2, 3]);
        assert_eq!(ids("site"), vec![4, 5]);
        assert_eq!(cps.prune("site", 5).unwrap(), Vec::<u64>::new());
        assert!(cps.delete("site", 4).unwrap());
        assert!(!cps.delete("site", 4).unwrap());
        assert_eq!(ids("site"), vec![5]);
        assert_eq!(ids("other"), vec![1]);
        // Only the files of the remaining checkpoints are left.
        let mut left: Vec<_> = fs::read_dir(cps.dir().join("site"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["5-50.json", "5-50.tar.lz4"]);
        assert!(matches!(
            cps.extract("site", 1, &cps.dir().join("x")),
            Err(CheckpointError::NotFound { .. })
        ));
    }

    #[test]
    fn a_flipped_byte_is_refused_before_anything_is_written() {
        let (tmp, cps, tree) = setup();
        let info = cps.create("site", 1, 1, &tree, 0).unwrap();
        let path = cps.archive_path(&info).unwrap();
        let good = fs::read(&path).unwrap();
        for at in [0, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let dest = tmp.path().join(format!("dest-{at}"));
            let err = cps.extract("site", 1, &dest).unwrap_err();
            assert!(matches!(err, CheckpointError::Corrupt { what: "SHA-256", .. }), "{err}");
            assert!(!dest.exists());
        }
        // Truncated: refused by size.
        fs::write(&path, &good[..good.len() - 10]).unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let err = cps.extract("site", 1, &dest).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { what: "size", .. }), "{err}");
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    }

    #[test]
    fn the_destination_must_be_new_or_empty() {
        let (tmp, cps, tree) = setup();
        cps.create("site", 1, 1, &tree, 0).unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("keep"), b"x").unwrap();
        assert!(matches!(cps.extract("site", 1, &dest), Err(CheckpointError::DestNotEmpty { .. })));
        assert_eq!(fs::read(dest.join("keep")).unwrap(), b"x");
        let link = tmp.path().join("link");
        symlink(tmp.path().join("empty-target"), &link).unwrap();
        fs::create_dir(tmp.path().join("empty-target")).unwrap();
        assert!(matches!(cps.extract("site", 1, &link), Err(CheckpointError::DestNotEmpty { .. })));
    }

    #[test]
    fn site_names_are_checked() {
        let (_tmp, cps, tree) = setup();
        for bad in ["", "../x", "a/b", ".hidden", "x".repeat(65).as_str()] {
            assert!(matches!(cps.create(bad, 1, 1, &tree, 0), Err(CheckpointError::BadSite(_))), "{bad:?}");
            assert!(matches!(cps.list(bad), Err(CheckpointError::BadSite(_))), "{bad:?}");
        }
        assert!(!cps.dir().exists());
    }

    #[test]
    fn trees_that_could_not_be_restored_are_not_archived() {
        let (tmp, cps, _) = setup();
        let tree = tmp.path().join("escape");
        fs::create_dir(&tree).unwrap();
        symlink("/etc/passwd", tree.join("abs")).unwrap();
        let err = cps.create("site", 1, 1, &tree, 0).unwrap_err();
        assert!(matches!(err, CheckpointError::Unarchivable { .. }), "{err}");
        fs::remove_file(tree.join("abs")).unwrap();
        symlink("../outside", tree.join("up")).unwrap();
        assert!(matches!(cps.create("site", 1, 1, &tree, 0), Err(CheckpointError::Unarchivable { .. })));
        assert!(cps.list("site").unwrap().is_empty());
        // No temporary file left behind.
        let left = fs::read_dir(cps.dir().join("site")).unwrap().count();
        assert_eq!(left, 0);
    }

    /// A raw entry, with any name bytes (tar's own builder refuses `..`).
    struct Raw<'a> {
        name: &'a [u8],
        kind: tar::EntryType,
        data: &'a [u8],
        link: &'a [u8],
    }

    fn raw(name: &str, kind: tar::EntryType) -> Raw<'_> {
        Raw { name: name.as_bytes(), kind, data: b"", link: b"" }
    }

    /// Writes a crafted archive and its (matching) record as checkpoint 1 of "site".
    fn plant(cps: &Checkpoints, entries: &[Raw<'_>]) {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
            h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
            h.set_entry_type(e.kind);
            h.set_mode(0o644);
            h.set_size(e.data.len() as u64);
            h.set_cksum();
            builder.append(&h, e.data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut enc = FrameEncoder::new(Vec::new());
        enc.write_all(&tar).unwrap();
        let archive = enc.finish().unwrap();
        let info = CheckpointInfo {
            id: 1,
            site: "site".into(),
            serial: 1,
            bytes: archive.len() as u64,
            files: entries.len() as u64,
            created_ms: 0,
            sha256: crate::protocol::crypto::Digest::of(&archive).to_string(),
            entries: entries.len() as u64,
            tar_bytes: tar.len() as u64,
        };
        let dir = cps.dir().join("site");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(cps.archive_path(&info).unwrap(), archive).unwrap();
        fs::write(cps.record_path(&info).unwrap(), serde_json::to_vec(&info).unwrap()).unwrap();
    }

    fn refused(cps: &Checkpoints, root: &Path, entries: &[Raw<'_>]) -> CheckpointError {
        plant(cps, entries);
        let dest = root.join("dest");
        let err = cps.extract("site", 1, &dest).unwrap_err();
        assert!(!dest.exists(), "destination left behind after {err}");
        err
    }

    #[test]
    fn crafted_archives_cannot_write_outside_the_destination() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("work");
        fs::create_dir(&root).unwrap();
        let cps = Checkpoints::new(tmp.path().join("checkpoints"));
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();

        let evil = Raw { data: b"pwned", ..raw("../outside/x", Regular) };
        let err = refused(&cps, &root, &[raw("ok", Regular), evil]);
        assert!(
            matches!(&err, CheckpointError::BadEntry { reason, .. } if reason.contains("escapes")),
            "{err}"
        );

        let abs = format!("{}/abs", outside.display());
        let err = refused(&cps, &root, &[Raw { data: b"pwned", ..raw(&abs, Regular) }]);
        assert!(
            matches!(&err, CheckpointError::BadEntry { reason, .. } if reason.contains("absolute")),
            "{err}"
        );

        // A symlink out, then a file through it.
        let target = outside.display().to_string();
        let link = Raw { link: target.as_bytes(), ..raw("link", Symlink) };
        let err = refused(&cps, &root, &[link, Raw { data: b"pwned", ..raw("link/x", Regular) }]);
        assert!(matches!(err, CheckpointError::BadEntry { .. }), "{err}");

        // A symlink that stays lexically inside but is then used as a parent.
        let link = Raw { link: b"d", ..raw("l", Symlink) };
        let err =
            refused(&cps, &root, &[raw("d", Directory), link, Raw { data: b"x", ..raw("l/x", Regular) }]);
        assert!(
            matches!(&err, CheckpointError::BadEntry { reason, .. } if reason.contains("symlink")),
            "{err}"
        );

        // A file written over a symlink of the same name.
        let link = Raw { link: b"d", ..raw("same", Symlink) };
        let err =
            refused(&cps, &root, &[raw("d", Directory), link, Raw { data: b"x", ..raw("same", Regular) }]);
        assert!(matches!(err, CheckpointError::BadEntry { .. }), "{err}");

        // Odd names and kinds.
        for name in ["", "a//b", "./a", "a/./b"] {
            let err = refused(&cps, &root, &[raw(name, Regular)]);
            assert!(matches!(err, CheckpointError::BadEntry { .. }), "{name:?}: {err}");
        }
        let err = refused(&cps, &root, &[raw("dev", tar::EntryType::Char)]);
        assert!(
            matches!(&err, CheckpointError::BadEntry { reason, .. } if reason.contains("unsupported")),
            "{err}"
        );
        let err = refused(&cps, &root, &[Raw { link: b"ok", ..raw("hard", tar::EntryType::Link) }]);
        assert!(matches!(err, CheckpointError::BadEntry { .. }), "{err}");

        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "something was written outside");
    }

    #[test]
    fn sizes_beyond_the_record_or_the_limits_are_refused() {
        use tar::EntryType::Regular;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("work");
        fs::create_dir(&root).unwrap();
        let cps = Checkpoints::new(tmp.path().join("checkpoints"));
        let big = vec![0u8; 1 << 20];
        let entries = [Raw { data: &big, ..raw("zeros", Regular) }, raw("b", Regular)];

        // The record understates the stream (a well-compressed bomb).
        plant(&cps, &entries);
        let rec = cps.dir().join("site/1-1.json");
        let mut info: CheckpointInfo = serde_json::from_slice(&fs::read(&rec).unwrap()).unwrap();
        let honest = info.clone();
        info.tar_bytes = 4096;
        fs::write(&rec, serde_json::to_vec(&info).unwrap()).unwrap();
        let dest = root.join("dest");
        let err = cps.extract("site", 1, &dest).unwrap_err();
        assert!(matches!(err, CheckpointError::TooLarge { what: "uncompressed size", .. }), "{err}");
        assert!(!dest.exists());

        // Too many entries for the record.
        info = CheckpointInfo { entries: 1, ..honest.clone() };
        fs::write(&rec, serde_json::to_vec(&info).unwrap()).unwrap();
        let err = cps.extract("site", 1, &dest).unwrap_err();
        assert!(matches!(err, CheckpointError::TooLarge { what: "entry count", .. }), "{err}");
        assert!(!dest.exists());

        // An honest record but a configured cap.
        fs::write(&rec, serde_json::to_vec(&honest).unwrap()).unwrap();
        let capped = cps.clone().with_limits(Limits { max_entries: 10, max_tar_bytes: 64 * 1024 });
        assert!(matches!(capped.extract("site", 1, &dest), Err(CheckpointError::TooLarge { .. })));
        assert!(!dest.exists());
        cps.extract("site", 1, &dest).unwrap();
        assert_eq!(fs::read(dest.join("zeros")).unwrap().len(), 1 << 20);
    }

    #[test]
    fn garbage_records_and_archives_are_errors_not_panics() {
        let (tmp, cps, tree) = setup();
        let info = cps.create("site", 1, 1, &tree, 0).unwrap();
        // Garbage that matches its record: fails as an archive, cleanly.
        let junk: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let path = cps.archive_path(&info).unwrap();
        fs::write(&path, &junk).unwrap();
        let rec = cps.record_path(&info).unwrap();
        let forged = CheckpointInfo {
            bytes: junk.len() as u64,
            sha256: crate::protocol::crypto::Digest::of(&junk).to_string(),
            ..info.clone()
        };
        fs::write(&rec, serde_json::to_vec(&forged).unwrap()).unwrap();
        let dest = tmp.path().join("dest");
        let err = cps.extract("site", 1, &dest).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { what: "archive", .. }), "{err}");
        assert!(!dest.exists());
        // A record that is not JSON.
        fs::write(&rec, b"{not json").unwrap();
        assert!(matches!(cps.list("site"), Err(CheckpointError::BadRecord { .. })));
    }
}
