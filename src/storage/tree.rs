//! Reading a directory tree into a [`Manifest`], with include/exclude
//! patterns, and hashing its files.
//!
//! Symlinks are recorded, never followed; a symlink whose target leaves the
//! tree is an error, since no server would accept it. [`check_links`] adds
//! the check that needs the whole tree: no symlink leaves it by climbing
//! through another one. Sockets, FIFOs and
//! devices are skipped with a warning. Names must be UTF-8.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use thiserror::Error;

use crate::protocol::assignment::{FileMeta, Mtime, MODE_MASK};
use crate::protocol::crypto::{Digest, Sha256};
use crate::protocol::delta::{EntryKind, Manifest};
use crate::protocol::paths::{check_symlink_target, PathError, SitePath, TreeLinks};

/// Why a tree could not be read.
#[derive(Debug, Error)]
pub enum ScanError {
    /// A file system call failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A name is not acceptable as a site path (not UTF-8, too long…).
    #[error("{path}: {source}; rename it or exclude it with content.exclude")]
    Name {
        /// The file.
        path: PathBuf,
        /// Why.
        source: PathError,
    },
    /// A symlink points outside the tree.
    #[error("symlink {path} -> {target} points outside the tree; servers would refuse it. Make it relative and inside the site, or exclude it")]
    SymlinkEscapes {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: String,
    },
    /// A symlink leaves the tree through another symlink (or loops).
    #[error("in {root}: {source}; servers would refuse the release. Change the symlink, or exclude it with content.exclude")]
    SymlinkChain {
        /// The tree.
        root: PathBuf,
        /// Which symlink, and why.
        source: PathError,
    },
    /// A pattern is not a glob.
    #[error("pattern {pattern:?} is not a glob: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io { path: path.to_owned(), source }
}

/// One list of patterns: those without `/` match a name anywhere, those with
/// `/` match the path from the root (`*` stays within a component, `**`
/// crosses them).
#[derive(Debug, Clone)]
struct Patterns {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

impl Patterns {
    fn new(patterns: &[String]) -> Result<Self, ScanError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let bad =
                |e: globset::Error| ScanError::Pattern { pattern: p.clone(), message: e.kind().to_string() };
            if p.contains('/') {
                paths.add(
                    GlobBuilder::new(p.trim_start_matches('/'))
                        .literal_separator(true)
                        .build()
                        .map_err(bad)?,
                );
            } else {
                names.add(Glob::new(p).map_err(bad)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| ScanError::Pattern { pattern: patterns.join(", "), message: e.to_string() })
        };
        Ok(Patterns { names: build(names)?, paths: build(paths)?, empty: patterns.is_empty() })
    }

    fn matches(&self, path: &SitePath) -> bool {
        self.names.is_match(path.file_name()) || self.paths.is_match(path.as_str())
    }
}

/// Which entries of a tree are content.
#[derive(Debug, Clone)]
pub struct TreeFilter {
    include: Patterns,
    exclude: Patterns,
}

impl Default for TreeFilter {
    fn default() -> Self {
        TreeFilter::new(&[], &[]).unwrap_or_else(|_| unreachable!("no patterns"))
    }
}

impl TreeFilter {
    /// A filter from `content.include` and `content.exclude`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, ScanError> {
        Ok(TreeFilter { include: Patterns::new(include)?, exclude: Patterns::new(exclude)? })
    }

    /// True when `path` itself passes the filter: not excluded, and
    /// included when there are include patterns.
    pub fn selects(&self, path: &SitePath) -> bool {
        !self.exclude.matches(path) && (self.include.empty || self.include.matches(path))
    }
}

/// Reads the tree under `root`. A missing root is an empty tree.
///
/// Excluded entries are left out with everything below them. With include
/// patterns, only files and symlinks that match are taken, with the
/// directories that lead to them (and directories that match themselves).
pub fn scan(root: &Path, filter: &TreeFilter) -> Result<Manifest, ScanError> {
    let mut out = Manifest::new();
    if fs::symlink_metadata(root).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        return Ok(out);
    }
    let walk = walkdir::WalkDir::new(root).follow_links(false).min_depth(1).sort_by_file_name();
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            ScanError::Io { path, source: e.into() }
        })?;
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let path = SitePath::from_relative(rel)
            .map_err(|source| ScanError::Name { path: entry.path().into(), source })?;
        if filter.exclude.matches(&path) {
            if entry.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let md =
            entry.metadata().map_err(|e| ScanError::Io { path: entry.path().into(), source: e.into() })?;
        let mode = md.permissions().mode() & MODE_MASK;
        let kind = if md.is_dir() {
            EntryKind::Dir { mode }
        } else if md.is_file() {
            let mtime = Mtime { secs: md.mtime(), nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32 };
            EntryKind::File { size: md.len(), meta: FileMeta { mode, mtime } }
        } else if md.file_type().is_symlink() {
            let target = fs::read_link(entry.path()).map_err(io_err(entry.path()))?;
            let target = target.to_str().ok_or_else(|| ScanError::Name {
                path: entry.path().into(),
                source: PathError::NotUtf8 { path: target.to_string_lossy().into_owned() },
            })?;
            check_symlink_target(&path, target).map_err(|_| ScanError::SymlinkEscapes {
                path: entry.path().into(),
                target: target.to_owned(),
            })?;
            EntryKind::Symlink { target: target.to_owned() }
        } else {
            tracing::warn!(path = %entry.path().display(), "skipping a special file (socket, FIFO or device)");
            continue;
        };
        if !filter.include.empty && !matches!(kind, EntryKind::Dir { .. }) && !filter.include.matches(&path) {
            continue;
        }
        out.insert(path, kind);
    }
    if !filter.include.empty {
        prune_unincluded_dirs(&mut out, filter);
    }
    Ok(out)
}

