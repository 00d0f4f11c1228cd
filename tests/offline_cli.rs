//! The offline commands through the real `cmover` binary: exit codes,
//! messages, and the files they produce.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::storage::tree::{compare_trees, copy_tree};

fn cmover(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cmover"));
    for a in args {
        cmd.arg(a);
    }
    cmd.env_remove("RUST_LOG").env_remove("CMOVER_CONFIG").output().expect("run cmover")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn identical(a: &Path, b: &Path) {
    let d = compare_trees(a, b).unwrap();
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn diff_apply_inspect_rollback_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v2, site) = (t.path().join("v1"), t.path().join("v2"), t.path().join("site"));
    corpus::generate(&v1, 3, &CorpusSpec::small()).unwrap();
    copy_tree(&v1, &v2).unwrap();
    corpus::mutate(&v2, 3, &EditSpec::default()).unwrap();
    let (a1, a2) = (t.path().join("1.cma"), t.path().join("2.cma"));

    let line = ok(&cmover(&[&"diff", &t.path().join("none"), &v1, &"-o", &a1]));
    assert!(line.starts_with("assignment 1 (full):"), "{line}");
    assert!(line.contains(" new,") && line.contains("stored"), "{line}");
    let out = ok(&cmover(&[&"apply", &a1, &"--site-root", &site]));
    assert!(out.contains("release 1 is live"), "{out}");
    identical(&site.join("live"), &v1);

    let summary = ok(&cmover(&[&"diff", &v1, &v2, &"-o", &a2, &"--json"]));
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["serial"], 2);
    assert_eq!(summary["base_serial"], 1);
    assert!(summary["files_renamed"].as_u64().unwrap() > 0, "{summary}");

    let text = ok(&cmover(&[&"inspect", &a2]));
    assert!(text.contains("(verified)") && text.contains("patch ") && text.contains("rename "), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(&cmover(&[&"inspect", &a2, &"--json"]))).unwrap();
    assert_eq!(json["header"]["serial"], 2);
    assert_eq!(json["header"]["kind"], "content");
    assert!(json["commands"].as_array().unwrap().iter().any(|c| c["op"] == "patch_file"));
    // Streamed now (issue 15 item 8): the same document as the JSON tree it replaced.
    let file = cmover::storage::assignment_file::AssignmentFile::open(&a2, None).unwrap();
    assert_eq!(json, cmover::offline::inspect_json(&file));

    // Two-phase: apply without commit leaves live alone; commit switches.
    let out = ok(&cmover(&[&"apply", &a2, &"--site-root", &site, &"--no-commit"]));
    assert!(out.contains("incoming/2"), "{out}");
    identical(&site.join("live"), &v1);
    ok(&cmover(&[&"commit", &"--site-root", &site, &"--serial", &"2"]));
    identical(&site.join("live"), &v2);
    assert_eq!(fs::read_link(site.join("live")).unwrap(), Path::new("releases/2"));

    let out = ok(&cmover(&[&"rollback", &"--site-root", &site]));
    assert!(out.contains("from release 2 to release 1"), "{out}");
    identical(&site.join("live"), &v1);
    let err = failed(&cmover(&[&"rollback", &"--site-root", &site]));
    assert!(err.contains("nothing to roll back to"), "{err}");
}

#[test]
fn encrypted_assignments_need_the_right_key() {
    let t = tempfile::tempdir().unwrap();
    let (v1, site) = (t.path().join("v1"), t.path().join("site"));
    corpus::generate(&v1, 4, &CorpusSpec::small()).unwrap();
    let (k1, k2, a1) = (t.path().join("k1"), t.path().join("k2"), t.path().join("1.cma"));
    ok(&cmover(&[&"keygen", &"-o", &k1]));
    ok(&cmover(&[&"keygen", &"-o", &k2]));
    let err = failed(&cmover(&[&"keygen", &"-o", &k1]));
    assert!(err.contains("must not exist"), "{err}");
    ok(&cmover(&[&"diff", &t.path().join("none"), &v1, &"-o", &a1, &"--encrypt-key", &k1]));
    let err = failed(&cmover(&[&"apply", &a1, &"--site-root", &site, &"--decrypt-key", &k2]));
    assert!(err.contains("wrong key"), "{err}");
    let err = failed(&cmover(&[&"apply", &a1, &"--site-root", &site]));
    assert!(err.contains("--decrypt-key"), "{err}");
    assert!(!site.join("live").exists());
    let text = ok(&cmover(&[&"inspect", &a1]));
    assert!(text.contains("AES-256-GCM"), "{text}");
    ok(&cmover(&[&"apply", &a1, &"--site-root", &site, &"--decrypt-key", &k1]));
    identical(&site.join("live"), &v1);
    fs::write(&k2, "not hex").unwrap();
    let err = failed(&cmover(&[&"apply", &a1, &"--site-root", &site, &"--decrypt-key", &k2]));
    assert!(err.contains("key file") && err.contains("hex"), "{err}");
}

