//! Paths inside a site, checked so that nothing in an assignment can reach
//! outside the site root.
//!
//! A [`SitePath`] is relative, `/`-separated, normalised (no empty, `.` or
//! `..` components), UTF-8 and free of NUL bytes. Symlink targets are checked
//! twice. [`check_symlink_target`] looks at one target as text: relative, and
//! never climbing above the root when resolved from the link's directory.
//! That is not enough on its own: a target that climbs through *another*
//! symlink (`passwd -> a/root/../etc/passwd` beside `a/root -> ..`) passes the
//! text check and still leaves the tree. [`TreeLinks`] therefore checks the
//! symlinks of a whole tree together: every target must stay inside when
//! every symlink it passes through is followed. The applier adds the last
//! rule, which needs the file system: it never follows a symlink while
//! resolving a path (see `storage::releases`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single component accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a path was refused. Each variant carries the offending path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The empty string names nothing.
    #[error("empty path")]
    Empty,
    /// Longer than [`MAX_PATH_LEN`] or with a component over [`MAX_COMPONENT_LEN`].
    #[error("path {path:?} is too long")]
    TooLong {
        /// The path.
        path: String,
    },
    /// Starts with `/`.
    #[error("path {path:?} is absolute; assignment paths must be relative to the site root")]
    Absolute {
        /// The path.
        path: String,
    },
    /// Has a `..` component (or, for symlink targets, climbs above the root).
    #[error("path {path:?} escapes the site root")]
    Escapes {
        /// The path.
        path: String,
    },
    /// Has an empty or `.` component, or a trailing slash.
    #[error("path {path:?} is not normalised (empty or '.' component)")]
    NotNormal {
        /// The path.
        path: String,
    },
    /// Has a NUL byte.
    #[error("path {path:?} contains a NUL byte")]
    Nul {
        /// The path.
        path: String,
    },
    /// Not a valid site name.
    #[error("{name:?} is not a site name: use 1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit")]
    BadSiteName {
        /// The name.
        name: String,
    },
    /// Not UTF-8 (only raised when converting from an OS path).
    #[error("path {path:?} is not valid UTF-8")]
    NotUtf8 {
        /// The path, lossily converted.
        path: String,
    },
    /// A symlink's target leaves the tree once another symlink on its way is followed.
    #[error(
        "symlink {link} -> {target} leads outside the site once the symlink {through} on its way is \
         followed; point it inside the site without climbing ('..') out of another symlink's target"
    )]
    EscapesThrough {
        /// The symlink whose target leaves the tree.
        link: String,
        /// Its target.
        target: String,
        /// The symlink it passes through, as `path -> target`.
        through: String,
    },
    /// A symlink's target goes round in a loop, or through more than [`MAX_SYMLINK_HOPS`] symlinks.
    #[error(
        "symlink {link} -> {target} loops, or passes through more than {MAX_SYMLINK_HOPS} symlinks: \
         point it at its destination directly"
    )]
    SymlinkLoop {
        /// The symlink.
        link: String,
        /// Its target.
        target: String,
    },
}

/// A checked path relative to a site root. See the module docs for the rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SitePath(String);

impl SitePath {
    /// Checks `s` and wraps it.
    pub fn new(s: &str) -> Result<Self, PathError> {
        let path = || s.to_owned();
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong { path: path() });
        }
        if s.contains('\0') {
            return Err(PathError::Nul { path: path() });
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute { path: path() });
        }
        for c in s.split('/') {
            match c {
                ".." => return Err(PathError::Escapes { path: path() }),
                "" | "." => return Err(PathError::NotNormal { path: path() }),
                c if c.len() > MAX_COMPONENT_LEN => return Err(PathError::TooLong { path: path() }),
                _ => {}
            }
        }
        Ok(SitePath(s.to_owned()))
    }

    /// Converts a relative OS path (as found by walking a directory).
    pub fn from_relative(p: &Path) -> Result<Self, PathError> {
        let s = p.to_str().ok_or_else(|| PathError::NotUtf8 { path: p.to_string_lossy().into_owned() })?;
        SitePath::new(s)
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Number of components (a top-level name has depth 1).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The containing directory, or `None` at top level.
    pub fn parent(&self) -> Option<SitePath> {
        self.0.rfind('/').map(|i| SitePath(self.0[..i].to_owned()))
    }

    /// Every proper ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..i])
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The lowercase extension of the file name, if it has one.
    pub fn extension(&self) -> Option<String> {
        let name = self.file_name();
        name.rfind('.').filter(|&i| i > 0).map(|i| name[i + 1..].to_ascii_lowercase())
    }

    /// `root` joined with this path.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }
}

impl fmt::Display for SitePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SitePath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        SitePath::new(&s)
    }
}

impl From<SitePath> for String {
    fn from(p: SitePath) -> String {
        p.0
    }
}

/// Longest site name, in bytes.
pub const MAX_SITE_NAME: usize = 64;

/// The name of a hosted site: also its directory name on every server, so
/// it is one safe path component: ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit, at most [`MAX_SITE_NAME`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteName(String);

