//! Generated site trees for tests and benchmarks.
//!
//! [`generate`] writes a seeded tree with every kind of entry a web site
//! has, and some it should not have but might: nested directories, text
//! (compressible) and binary (incompressible) files, already-compressed
//! image types, empty files and directories, names with spaces and non-ASCII
//! letters, symlinks to files and directories, several modes. [`mutate`]
//! then changes it the way a content team does: small edits to a fraction of
//! the bytes, new files, deletions, moves, mode changes, re-pointed
//! symlinks, and entries that change type. The same seed always gives the
//! same tree.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape of a generated tree.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    /// Directories (besides the root), nested up to four deep.
    pub dirs: usize,
    /// Small files, up to `small_max` bytes each.
    pub small_files: usize,
    /// Largest small file.
    pub small_max: usize,
    /// Large files.
    pub large_files: usize,
    /// Size of each large file.
    pub large_size: usize,
    /// Symlinks.
    pub symlinks: usize,
}

impl CorpusSpec {
    /// A tree of a few hundred entries, quick to build and compare.
    pub fn small() -> Self {
        CorpusSpec {
            dirs: 20,
            small_files: 150,
            small_max: 20_000,
            large_files: 1,
            large_size: 3 << 20,
            symlinks: 8,
        }
    }
}

/// How to change a tree.
#[derive(Debug, Clone)]
pub struct EditSpec {
    /// Fraction of all file bytes to edit in place (overwrites, insertions, deletions).
    pub byte_fraction: f64,
    /// New files.
    pub add: usize,
    /// Files deleted.
    pub delete: usize,
    /// Files moved (some to new directories).
    pub rename: usize,
    /// Mode changes.
    pub chmod: usize,
    /// Symlinks re-pointed.
    pub relink: usize,
    /// Change a file into a directory and a directory into a file.
    pub type_changes: bool,
}

impl Default for EditSpec {
    fn default() -> Self {
        EditSpec {
            byte_fraction: 0.01,
            add: 10,
            delete: 8,
            rename: 6,
            chmod: 4,
            relink: 2,
            type_changes: true,
        }
    }
}

const WORDS: &[&str] = &[
    "content",
    "mover",
    "publish",
    "server",
    "release",
    "staging",
    "segment",
    "leader",
    "multicast",
    "atomic",
    "<div>",
    "</div>",
    "<p>",
    "</p>",
    "the",
    "and",
    "of",
    "to",
    "a",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "price",
    "stock",
    "news",
    "weather",
    "catalog",
    "ü",
    "日本",
    "\n",
];
const NAME_PARTS: &[&str] =
    &["index", "page", "about", "news", "img", "data", "Über uns", "日本語", "a b", "x"];
const TEXT_EXT: &[&str] = &["html", "css", "js", "txt", "json", "xml"];
const BIN_EXT: &[&str] = &["png", "jpg", "bin", "dat"];

fn text(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        let w = WORDS.choose(rng).copied().unwrap_or("x");
        out.extend_from_slice(w.as_bytes());
        out.push(b' ');
    }
    out.truncate(n);
    out
}

fn binary(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rng.fill_bytes(&mut out);
    out
}

fn name(rng: &mut ChaCha8Rng, i: usize, ext: Option<&str>) -> String {
    let part = NAME_PARTS.choose(rng).copied().unwrap_or("f");
    match ext {
        Some(e) => format!("{part}-{i}.{e}"),
        None => format!("{part}-{i}"),
    }
}

fn stamp(path: &Path, secs: i64) -> io::Result<()> {
    filetime::set_symlink_file_times(
        path,
        FileTime::from_unix_time(secs, 0),
        FileTime::from_unix_time(secs, 0),
    )
}

/// Every directory under `root` (root included), sorted.
fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

/// Every regular file under `root`, sorted.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

/// A relative symlink target from `link` to `target`, both under `root`.
fn relative(root: &Path, link: &Path, target: &Path) -> PathBuf {
    let link_dir = link.parent().unwrap_or(root).strip_prefix(root).unwrap_or(Path::new(""));
    let up = link_dir.components().count();
    let mut rel = PathBuf::new();
    for _ in 0..up {
        rel.push("..");
    }
    rel.push(target.strip_prefix(root).unwrap_or(target));
    rel
}

