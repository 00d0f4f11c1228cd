//! Delta benchmark: Content Mover's assignment for a ~1 % change of a
//! generated site, against rsync for the same change, in the same run.
//!
//! `cargo bench --bench delta` (needs `rsync`: `apt-get install -y rsync`).
//! Options: `--size-mb N` (default 200), `--runs N` (default 5), `--seed N`.
//!
//! Each run starts from the same state: a site root whose live release is
//! the old tree, and an rsync destination that is a copy of the old tree.
//! Timed: `cmover diff` + apply + commit (in-process), versus
//! `rsync -a -z --no-whole-file --delete --stats NEW/ DEST/` (`--delete` so
//! that both end with the same tree; both results are checked to be
//! identical to the new tree). Bytes: the assignment file versus rsync's
//! "Total bytes sent". Prints medians.

mod common;

use common::{arg, median};

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::protocol::ids::{AssignmentSerial, JobId};
use cmover::storage::assignment_file::AssignmentFile;
use cmover::storage::pack::{pack, PackOptions};
use cmover::storage::releases::{SiteOptions, SiteRoot};
use cmover::storage::tree::{compare_trees, copy_tree, TreeFilter};

fn opts(serial: u64, base: u64) -> PackOptions {
    let config = cmover::config::Config::default();
    PackOptions {
        site: cmover::offline::default_site(),
        serial: AssignmentSerial(serial),
        base_serial: AssignmentSerial(base),
        job_id: JobId(0),
        created_ms: 0,
        filter: TreeFilter::default(),
        incompressible: config.content.incompressible.iter().cloned().collect(),
        compression: Default::default(),
        min_compression_gain: config.content.min_compression_gain,
        encrypt: None,
    }
}

fn tree_bytes(root: &Path) -> (u64, u64) {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .fold((0, 0), |(n, b), e| (n + 1, b + e.metadata().map_or(0, |m| m.len())))
}

fn check(a: &Path, b: &Path, who: &str) {
    let diffs = compare_trees(a, b).expect("compare");
    assert!(diffs.is_empty(), "{who} result differs from the new tree: {:?}", &diffs[..diffs.len().min(5)]);
}

/// Flushes dirty data (untimed) so that each timed step starts from a clean
/// file system and pays only for its own writes.
fn sync() {
    let _ = Command::new("sync").status();
}