impl SiteName {
    /// Checks `s` and wraps it.
    pub fn new(s: &str) -> Result<Self, PathError> {
        if Self::valid(s) {
            Ok(SiteName(s.to_owned()))
        } else {
            Err(PathError::BadSiteName { name: s.to_owned() })
        }
    }

    /// Whether `s` is a valid site name (what [`SiteName::new`] checks).
    pub fn valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_SITE_NAME
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SiteName {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        SiteName::new(&s)
    }
}

impl From<SiteName> for String {
    fn from(n: SiteName) -> String {
        n.0
    }
}

/// Checks that a symlink at `link` with target `target` stays inside the site:
/// the target is relative, and resolving it lexically from the link's
/// directory never climbs above the root.
pub fn check_symlink_target(link: &SitePath, target: &str) -> Result<(), PathError> {
    let path = || format!("{link} -> {target}");
    if target.is_empty() {
        return Err(PathError::Empty);
    }
    if target.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { path: path() });
    }
    if target.contains('\0') {
        return Err(PathError::Nul { path: path() });
    }
    if target.starts_with('/') {
        return Err(PathError::Absolute { path: path() });
    }
    let mut depth = link.depth() - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => depth = depth.checked_sub(1).ok_or_else(|| PathError::Escapes { path: path() })?,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Most symlinks one resolution passes through (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// The symlinks of a whole tree (a staging tree, or a release as an
/// assignment leaves it), checked together by [`TreeLinks::check`].
///
/// Only symlinks matter: a target is resolved component by component from
/// the link's directory; a component that names another symlink is replaced
/// by where that symlink resolves, and any other component (a directory, a
/// file, or nothing at all) is taken as written. Taking missing entries as
/// directories refuses more than the kernel would (it stops at the missing
/// entry), never less. Each symlink is resolved once and remembered, so a
/// tree of millions of symlinks costs the length of their targets, not the
/// length of every chain through them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeLinks {
    links: BTreeMap<String, String>,
}

impl TreeLinks {
    /// No symlinks.
    pub fn new() -> Self {
        TreeLinks::default()
    }

    /// Number of symlinks.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Records the symlink `link -> target`, replacing any entry at `link`.
    pub fn insert(&mut self, link: &SitePath, target: &str) {
        self.links.insert(link.as_str().to_owned(), target.to_owned());
    }

    /// Forgets the entry at `path` (it became a file or a directory).
    pub fn remove(&mut self, path: &SitePath) {
        self.links.remove(path.as_str());
    }