fn write_file(rng: &mut ChaCha8Rng, path: &Path, size: usize) -> io::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let bytes = if TEXT_EXT.contains(&ext) { text(rng, size) } else { binary(rng, size) };
    fs::write(path, bytes)?;
    let mode = *[0o644, 0o644, 0o644, 0o600, 0o755].choose(rng).unwrap_or(&0o644);
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    stamp(path, 1_700_000_000 + rng.random_range(0..1_000_000))
}

fn random_file_name(rng: &mut ChaCha8Rng, i: usize) -> String {
    let ext = if rng.random_bool(0.7) { TEXT_EXT.choose(rng) } else { BIN_EXT.choose(rng) };
    name(rng, i, ext.copied())
}

/// Writes a tree under `root` (created). Returns the bytes of file content written.
pub fn generate(root: &Path, seed: u64, spec: &CorpusSpec) -> io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    fs::create_dir_all(root)?;
    let mut dirs = vec![root.to_owned()];
    for i in 0..spec.dirs {
        let parent = dirs.choose(&mut rng).cloned().unwrap_or_else(|| root.to_owned());
        let depth = parent.strip_prefix(root).map_or(0, |p| p.components().count());
        let parent = if depth >= 4 { root.to_owned() } else { parent };
        let d = parent.join(name(&mut rng, i, None));
        fs::create_dir_all(&d)?;
        dirs.push(d);
    }
    let mut total = 0u64;
    for i in 0..spec.small_files {
        let dir = dirs.choose(&mut rng).cloned().unwrap_or_else(|| root.to_owned());
        let size = if rng.random_bool(0.05) { 0 } else { rng.random_range(1..=spec.small_max.max(1)) };
        let path = dir.join(random_file_name(&mut rng, i));
        write_file(&mut rng, &path, size)?;
        total += size as u64;
    }
    for i in 0..spec.large_files {
        let ext = if i % 2 == 0 { "txt" } else { "bin" };
        let path = root.join(format!("large-{i}.{ext}"));
        write_file(&mut rng, &path, spec.large_size)?;
        total += spec.large_size as u64;
    }
    let files = files_under(root);
    for i in 0..spec.symlinks {
        let dir = dirs.choose(&mut rng).cloned().unwrap_or_else(|| root.to_owned());
        let link = dir.join(format!("link-{i}"));
        // Directory links point below the root: a link to the root itself would have an empty target.
        let target = if i % 3 == 0 { dirs[1..].choose(&mut rng) } else { files.choose(&mut rng) };
        if let Some(t) = target {
            symlink(relative(root, &link, t), &link)?;
        }
    }
    // Directory modes last, so that files could be written into them.
    for (i, d) in dirs.iter().enumerate().skip(1) {
        if i % 7 == 0 {
            fs::set_permissions(d, fs::Permissions::from_mode(0o750))?;
        }
    }
    Ok(total)
}

/// Edits `len` bytes around a random place of `data`: overwrite, insert or delete.
fn edit(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, len: usize) {
    let at = if data.is_empty() { 0 } else { rng.random_range(0..data.len()) };
    let new = binary(rng, len);
    match rng.random_range(0..3) {
        0 => {
            let end = (at + len).min(data.len());
            data.splice(at..end, new[..end - at].iter().copied());
        }
        1 => {
            data.splice(at..at, new);
        }
        _ => {
            let end = (at + len).min(data.len());
            data.drain(at..end);
        }
    }
}