#[test]
fn config_check_names_key_problem_and_fix() {
    let t = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = ok(&cmover(&[&"config", &"check", &example]));
    assert!(out.contains(": ok"), "{out}");

    let bad = t.path().join("bad.toml");
    fs::write(&bad, "[releases]\nkeep_releases = 1\n").unwrap();
    let err = failed(&cmover(&[&"config", &"check", &bad]));
    assert!(err.contains("releases.keep_releases") && err.contains("fix:"), "{err}");

    fs::write(&bad, "[content]\nexclud = [\"*.tmp\"]\n").unwrap();
    let err = failed(&cmover(&[&"config", &"check", &bad]));
    assert!(err.contains("exclud") && err.contains("line 2") && err.contains("fix:"), "{err}");

    let err = failed(&cmover(&[&"config", &"check", &t.path().join("missing.toml")]));
    assert!(err.contains("missing.toml"), "{err}");

    // The config is honoured: an exclude pattern keeps files out of the assignment.
    let (tree, cfg, a) = (t.path().join("tree"), t.path().join("c.toml"), t.path().join("a.cma"));
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/keep.html"), "x").unwrap();
    fs::write(tree.join("sub/skip.tmp"), "x").unwrap();
    fs::write(&cfg, "[content]\nexclude = [\"*.tmp\"]\n").unwrap();
    ok(&cmover(&[&"--config", &cfg, &"diff", &t.path().join("none"), &tree, &"-o", &a]));
    let text = ok(&cmover(&[&"inspect", &a]));
    assert!(text.contains("sub/keep.html") && !text.contains("skip.tmp"), "{text}");
}

#[test]
fn offline_demo_runs_and_verifies_itself() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(&cmover(&[&"demo", &"--offline", &"--dir", &t.path()]));
    assert_eq!(out.matches("verified:").count(), 3, "{out}");
    assert_eq!(fs::read_link(t.path().join("site/live")).unwrap(), Path::new("releases/1"));
}

const DEEP: &str = "a/b/c/d/e/f/g/h/i/j";
const UP: &str = "../../../../../../../../../..";

/// The release of issue 15's reproduction as an assignment, written through
/// the library (today's `diff` refuses to write it).
fn chained_symlink_assignment(out: &Path) {
    use cmover::protocol::assignment::{AssignmentWriter, Command, FileMeta, NewAssignment};
    use cmover::protocol::crypto::Digest;
    use cmover::protocol::ids::{AssignmentSerial, JobId};
    use cmover::protocol::paths::SitePath;
    let p = |s: &str| SitePath::new(s).unwrap();
    let params = NewAssignment {
        site: cmover::offline::default_site(),
        serial: AssignmentSerial(1),
        base_serial: AssignmentSerial(0),
        job_id: JobId(0),
        created_ms: 0,
        min_compression_gain: 0.05,
    };
    let file = fs::File::create(out).unwrap();
    let mut w = AssignmentWriter::new(file, params, None).unwrap();
    let (data, _) = w.add_section(&mut &b"hi\n"[..], false).unwrap();
    let meta = FileMeta { mode: 0o644, ..FileMeta::default() };
    w.push(&Command::PutFile { path: p("index.html"), meta, size: 3, sha256: Digest::of(b"hi\n"), data });
    let mut dir = String::new();
    for c in DEEP.split('/') {
        dir = if dir.is_empty() { c.to_owned() } else { format!("{dir}/{c}") };
        w.push(&Command::MakeDir { path: p(&dir), mode: 0o755 });
    }
    w.push(&Command::Symlink { path: p(&format!("{DEEP}/root")), target: UP.into() });
    w.push(&Command::Symlink { path: p("passwd"), target: format!("{DEEP}/root/{UP}/etc/passwd") });
    w.finish().unwrap();
}

/// Issue 15 item 1, its reproduction: `passwd` climbs out of the site
/// through the symlink `…/j/root` (each target alone stays inside). `diff`
/// refuses the tree naming both symlinks and writes no assignment; `apply`
/// refuses the assignment whole and creates nothing under the site root.
#[test]
fn chained_symlinks_out_of_the_site_are_refused_by_diff_and_apply() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    fs::create_dir_all(s.join(DEEP)).unwrap();
    fs::write(s.join("index.html"), "hi\n").unwrap();
    symlink(UP, s.join(DEEP).join("root")).unwrap();
    symlink(format!("{DEEP}/root/{UP}/etc/passwd"), s.join("passwd")).unwrap();
    let c = t.path().join("c.cma");
    let err = failed(&cmover(&[&"diff", &t.path().join("empty"), &s, &"-o", &c]));
    assert!(err.contains("symlink passwd ->") && err.contains(&format!("{DEEP}/root ->")), "{err}");
    assert!(err.contains("exclude"), "no advice: {err}");
    assert!(!c.exists(), "an assignment was written");

    chained_symlink_assignment(&c);
    let r = t.path().join("R");
    let err = failed(&cmover(&[&"apply", &c, &"--site-root", &r]));
    assert!(err.contains("symlink passwd ->") && err.contains(&format!("{DEEP}/root ->")), "{err}");
    assert!(!r.exists(), "apply created {}", r.display());
    let err = failed(&cmover(&[&"inspect", &c]));
    assert!(err.contains("symlink passwd ->"), "{err}");
}