/// Checks that every symlink of the tree `m` (read from `root`) resolves
/// inside it when every symlink on its way is followed: what a server
/// checks before it applies the release built from it.
pub fn check_links(root: &Path, m: &Manifest) -> Result<(), ScanError> {
    let mut links = TreeLinks::new();
    for (path, kind) in m {
        if let EntryKind::Symlink { target } = kind {
            links.insert(path, target);
        }
    }
    links.check().map_err(|source| ScanError::SymlinkChain { root: root.to_owned(), source })
}

/// Drops directories that neither match an include pattern nor lead to an entry that was taken.
fn prune_unincluded_dirs(m: &mut Manifest, filter: &TreeFilter) {
    let mut needed = std::collections::HashSet::new();
    for (path, kind) in m.iter() {
        if !matches!(kind, EntryKind::Dir { .. }) || filter.include.matches(path) {
            needed.insert(path.as_str().to_owned());
            needed.extend(path.ancestors().map(str::to_owned));
        }
    }
    m.retain(|p, _| needed.contains(p.as_str()));
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::default();
    io::copy(&mut f, &mut h)?;
    Ok(h.digest())
}

/// Copies the tree under `from` to `to` (created), keeping modes, mtimes and
/// symlinks, as `cp -a` would. Used to keep shadow copies.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(from).min_depth(1).follow_links(false) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let dst = to.join(rel);
        let md = entry.metadata()?;
        if md.is_dir() {
            fs::create_dir(&dst)?;
            dirs.push((dst, md.permissions()));
        } else if md.is_file() {
            fs::copy(entry.path(), &dst)?;
            let mtime = filetime::FileTime::from_last_modification_time(&md);
            filetime::set_file_mtime(&dst, mtime)?;
        } else if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &dst)?;
        }
    }
    for (dir, perm) in dirs.into_iter().rev() {
        fs::set_permissions(dir, perm)?;
    }
    Ok(())
}

/// Every difference between the trees under `a` and `b`: entries missing on
/// either side, kinds, file contents, modes, file mtimes and symlink targets.
/// Empty when the trees are identical.
pub fn compare_trees(a: &Path, b: &Path) -> Result<Vec<String>, ScanError> {
    let filter = TreeFilter::default();
    let (ma, mb) = (scan(a, &filter)?, scan(b, &filter)?);
    let mut diffs = Vec::new();
    for (path, ea) in &ma {
        match mb.get(path) {
            None => diffs.push(format!("{path}: only in {}", a.display())),
            Some(eb) if ea != eb => diffs.push(format!("{path}: {ea:?} vs {eb:?}")),
            Some(EntryKind::File { .. }) => {
                let (pa, pb) = (path.under(a), path.under(b));
                if hash_file(&pa).map_err(io_err(&pa))? != hash_file(&pb).map_err(io_err(&pb))? {
                    diffs.push(format!("{path}: contents differ"));
                }
            }
            Some(_) => {}
        }
    }
    diffs.extend(mb.keys().filter(|p| !ma.contains_key(*p)).map(|p| format!("{p}: only in {}", b.display())));
    Ok(diffs)
}