fn main() {
    if Command::new("rsync").arg("--version").output().is_err() {
        eprintln!("rsync is not installed: apt-get install -y rsync");
        std::process::exit(2);
    }
    let size_mb = arg("--size-mb", 200);
    let runs = arg("--runs", 5).max(1);
    let seed = arg("--seed", 1);
    let work = tempfile::Builder::new().prefix("cmover-bench-delta-").tempdir().expect("temp dir");
    let (old, new) = (work.path().join("old"), work.path().join("new"));

    // About half the bytes in small files (up to 32 KiB), half in 20 MiB files.
    let large = (size_mb / 2 / 20).max(1) as usize;
    let small = ((size_mb as usize * (1 << 20) / 2) / (16 << 10)).max(10);
    let spec = CorpusSpec {
        dirs: 300,
        small_files: small,
        small_max: 32 << 10,
        large_files: large,
        large_size: 20 << 20,
        symlinks: 50,
    };
    let edits = EditSpec {
        byte_fraction: 0.01,
        add: 60,
        delete: 40,
        rename: 30,
        chmod: 10,
        relink: 5,
        type_changes: true,
    };
    corpus::generate(&old, seed, &spec).expect("generate");
    copy_tree(&old, &new).expect("copy");
    let edited = corpus::mutate(&new, seed, &edits).expect("mutate");
    let (files, bytes) = tree_bytes(&new);
    println!("corpus: {files} files, {:.1} MB; {edited} bytes edited in place ({:.2} %), plus {} added, {} deleted, {} moved, {} mode changes, type changes",
        bytes as f64 / 1e6, edited as f64 * 100.0 / bytes as f64, edits.add, edits.delete, edits.rename, edits.chmod);

    let (mut ours_s, mut rsync_s, mut ours_b, mut rsync_b, mut rsync_recv) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut phases: Vec<[f64; 4]> = Vec::new();
    for run in 0..runs {
        // rsync: destination starts as a copy of the old tree.
        // Fresh directories per run, deleted only at the end: deleting a tree
        // just before a timed step would make the file system's inode
        // allocator slow for both tools.
        let dest = work.path().join(format!("dest-{run}"));
        copy_tree(&old, &dest).expect("copy for rsync");
        sync();
        let t = Instant::now();
        let out = Command::new("rsync")
            .args(["-a", "-z", "--no-whole-file", "--delete", "--stats"])
            .arg(format!("{}/", new.display()))
            .arg(format!("{}/", dest.display()))
            .output()
            .expect("run rsync");
        rsync_s.push(t.elapsed().as_secs_f64());
        assert!(out.status.success(), "rsync failed: {}", String::from_utf8_lossy(&out.stderr));
        let stats = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> f64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("0").replace(',', ""))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        rsync_b.push(field("Total bytes sent:"));
        rsync_recv.push(field("Total bytes received:"));
        check(&dest, &new, "rsync");

        // Content Mover: a site whose live release is the old tree.
        let site_root = work.path().join(format!("site-{run}"));
        let site = SiteRoot::new(&site_root, SiteOptions { min_free_disk: 0, ..SiteOptions::default() });
        let full = work.path().join(format!("full-{run}.cma"));
        pack(&work.path().join("nothing"), &old, &full, &opts(1, 0)).expect("pack full");
        let a = AssignmentFile::open(&full, None).expect("open full");
        site.apply(&a).expect("apply full");
        site.commit(a.header.serial).expect("commit full");

        let delta = work.path().join(format!("delta-{run}.cma"));
        sync();
        let t = Instant::now();
        let summary = pack(&old, &new, &delta, &opts(2, 1)).expect("pack delta");
        let t_pack = t.elapsed().as_secs_f64();
        let a = AssignmentFile::open(&delta, None).expect("open delta");
        let t_open = t.elapsed().as_secs_f64();
        site.apply(&a).expect("apply delta");
        let t_apply = t.elapsed().as_secs_f64();
        site.commit(a.header.serial).expect("commit delta");
        ours_s.push(t.elapsed().as_secs_f64());
        phases.push([t_pack, t_open - t_pack, t_apply - t_open, t.elapsed().as_secs_f64() - t_apply]);
        ours_b.push(summary.assignment_bytes as f64);
        check(&site_root.join("live"), &new, "cmover");
        if run == 0 {
            println!("assignment: {summary}");
        }
        eprintln!(
            "run {}: cmover {:.3} s {} B, rsync {:.3} s {} B",
            run + 1,
            ours_s[run as usize],
            ours_b[run as usize],
            rsync_s[run as usize],
            rsync_b[run as usize]
        );
    }
    let (ob, rb, os, rs) = (median(ours_b), median(rsync_b), median(ours_s), median(rsync_s));
    println!();
    println!("| medians of {runs} runs        | cmover diff+apply | rsync -z --no-whole-file | ratio |");
    println!("|----------------------------|------------------:|-------------------------:|------:|");
    println!("| bytes sent                 | {ob:>17.0} | {rb:>24.0} | {:>5.2} |", ob / rb);
    println!("| wall time (s)              | {os:>17.3} | {rs:>24.3} | {:>5.2} |", os / rs);
    println!("(rsync also received {:.0} bytes of block checksums; cmover needs none)", median(rsync_recv));
    let phase = |k: usize| median(phases.iter().map(|p| p[k]).collect());
    println!(
        "cmover phases (medians, s): diff+pack {:.3}, verify {:.3}, apply {:.3}, commit {:.3}",
        phase(0),
        phase(1),
        phase(2),
        phase(3)
    );
}