    /// Forgets the entry at `path` and every symlink below it (a removed tree).
    pub fn remove_tree(&mut self, path: &SitePath) {
        self.links.remove(path.as_str());
        let prefix = format!("{path}/");
        let under: Vec<String> = self
            .links
            .range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded))
            .map(|(l, _)| l)
            .take_while(|l| l.starts_with(&prefix))
            .cloned()
            .collect();
        for l in under {
            self.links.remove(&l);
        }
    }

    /// Checks that every symlink resolves inside the tree when every symlink
    /// on its way is followed. The first symlink that does not is named, with
    /// the one it escapes through.
    pub fn check(&self) -> Result<(), PathError> {
        let mut resolved = HashMap::new();
        let mut chain = Vec::new();
        for link in self.links.keys() {
            self.resolve(link, &mut resolved, &mut chain)?;
        }
        Ok(())
    }

    /// Where the symlink `link` leads, as a path from the root with no
    /// symlink in it (`""` for the root itself).
    fn resolve<'a>(
        &'a self,
        link: &'a str,
        resolved: &mut HashMap<&'a str, String>,
        chain: &mut Vec<&'a str>,
    ) -> Result<String, PathError> {
        if let Some(at) = resolved.get(link) {
            return Ok(at.clone());
        }
        let target = self.links.get(link).map_or("", String::as_str);
        if chain.contains(&link) || chain.len() >= MAX_SYMLINK_HOPS {
            return Err(PathError::SymlinkLoop { link: link.to_owned(), target: target.to_owned() });
        }
        if target.starts_with('/') {
            return Err(PathError::Absolute { path: format!("{link} -> {target}") });
        }
        chain.push(link);
        let mut at = link.rfind('/').map_or(String::new(), |i| link[..i].to_owned());
        let mut through: Option<&str> = None;
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." if at.is_empty() => {
                    return Err(match through {
                        Some(via) => PathError::EscapesThrough {
                            link: link.to_owned(),
                            target: target.to_owned(),
                            through: format!("{via} -> {}", self.links.get(via).map_or("", String::as_str)),
                        },
                        None => PathError::Escapes { path: format!("{link} -> {target}") },
                    });
                }
                ".." => at.truncate(at.rfind('/').unwrap_or(0)),
                name => {
                    if !at.is_empty() {
                        at.push('/');
                    }
                    at.push_str(name);
                    if let Some((next, _)) = self.links.get_key_value(at.as_str()) {
                        at = self.resolve(next, resolved, chain)?;
                        through = Some(next);
                    }
                }
            }
        }
        chain.pop();
        resolved.insert(link, at.clone());
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        for p in ["a", "a/b/c", "dir with space/ü.html", ".hidden/x", "a..b", "..a"] {
            assert_eq!(SitePath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn rejects_escapes_and_odd_forms() {
        assert!(matches!(SitePath::new("../x"), Err(PathError::Escapes { .. })));
        assert!(matches!(SitePath::new("a/../../x"), Err(PathError::Escapes { .. })));
        assert!(matches!(SitePath::new("/etc/x"), Err(PathError::Absolute { .. })));
        assert!(matches!(SitePath::new("a//b"), Err(PathError::NotNormal { .. })));
        assert!(matches!(SitePath::new("a/./b"), Err(PathError::NotNormal { .. })));
        assert!(matches!(SitePath::new("a/"), Err(PathError::NotNormal { .. })));
        assert!(matches!(SitePath::new("a\0b"), Err(PathError::Nul { .. })));
        assert!(matches!(SitePath::new(""), Err(PathError::Empty)));
        assert!(matches!(SitePath::new(&"x".repeat(256)), Err(PathError::TooLong { .. })));
    }

    #[test]
    fn ancestors_parent_and_extension() {
        let p = SitePath::new("a/b/c.TXT").unwrap();
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.depth(), 3);
        assert_eq!(p.extension().as_deref(), Some("txt"));
        assert_eq!(SitePath::new(".bashrc").unwrap().extension(), None);
    }

    #[test]
    fn site_names_are_single_safe_components() {
        for ok in ["www", "shop.example.com", "a_b-1", "9"] {
            assert_eq!(SiteName::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "ü", &"x".repeat(65)] {
            assert!(SiteName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        let top = SitePath::new("link").unwrap();
        let deep = SitePath::new("a/b/link").unwrap();
        assert!(check_symlink_target(&top, "x/y").is_ok());
        assert!(check_symlink_target(&deep, "../../x").is_ok());
        assert!(check_symlink_target(&deep, "./../c/../d").is_ok());
        assert!(check_symlink_target(&top, "../x").is_err());
        assert!(check_symlink_target(&deep, "../../../x").is_err());
        assert!(check_symlink_target(&deep, "../../x/../../y").is_err());
        assert!(check_symlink_target(&top, "/etc/passwd").is_err());
    }

    fn links(pairs: &[(&str, &str)]) -> TreeLinks {
        let mut t = TreeLinks::new();
        for (l, target) in pairs {
            t.insert(&SitePath::new(l).unwrap(), target);
        }
        t
    }

    /// Issue 15 item 1: a target that climbs out through another symlink is
    /// refused, naming both; each link alone passes the text check.
    #[test]
    fn a_chain_of_symlinks_that_leaves_the_tree_is_refused() {
        let root = "a/b/c/d/e/f/g/h/i/j/root";
        let up = "../../../../../../../../../..";
        let passwd = format!("{root}/{up}/etc/passwd");
        assert!(check_symlink_target(&SitePath::new(root).unwrap(), up).is_ok());
        assert!(check_symlink_target(&SitePath::new("passwd").unwrap(), &passwd).is_ok());
        let err = links(&[(root, up), ("passwd", &passwd)]).check().unwrap_err();
        assert!(
            matches!(&err, PathError::EscapesThrough { link, through, .. }
                if link == "passwd" && through.starts_with(root)),
            "{err}"
        );
        assert!(err.to_string().contains("symlink passwd ->"), "{err}");
        // Without the climbing link the same target is a plain path inside.
        assert!(links(&[("passwd", &passwd)]).check().is_ok());
    }

    #[test]
    fn chains_inside_the_tree_and_dangling_links_pass() {
        let ok = links(&[
            ("top", "."),
            ("a/up", ".."),
            ("a/b/l", "../up/top/a/b/x"),
            ("x", "a/b/l"),
            ("dangling", "no/such/thing"),
            ("a/sib", "../a/b/../up"),
        ]);
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn loops_and_long_chains_are_refused_and_absolute_targets_too() {
        let err = links(&[("a", "b"), ("b", "a")]).check().unwrap_err();
        assert!(matches!(err, PathError::SymlinkLoop { .. }), "{err}");
        let mut long = TreeLinks::new();
        for i in 0..MAX_SYMLINK_HOPS + 1 {
            long.insert(&SitePath::new(&format!("l{i}")).unwrap(), &format!("l{}", i + 1));
        }
        assert!(matches!(long.check(), Err(PathError::SymlinkLoop { .. })));
        assert!(matches!(links(&[("a", "/etc")]).check(), Err(PathError::Absolute { .. })));
        // Climbing through a symlink that itself leads to the parent of a deep directory.
        let err = links(&[("d/e/up", "../.."), ("d/x", "e/up/../y")]).check().unwrap_err();
        assert!(matches!(err, PathError::EscapesThrough { .. }), "{err}");
    }

    #[test]
    fn removed_trees_take_their_symlinks_with_them() {
        let mut t = links(&[("a/up", "../.."), ("a/b/c", "x"), ("ab", "y"), ("passwd", "a/up/etc/passwd")]);
        assert!(t.check().is_err());
        t.remove_tree(&SitePath::new("a").unwrap());
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t.check(), Ok(()));
    }
}
