//! `cmover demo`: Content Mover on a bundled sample site, with nothing to
//! set up. It publishes the sample to a site root as a full assignment,
//! changes the staging tree (edits, additions, a deletion, a move, a mode
//! change, a symlink), publishes the change as a delta assignment, checks
//! that the live tree is byte-identical to staging each time, and rolls back.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use thiserror::Error;

use crate::config::Config;
use crate::offline::{self, DiffArgs, OfflineError};
use crate::storage::assignment_file::AssignmentFile;
use crate::storage::releases::SiteRoot;
use crate::storage::tree::{compare_trees, copy_tree, ScanError};

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// Writing the sample or the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A command failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// Comparing trees failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The live tree is not what was published: a bug.
    #[error("live tree differs from {expected}: {diffs:?}")]
    Mismatch {
        /// What it should equal.
        expected: String,
        /// The differences.
        diffs: Vec<String>,
    },
}

/// Deterministic bytes that do not compress (a stand-in for images).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn page(title: &str, paragraphs: usize) -> String {
    let body: String = (0..paragraphs)
        .map(|i| {
            format!("<p>Paragraph {i} of {title}: content moves from staging to every server at once.</p>\n")
        })
        .collect();
    format!("<!doctype html>\n<html><head><title>{title}</title><link rel=stylesheet href=/css/site.css></head>\n<body>\n<h1>{title}</h1>\n{body}</body></html>\n")
}

/// Writes version 1 of the sample site under `dir`.
pub fn write_sample(dir: &Path) -> io::Result<()> {
    for d in ["about", "css", "js", "images", "docs", "uploads"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::write(dir.join("index.html"), page("Welcome", 40))?;
    fs::write(dir.join("about/index.html"), page("About us", 12))?;
    fs::write(dir.join("about/Über uns.html"), page("Über uns", 12))?;
    fs::write(
        dir.join("css/site.css"),
        "body { font-family: sans-serif; margin: 2em; }\nh1 { color: #234; }\n",
    )?;
    fs::write(dir.join("js/app.js"), "document.title += ' · Content Mover';\n")?;
    fs::write(dir.join("images/logo.png"), noise(20_000, 1))?;
    fs::write(dir.join("images/banner photo.jpg"), noise(300_000, 2))?;
    let manual: String =
        (0..20_000).map(|i| format!("{i:05}: the manual says the same thing many times.\n")).collect();
    fs::write(dir.join("docs/manual.txt"), manual)?;
    symlink("index.html", dir.join("home.html"))?;
    symlink("docs", dir.join("latest"))?;
    Ok(())
}

/// Turns version 1 of the sample into version 2.
pub fn change_sample(dir: &Path) -> io::Result<()> {
    let manual = dir.join("docs/manual.txt");
    let mut text = fs::read_to_string(&manual)?;
    text.replace_range(500_000..500_004, "SAYS");
    fs::write(&manual, text)?;
    fs::write(dir.join("index.html"), page("Welcome back", 41))?;
    fs::create_dir_all(dir.join("news"))?;
    fs::write(dir.join("news/2026-11-24.html"), page("News of the day", 5))?;
    fs::remove_file(dir.join("js/app.js"))?;
    fs::create_dir_all(dir.join("images/banners"))?;
    fs::rename(dir.join("images/banner photo.jpg"), dir.join("images/banners/banner-2026.jpg"))?;
    fs::set_permissions(dir.join("css/site.css"), fs::Permissions::from_mode(0o600))?;
    fs::remove_file(dir.join("home.html"))?;
    symlink("about/index.html", dir.join("home.html"))?;
    Ok(())
}

fn check_same(live: &Path, expected: &Path) -> Result<(), DemoError> {
    let diffs = compare_trees(live, expected)?;
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(DemoError::Mismatch { expected: expected.display().to_string(), diffs })
    }
}

/// Runs the demo in `dir` (which should be empty), writing progress to `out`.
pub fn run(dir: &Path, config: &Config, out: &mut impl Write) -> Result<(), DemoError> {
    let staging = dir.join("staging");
    let shadow = dir.join("shadow");
    let previous = dir.join("shadow-1");
    let site_root = dir.join("site");
    let assignments = dir.join("assignments");
    fs::create_dir_all(&assignments)?;
    let site = SiteRoot::new(&site_root, offline::site_options(config));
    writeln!(out, "Content Mover demo in {}", dir.display())?;

    write_sample(&staging)?;
    writeln!(out, "\n1. publish the sample site ({}) as a full assignment", staging.display())?;
    let first = assignments.join("1.cma");
    let summary = offline::diff(&shadow, &staging, &first, DiffArgs::default(), config)?;
    writeln!(out, "   {summary}")?;
    for o in offline::apply(&first, &site_root, true, None, offline::site_options(config))? {
        writeln!(out, "   {}", offline::describe(&site_root, &o))?;
    }
    check_same(&site_root.join("live"), &staging)?;
    writeln!(out, "   verified: {}/live is identical to staging", site_root.display())?;
    copy_tree(&staging, &shadow)?;
    copy_tree(&staging, &previous)?;

    change_sample(&staging)?;
    writeln!(
        out,
        "\n2. edit, add, delete, move, chmod and relink in staging; publish the change as a delta"
    )?;
    let second = assignments.join("2.cma");
    let summary = offline::diff(&shadow, &staging, &second, DiffArgs::default(), config)?;
    writeln!(out, "   {summary}")?;
    write!(
        out,
        "{}",
        indent(&offline::inspect_text(&AssignmentFile::open(&second, None).map_err(OfflineError::from)?))
    )?;
    for o in offline::apply(&second, &site_root, true, None, offline::site_options(config))? {
        writeln!(out, "   {}", offline::describe(&site_root, &o))?;
    }
    check_same(&site_root.join("live"), &staging)?;
    writeln!(out, "   verified: live is identical to the edited staging")?;
    fs::remove_dir_all(&shadow)?;
    copy_tree(&staging, &shadow)?;

    writeln!(out, "\n3. roll back")?;
    let (from, to) = site.rollback().map_err(OfflineError::from)?;
    writeln!(out, "   live went from release {from} back to release {to}")?;
    check_same(&site_root.join("live"), &previous)?;
    writeln!(out, "   verified: live is identical to the first version")?;
    writeln!(
        out,
        "\nLook around: {}  (live -> {})",
        site_root.display(),
        fs::read_link(site_root.join("live"))?.display()
    )?;
    writeln!(out, "Inspect an assignment: cmover inspect {}", second.display())?;
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   | {l}\n")).collect()
}