/// Changes the tree under `root` as described by `spec`. Returns the number
/// of bytes edited in place.
pub fn mutate(root: &Path, seed: u64, spec: &EditSpec) -> io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xED17);
    let files = files_under(root);
    let total: u64 = files.iter().map(|f| fs::metadata(f).map_or(0, |m| m.len())).sum();
    let budget = (total as f64 * spec.byte_fraction) as u64;
    let mut edited = 0u64;
    // Edits cluster in a tenth of the files, as real changes do.
    let mut touched: Vec<&PathBuf> = files.iter().filter(|_| rng.random_bool(0.1)).collect();
    if touched.is_empty() {
        touched.extend(files.first());
    }
    while edited < budget && !touched.is_empty() {
        let f = touched[rng.random_range(0..touched.len())];
        let mut data = fs::read(f)?;
        let before = fs::metadata(f)?;
        for _ in 0..rng.random_range(1..5) {
            let len = rng.random_range(1..=256);
            edit(&mut rng, &mut data, len);
            edited += len as u64;
        }
        fs::write(f, &data)?;
        let mtime =
            FileTime::from_last_modification_time(&before).unix_seconds() + 1 + rng.random_range(0..100);
        stamp(f, mtime)?;
    }
    let mut files = files_under(root);
    for _ in 0..spec.delete.min(files.len()) {
        let i = rng.random_range(0..files.len());
        fs::remove_file(files.swap_remove(i))?;
    }
    for i in 0..spec.rename.min(files.len()) {
        let k = rng.random_range(0..files.len());
        let from = files.swap_remove(k);
        let dirs = dirs_under(root);
        let mut dir = dirs.choose(&mut rng).cloned().unwrap_or_else(|| root.to_owned());
        if i % 2 == 0 {
            dir = dir.join(format!("moved-{i}"));
            fs::create_dir_all(&dir)?;
        }
        let to =
            dir.join(format!("renamed-{i}-{}", from.file_name().and_then(|n| n.to_str()).unwrap_or("f")));
        fs::rename(&from, &to)?;
    }
    let dirs = dirs_under(root);
    for i in 0..spec.add {
        let dir = dirs.choose(&mut rng).cloned().unwrap_or_else(|| root.to_owned());
        let size = rng.random_range(0..20_000);
        let path = dir.join(format!("added-{i}-{}", random_file_name(&mut rng, i)));
        write_file(&mut rng, &path, size)?;
    }
    let files = files_under(root);
    for _ in 0..spec.chmod {
        if let Some(f) = files.choose(&mut rng) {
            let mode = fs::metadata(f)?.permissions().mode() & 0o777;
            fs::set_permissions(f, fs::Permissions::from_mode(if mode == 0o640 { 0o644 } else { 0o640 }))?;
        }
    }
    let links: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_symlink())
        .map(|e| e.into_path())
        .collect();
    for link in links.iter().take(spec.relink) {
        if let Some(t) = files.choose(&mut rng) {
            fs::remove_file(link)?;
            symlink(relative(root, link, t), link)?;
        }
    }
    if spec.type_changes {
        let files = files_under(root);
        // A file becomes a directory with a file in it.
        if let Some(f) = files.first() {
            fs::remove_file(f)?;
            fs::create_dir(f)?;
            fs::write(f.join("now-a-dir.html"), text(&mut rng, 500))?;
        }
        // A file becomes a symlink.
        if let (Some(f), Some(t)) = (files.get(1), files.last()) {
            fs::remove_file(f)?;
            symlink(relative(root, f, t), f)?;
        }
        // A directory, with all it holds, becomes a file.
        if let Some(d) = dirs_under(root).into_iter().skip(1).last() {
            fs::remove_dir_all(&d)?;
            fs::write(&d, b"now a file")?;
        }
        fs::create_dir_all(root.join("empty dir/also empty"))?;
    }
    Ok(edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_generates_and_mutates_small_and_tiny_trees() {
        let tiny = CorpusSpec {
            dirs: 2,
            small_files: 4,
            small_max: 2_000,
            large_files: 0,
            large_size: 0,
            symlinks: 3,
        };
        for seed in 0..40u64 {
            for spec in [tiny.clone(), CorpusSpec::small()] {
                let t = tempfile::tempdir().unwrap();
                let root = t.path().join("tree");
                generate(&root, seed, &spec).unwrap_or_else(|e| panic!("generate seed {seed}: {e}"));
                mutate(&root, seed, &EditSpec::default())
                    .unwrap_or_else(|e| panic!("mutate seed {seed} {spec:?}: {e}"));
            }
        }
    }
}