/// Builds at `dest` a tree of hard links to the entries of `src`: with
/// `keep`, only `paths` (files, symlinks or whole directories) and the
/// directories that lead to them; without, everything but `paths`. Used to
/// make the new tree of a `hot` or `remove` job from the live release
/// without copying data. A path that does not exist is an error.
pub fn link_subtree(src: &Path, dest: &Path, paths: &[SitePath], keep: bool) -> Result<(), ScanError> {
    for p in paths {
        let at = src.join(p.as_str());
        fs::symlink_metadata(&at).map_err(io_err(&at))?;
    }
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let chosen = |rel: &SitePath| {
        let under = |p: &SitePath| rel == p || rel.as_str().starts_with(&format!("{}/", p.as_str()));
        paths.iter().any(under)
    };
    let leads_to =
        |rel: &SitePath| paths.iter().any(|p| p.as_str().starts_with(&format!("{}/", rel.as_str())));
    let walk = walkdir::WalkDir::new(src).follow_links(false).min_depth(1).sort_by_file_name();
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(src).to_owned();
            ScanError::Io { path, source: e.into() }
        })?;
        let rel = entry.path().strip_prefix(src).unwrap_or(entry.path());
        let path = SitePath::from_relative(rel)
            .map_err(|source| ScanError::Name { path: entry.path().into(), source })?;
        let is_dir = entry.file_type().is_dir();
        let take = if keep { chosen(&path) || (is_dir && leads_to(&path)) } else { !chosen(&path) };
        if !take {
            if is_dir {
                it.skip_current_dir();
            }
            continue;
        }
        let to = dest.join(rel);
        if is_dir {
            fs::create_dir_all(&to).map_err(io_err(&to))?;
            let mode = entry
                .metadata()
                .map_err(|e| ScanError::Io { path: entry.path().into(), source: e.into() })?;
            fs::set_permissions(&to, mode.permissions()).map_err(io_err(&to))?;
        } else if entry.file_type().is_symlink() {
            let target = fs::read_link(entry.path()).map_err(io_err(entry.path()))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err(&to))?;
        } else {
            fs::hard_link(entry.path(), &to).map_err(io_err(&to))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(m: &Manifest) -> Vec<&str> {
        m.keys().map(|p| p.as_str()).collect()
    }

    #[test]
    fn scans_files_dirs_links_and_filters() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::create_dir_all(r.join("empty")).unwrap();
        fs::create_dir_all(r.join(".git/objects")).unwrap();
        fs::write(r.join("a/b/page.html"), "x").unwrap();
        fs::write(r.join("a/junk.tmp"), "x").unwrap();
        fs::write(r.join(".git/objects/1"), "x").unwrap();
        symlink("b/page.html", r.join("a/link")).unwrap();
        fs::set_permissions(r.join("a/b/page.html"), fs::Permissions::from_mode(0o4755)).unwrap();

        let all = scan(r, &TreeFilter::default()).unwrap();
        assert_eq!(
            names(&all),
            [
                ".git",
                ".git/objects",
                ".git/objects/1",
                "a",
                "a/b",
                "a/b/page.html",
                "a/junk.tmp",
                "a/link",
                "empty"
            ]
        );
        let EntryKind::File { size: 1, meta } = &all[&SitePath::new("a/b/page.html").unwrap()] else {
            panic!()
        };
        assert_eq!(meta.mode, 0o755, "set-id bits are dropped");
        assert_eq!(
            all[&SitePath::new("a/link").unwrap()],
            EntryKind::Symlink { target: "b/page.html".into() }
        );

        let f = TreeFilter::new(&[], &["*.tmp".into(), ".git".into()]).unwrap();
        assert_eq!(names(&scan(r, &f).unwrap()), ["a", "a/b", "a/b/page.html", "a/link", "empty"]);
        let f = TreeFilter::new(&["*.html".into()], &[]).unwrap();
        assert_eq!(names(&scan(r, &f).unwrap()), ["a", "a/b", "a/b/page.html"]);
        let f = TreeFilter::new(&["a/*".into()], &[]).unwrap();
        assert_eq!(names(&scan(r, &f).unwrap()), ["a", "a/b", "a/junk.tmp", "a/link"]);
        assert!(scan(&r.join("missing"), &TreeFilter::default()).unwrap().is_empty());
    }

    #[test]
    fn escaping_symlinks_are_refused_with_advice() {
        let t = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", t.path().join("pw")).unwrap();
        let err = scan(t.path(), &TreeFilter::default()).unwrap_err();
        assert!(matches!(err, ScanError::SymlinkEscapes { .. }), "{err}");
        assert!(err.to_string().contains("exclude it"));
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = TreeFilter::new(&["a[".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("a["), "{err}");
    }

    #[test]
    fn link_subtree_keeps_or_drops_the_named_paths() {
        let src = tempfile::tempdir().unwrap();
        let w = |p: &str, data: &str| {
            let at = src.path().join(p);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            fs::write(at, data).unwrap();
        };
        w("a.html", "a");
        w("img/x.png", "x");
        w("img/y.png", "y");
        w("deep/er/z.txt", "z");
        let names = |d: &Path| {
            let m = scan(d, &TreeFilter::default()).unwrap();
            m.keys().map(|p| p.as_str().to_owned()).collect::<Vec<_>>()
        };
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("hot");
        let paths = [SitePath::new("img/x.png").unwrap(), SitePath::new("deep").unwrap()];
        link_subtree(src.path(), &dest, &paths, true).unwrap();
        assert_eq!(names(&dest), ["deep", "deep/er", "deep/er/z.txt", "img", "img/x.png"]);
        let rest = out.path().join("rest");
        link_subtree(src.path(), &rest, &paths, false).unwrap();
        assert_eq!(names(&rest), ["a.html", "img", "img/y.png"]);
        assert_eq!(fs::read(rest.join("img/y.png")).unwrap(), b"y");
        let missing = [SitePath::new("nope.html").unwrap()];
        assert!(link_subtree(src.path(), &out.path().join("m"), &missing, true).is_err());
    }
}
