//! Paths inside a site, checked so that nothing in an assignment can reach
//! outside the site root.
//!
//! A [`SitePath`] is relative, `/`-separated, normalised (no empty, `.` or
//! `..` components), UTF-8 and free of NUL bytes. Symlink targets are checked
//! by [`check_symlink_target`]: relative, and never climbing above the root
//! when resolved from the link's directory. The applier adds the last rule,
//! which needs the file system: it never follows a symlink while resolving a
//! path (see `storage::releases`).

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
}
