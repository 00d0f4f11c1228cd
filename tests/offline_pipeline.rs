//! The offline pipeline end to end through the library: generated trees are
//! packed, applied and committed, and the live tree must be byte-identical to
//! the tree that was packed; bad assignments and failures midway must leave
//! the site root exactly as it was.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::BufMut;
use cmover::corpus::{self, CorpusSpec, EditSpec};
use cmover::protocol::assignment::{
    encode_trailer, AssignmentWriter, Command, FileMeta, Header, Kind, NewAssignment,
};
use cmover::protocol::crypto::{ContentKey, Digest};
use cmover::protocol::ids::{AssignmentSerial, JobId};
use cmover::protocol::paths::SitePath;
use cmover::storage::assignment_file::AssignmentFile;
use cmover::storage::pack::{pack, PackOptions, PackSummary};
use cmover::storage::releases::{ReleaseError, SiteOptions, SiteRoot};
use cmover::storage::tree::{compare_trees, copy_tree, hash_file, TreeFilter};

fn opts(serial: u64, base: u64, key: Option<&ContentKey>) -> PackOptions {
    PackOptions {
        site: cmover::offline::default_site(),
        serial: AssignmentSerial(serial),
        base_serial: AssignmentSerial(base),
        job_id: JobId(1),
        created_ms: 0,
        filter: TreeFilter::default(),
        incompressible: ["png", "jpg"].iter().map(|s| s.to_string()).collect::<HashSet<_>>(),
        compression: Default::default(),
        min_compression_gain: 0.05,
        encrypt: key.map(|k| (k.clone(), [serial as u8; 32])),
    }
}

fn site(root: &Path) -> SiteRoot {
    SiteRoot::new(root, SiteOptions { min_free_disk: 0, ..SiteOptions::default() })
}

fn publish(site: &SiteRoot, file: &Path, key: Option<&ContentKey>) -> Result<(), ReleaseError> {
    let a = AssignmentFile::open(file, key)?;
    site.apply(&a)?;
    site.commit(a.header.serial)?;
    Ok(())
}

fn assert_identical(live: &Path, expected: &Path) {
    let diffs = compare_trees(live, expected).unwrap();
    assert!(diffs.is_empty(), "live differs from {}: {diffs:#?}", expected.display());
}

/// Everything observable about a tree: kind, mode, size, inode, mtime,
/// content hash, symlink target of every entry. Equal snapshots mean nothing changed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false).into_iter().flatten() {
        let md = e.path().symlink_metadata().unwrap();
        let what = if md.file_type().is_symlink() {
            format!("link {}", fs::read_link(e.path()).unwrap().display())
        } else if md.is_file() {
            format!("file {}", hash_file(e.path()).unwrap())
        } else {
            "dir".to_string()
        };
        let rel = e.path().strip_prefix(root).unwrap();
        // A failed apply may have created and deleted its release in
        // incoming/: that directory's mtime is the only trace it may leave.
        let mtime = if rel == Path::new("incoming") { 0 } else { md.mtime() };
        let desc = format!("{what} mode {:o} ino {} mtime {mtime}", md.mode(), md.ino());
        out.insert(e.path().strip_prefix(root).unwrap().to_owned(), desc);
    }
    out
}

/// Fails with the entries that differ, not the whole snapshots.
fn assert_unchanged(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>, context: &str) {
    let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
        .collect();
    assert!(diffs.is_empty(), "site root changed ({context}): {diffs:#?}");
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    site: SiteRoot,
    a2: PathBuf,
}

/// v1 generated and live; v2 = v1 mutated; a2 the delta v1 → v2, not applied.
fn fixture(seed: u64, spec: &CorpusSpec) -> (Fixture, PackSummary) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let (v1, v2) = (root.join("v1"), root.join("v2"));
    corpus::generate(&v1, seed, spec).unwrap();
    copy_tree(&v1, &v2).unwrap();
    corpus::mutate(&v2, seed, &EditSpec::default()).unwrap();
    let site = site(&root.join("site"));
    let a1 = root.join("1.cma");
    let s1 = pack(&root.join("nothing"), &v1, &a1, &opts(1, 0, None)).unwrap();
    assert_eq!(s1.base_serial, 0);
    publish(&site, &a1, None).unwrap();
    assert_identical(&root.join("site/live"), &v1);
    let a2 = root.join("2.cma");
    let s2 = pack(&v1, &v2, &a2, &opts(2, 1, None)).unwrap();
    (Fixture { _dir: dir, root, v1, v2, site, a2 }, s2)
}

#[test]
fn round_trip_generated_trees_for_several_seeds() {
    let key = ContentKey::from_secret(b"a content key for the round trip").unwrap();
    for seed in [1, 2, 3, 4] {
        let (f, s2) = fixture(seed, &CorpusSpec::small());
        let total: u64 = walkdir::WalkDir::new(&f.v2)
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        assert!(s2.files_patched > 0, "seed {seed}: no deltas: {s2}");
        assert!(s2.files_renamed > 0, "seed {seed}: no renames detected: {s2}");
        assert!(s2.data_stored_bytes * 10 < total, "seed {seed}: {s2} is not a delta of {total} bytes");
        publish(&f.site, &f.a2, None).unwrap();
        assert_identical(&f.root.join("site/live"), &f.v2);
        assert_identical(&f.root.join("site/releases/1"), &f.v1);

        // A third version, encrypted.
        let v3 = f.root.join("v3");
        copy_tree(&f.v2, &v3).unwrap();
        corpus::mutate(&v3, seed + 100, &EditSpec::default()).unwrap();
        let a3 = f.root.join("3.cma");
        pack(&f.v2, &v3, &a3, &opts(3, 2, Some(&key))).unwrap();
        publish(&f.site, &a3, Some(&key)).unwrap();
        assert_identical(&f.root.join("site/live"), &v3);

        assert_eq!(f.site.rollback().unwrap(), (AssignmentSerial(3), AssignmentSerial(2)));
        assert_identical(&f.root.join("site/live"), &f.v2);
    }
}

#[test]
fn round_trip_thousands_of_small_files() {
    let spec = CorpusSpec {
        dirs: 60,
        small_files: 3000,
        small_max: 3000,
        large_files: 3,
        large_size: 2 << 20,
        symlinks: 30,
    };
    let (f, s2) = fixture(42, &spec);
    assert!(s2.files_changed > 0 && s2.removed > 0 && s2.files_new > 0, "{s2}");
    publish(&f.site, &f.a2, None).unwrap();
    assert_identical(&f.root.join("site/live"), &f.v2);
}

#[test]
fn unchanged_files_share_inodes_with_the_previous_release() {
    let (f, _) = fixture(5, &CorpusSpec::small());
    publish(&f.site, &f.a2, None).unwrap();
    let r1 = f.root.join("site/releases/1");
    let r2 = f.root.join("site/releases/2");
    let mut shared = 0;
    for e in walkdir::WalkDir::new(&r2).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let rel = e.path().strip_prefix(&r2).unwrap();
        if let Ok(old) = r1.join(rel).symlink_metadata() {
            if old.ino() == e.metadata().unwrap().ino() {
                shared += 1;
                // A shared inode must have identical content in both releases (never patched in place).
                assert_eq!(hash_file(&r1.join(rel)).unwrap(), hash_file(e.path()).unwrap());
            }
        }
    }
    assert!(shared > 50, "only {shared} files hard-linked");
    assert_identical(&r1, &f.v1);
}

fn expect_rejected(f: &Fixture, file: &Path, key: Option<&ContentKey>, needle: &str) {
    let before = snapshot(&f.root.join("site"));
    let err = publish(&f.site, file, key).expect_err("accepted a bad assignment");
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains(&needle.to_lowercase()), "error {msg:?} does not mention {needle:?}");
    assert_unchanged(&before, &snapshot(&f.root.join("site")), &msg);
    assert_identical(&f.root.join("site/live"), &f.v1);
}

#[test]
fn flipped_bytes_and_truncations_are_rejected_and_change_nothing() {
    let (f, _) = fixture(7, &CorpusSpec::small());
    let good = fs::read(&f.a2).unwrap();
    let bad = f.root.join("bad.cma");
    let header_len = cmover::protocol::assignment::HEADER_LEN;
    let mut positions: Vec<usize> = (0..header_len).step_by(5).collect();
    positions.extend((header_len..good.len()).step_by((good.len() / 150).max(1)));
    positions.extend(good.len() - 40..good.len());
    for at in positions {
        let mut b = good.clone();
        b[at] ^= 0x01;
        fs::write(&bad, &b).unwrap();
        expect_rejected(&f, &bad, None, "rejected");
    }
    for len in [0, 10, header_len, good.len() / 2, good.len() - 1] {
        fs::write(&bad, &good[..len]).unwrap();
        expect_rejected(&f, &bad, None, "rejected");
    }
}

#[test]
fn a_wrong_or_missing_key_is_rejected_and_changes_nothing() {
    let (f, _) = fixture(8, &CorpusSpec::small());
    let key = ContentKey::from_secret(b"the right key, thirty-two bytes!").unwrap();
    let wrong = ContentKey::from_secret(b"the wrong key, thirty-two bytes!").unwrap();
    let enc = f.root.join("enc.cma");
    pack(&f.v1, &f.v2, &enc, &opts(2, 1, Some(&key))).unwrap();
    expect_rejected(&f, &enc, Some(&wrong), "wrong key");
    expect_rejected(&f, &enc, None, "encrypted");
    publish(&f.site, &enc, Some(&key)).unwrap();
    assert_identical(&f.root.join("site/live"), &f.v2);
}

/// Writes a correctly hashed assignment whose body is `body` verbatim.
fn raw_assignment(path: &Path, serial: u64, base: u64, count: u32, body: &[u8]) {
    let mut h = Header::control(
        Kind::Content,
        cmover::offline::default_site(),
        AssignmentSerial(serial),
        JobId(0),
        0,
    );
    h.base_serial = AssignmentSerial(base);
    h.command_count = count;
    h.body_len = body.len() as u64;
    let head = h.encode();
    let mut file = head.to_vec();
    file.extend_from_slice(body);
    file.extend_from_slice(&encode_trailer(&head, body));
    fs::write(path, file).unwrap();
}

#[test]
fn escaping_paths_are_rejected_and_change_nothing() {
    let (f, _) = fixture(9, &CorpusSpec::small());
    let bad = f.root.join("bad.cma");
    for path in ["../x", "/etc/x", "a/../../x", "../../../../../../tmp/x"] {
        for tag in [1u8 /* mkdir */, 4 /* remove */] {
            let mut body = Vec::new();
            body.put_u8(tag);
            body.put_u16_le(path.len() as u16);
            body.put_slice(path.as_bytes());
            if tag == 1 {
                body.put_u32_le(0o755);
            }
            raw_assignment(&bad, 2, 1, 1, &body);
            let needle = if path.starts_with('/') { "absolute" } else { "escapes" };
            expect_rejected(&f, &bad, None, needle);
        }
    }
    // A symlink pointing out of the tree.
    for target in ["../x", "/etc", "b/../../x"] {
        let mut body = Vec::new();
        Command::Symlink { path: SitePath::new("l").unwrap(), target: target.into() }.encode(&mut body);
        raw_assignment(&bad, 2, 1, 1, &body);
        expect_rejected(&f, &bad, None, "command 0");
    }
}

/// Builds assignment 2 (base 1) from commands; `content` is the one data section.
fn crafted(
    f: &Fixture,
    commands: impl FnOnce(cmover::protocol::assignment::DataRef) -> Vec<Command>,
) -> PathBuf {
    let params = NewAssignment {
        site: cmover::offline::default_site(),
        serial: AssignmentSerial(2),
        base_serial: AssignmentSerial(1),
        job_id: JobId(0),
        created_ms: 0,
        min_compression_gain: 0.05,
    };
    let mut w = AssignmentWriter::new(Cursor::new(Vec::new()), params, None).unwrap();
    let (data, _) = w.add_section(&mut &b"evil"[..], false).unwrap();
    for c in commands(data) {
        w.push(&c);
    }
    let path = f.root.join("crafted.cma");
    fs::write(&path, w.finish().unwrap().1.into_inner()).unwrap();
    path
}

#[test]
fn writing_through_a_symlink_is_rejected_and_changes_nothing() {
    let (f, _) = fixture(10, &CorpusSpec::small());
    let meta = FileMeta { mode: 0o644, ..FileMeta::default() };
    let put = |path: &str, data| Command::PutFile {
        path: SitePath::new(path).unwrap(),
        meta,
        size: 4,
        sha256: Digest::of(b"evil"),
        data,
    };
    // Through a symlink the assignment itself creates: refused by the decoder.
    let file = crafted(&f, |d| {
        vec![
            Command::Symlink { path: SitePath::new("out").unwrap(), target: ".".into() },
            put("out/evil.html", d),
        ]
    });
    expect_rejected(&f, &file, None, "through the symlink out");

    // Through a symlink already in the live release: refused by the applier.
    let live = f.root.join("site/live");
    let link = walkdir::WalkDir::new(&live)
        .min_depth(1)
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_symlink() && e.path().is_dir())
        .expect("the corpus has a symlink to a directory");
    let rel = link.path().strip_prefix(&live).unwrap().to_str().unwrap().to_owned();
    let file = crafted(&f, |d| vec![put(&format!("{rel}/evil.html"), d)]);
    expect_rejected(&f, &file, None, "is a symlink");
    assert!(!link.path().join("evil.html").exists());
}

const DEEP: &str = "a/b/c/d/e/f/g/h/i/j";
const UP: &str = "../../../../../../../../../..";

/// A small site live at release 1 from the tree `v1` that `make` fills.
fn base_site(make: impl FnOnce(&Path)) -> (tempfile::TempDir, SiteRoot) {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1");
    fs::create_dir_all(v1.join(DEEP)).unwrap();
    fs::write(v1.join("index.html"), "hi\n").unwrap();
    make(&v1);
    let site = site(&dir.path().join("site"));
    let a1 = dir.path().join("1.cma");
    pack(&dir.path().join("nothing"), &v1, &a1, &opts(1, 0, None)).unwrap();
    publish(&site, &a1, None).unwrap();
    (dir, site)
}

/// Assignment 2 (base 1) with `commands` and no data.
fn delta_of(dir: &Path, commands: &[Command]) -> PathBuf {
    let params = NewAssignment {
        site: cmover::offline::default_site(),
        serial: AssignmentSerial(2),
        base_serial: AssignmentSerial(1),
        job_id: JobId(0),
        created_ms: 0,
        min_compression_gain: 0.05,
    };
    let mut w = AssignmentWriter::new(Cursor::new(Vec::new()), params, None).unwrap();
    for c in commands {
        w.push(c);
    }
    let path = dir.join("2.cma");
    fs::write(&path, w.finish().unwrap().1.into_inner()).unwrap();
    path
}

/// Publishing `file` fails, and the site root is exactly as it was.
fn refused_whole(site: &SiteRoot, file: &Path) -> String {
    let before = snapshot(site.root());
    let err = publish(site, file, None).expect_err("accepted a release with a symlink out of the site");
    let msg = err.to_string();
    assert!(msg.contains("nothing was written"), "{msg}");
    assert_unchanged(&before, &snapshot(site.root()), &msg);
    assert!(!site.root().join("incoming/2").exists() && !site.root().join("incoming/2.building").exists());
    assert_eq!(site.live().unwrap(), Some(AssignmentSerial(1)));
    msg
}

/// Issue 15 item 1 for deltas: the check holds on the release a delta
/// builds (base plus delta), not on the delta's own symlinks alone. Here the
/// climbing link is in the base release and the delta adds the link that
/// climbs out through it.
#[test]
fn a_delta_whose_new_symlink_chains_out_through_a_base_symlink_is_refused_whole() {
    let (dir, site) = base_site(|v1| std::os::unix::fs::symlink(UP, v1.join(DEEP).join("root")).unwrap());
    let passwd = Command::Symlink {
        path: SitePath::new("passwd").unwrap(),
        target: format!("{DEEP}/root/{UP}/etc/passwd"),
    };
    let file = delta_of(dir.path(), &[passwd]);
    let msg = refused_whole(&site, &file);
    assert!(msg.contains("symlink passwd ->") && msg.contains(&format!("{DEEP}/root ->")), "{msg}");
}

/// The other way round: the base release's `passwd` stays inside while
/// `…/j/root` is a directory; the delta replaces that directory with a
/// symlink that makes the unchanged `passwd` climb out.
#[test]
fn a_delta_that_makes_a_base_symlink_chain_out_is_refused_whole() {
    let (dir, site) = base_site(|v1| {
        fs::create_dir(v1.join(DEEP).join("root")).unwrap();
        std::os::unix::fs::symlink(format!("{DEEP}/root/{UP}/etc/passwd"), v1.join("passwd")).unwrap();
    });
    let root = SitePath::new(&format!("{DEEP}/root")).unwrap();
    let file = delta_of(
        dir.path(),
        &[Command::Remove { path: root.clone() }, Command::Symlink { path: root, target: UP.into() }],
    );
    let msg = refused_whole(&site, &file);
    assert!(msg.contains("symlink passwd ->"), "{msg}");
    // The same delta is fine once it also removes `passwd`.
    let root = SitePath::new(&format!("{DEEP}/root")).unwrap();
    let file = delta_of(
        dir.path(),
        &[
            Command::Remove { path: SitePath::new("passwd").unwrap() },
            Command::Remove { path: root.clone() },
            Command::Symlink { path: root, target: UP.into() },
        ],
    );
    publish(&site, &file, None).unwrap();
    assert_eq!(site.live().unwrap(), Some(AssignmentSerial(2)));
}

/// Issue 15 item 5: declared sizes that add up past `u64::MAX` must not wrap
/// round and pass the free-space check (nor panic). Two files whose sizes
/// wrap to a few bytes are refused by the decoder; one file just under the
/// limit, which only overflows once the per-command overhead is added, is
/// refused by the free-space check. Neither changes anything.
#[test]
fn declared_sizes_that_add_up_past_u64_max_are_refused_and_change_nothing() {
    let (dir, site) = base_site(|_| {});
    let strict = SiteRoot::new(site.root(), SiteOptions { min_free_disk: 1 << 20, ..SiteOptions::default() });
    for sizes in [vec![u64::MAX - 100, 200], vec![u64::MAX - 100]] {
        let params = NewAssignment {
            site: cmover::offline::default_site(),
            serial: AssignmentSerial(2),
            base_serial: AssignmentSerial(1),
            job_id: JobId(0),
            created_ms: 0,
            min_compression_gain: 0.05,
        };
        let mut w = AssignmentWriter::new(Cursor::new(Vec::new()), params, None).unwrap();
        let (data, _) = w.add_section(&mut &b"evil"[..], false).unwrap();
        for (i, size) in sizes.iter().enumerate() {
            w.push(&Command::PutFile {
                path: SitePath::new(&format!("big{i}")).unwrap(),
                meta: FileMeta { mode: 0o644, ..FileMeta::default() },
                size: *size,
                sha256: Digest::of(b"evil"),
                data: cmover::protocol::assignment::DataRef { raw_len: *size, ..data },
            });
        }
        let file = dir.path().join("2.cma");
        fs::write(&file, w.finish().unwrap().1.into_inner()).unwrap();
        let before = snapshot(site.root());
        let err = publish(&strict, &file, None).expect_err("accepted sizes past u64::MAX");
        let msg = err.to_string();
        assert!(msg.contains(&u64::MAX.to_string()), "{sizes:?}: {msg}");
        assert_unchanged(&before, &snapshot(site.root()), &msg);
        assert_eq!(site.live().unwrap(), Some(AssignmentSerial(1)));
    }
}

#[test]
fn failures_midway_leave_the_old_release_live_and_complete() {
    let (f, _) = fixture(11, &CorpusSpec::small());
    let commands = AssignmentFile::open(&f.a2, None).unwrap().commands.len();
    assert!(commands > 10);
    for fail_at in [0, commands / 2, commands - 1] {
        let before = snapshot(&f.root.join("site"));
        let failing = SiteRoot::new(
            f.site.root(),
            SiteOptions { fail_before_command: Some(fail_at), min_free_disk: 0, ..SiteOptions::default() },
        );
        let err = publish(&failing, &f.a2, None).unwrap_err();
        assert!(matches!(err, ReleaseError::Injected(n) if n == fail_at), "{err}");
        assert_unchanged(&before, &snapshot(&f.root.join("site")), "injected failure");
        assert_identical(&f.root.join("site/live"), &f.v1);
    }

    // The free-space check fails before anything is written.
    let before = snapshot(&f.root.join("site"));
    let full =
        SiteRoot::new(f.site.root(), SiteOptions { min_free_disk: u64::MAX / 4, ..SiteOptions::default() });
    let err = publish(&full, &f.a2, None).unwrap_err();
    assert!(err.to_string().contains("not enough disk space"), "{err}");
    assert_unchanged(&before, &snapshot(&f.root.join("site")), "failed apply");

    // A base file that is not what the assignment was built against: found
    // midway, when that file is patched.
    let a = AssignmentFile::open(&f.a2, None).unwrap();
    let patched = a
        .commands
        .iter()
        .find_map(|c| if let Command::PatchFile { base, .. } = c { Some(base.clone()) } else { None })
        .unwrap();
    let live_file = patched.under(&f.root.join("site/live"));
    let perms = fs::metadata(&live_file).unwrap().permissions();
    fs::set_permissions(&live_file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&live_file, b"edited on the server by hand").unwrap();
    fs::set_permissions(&live_file, perms).unwrap();
    let before = snapshot(&f.root.join("site"));
    let err = publish(&f.site, &f.a2, None).unwrap_err();
    assert!(err.to_string().contains("base file"), "{err}");
    assert_unchanged(&before, &snapshot(&f.root.join("site")), "failed apply");

    // And the good path still works afterwards, on an intact base.
    fs::write(&live_file, fs::read(patched.under(&f.v1)).unwrap()).unwrap();
    publish(&f.site, &f.a2, None).unwrap();
    assert_identical(&f.root.join("site/live"), &f.v2);
}

#[test]
fn a_delta_for_another_base_is_refused() {
    let (f, _) = fixture(12, &CorpusSpec::small());
    let a3 = f.root.join("3.cma");
    pack(&f.v1, &f.v2, &a3, &opts(3, 2, None)).unwrap();
    expect_rejected(&f, &a3, None, "delta against release 2");
}

/// Publishes releases 1..=n of a one-page site under `dir/v<serial>` to
/// `site`, each a delta on the one before; checks each goes live whole.
fn publish_versions(dir: &Path, site: &SiteRoot, n: u64) {
    let mut prev = dir.join("none");
    for serial in 1..=n {
        let tree = dir.join(format!("v{serial}"));
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("index.html"), format!("version {serial}")).unwrap();
        let a = dir.join(format!("{serial}.cma"));
        pack(&prev, &tree, &a, &opts(serial, serial - 1, None)).unwrap();
        publish(site, &a, None).unwrap();
        assert_identical(&dir.join("site/live"), &tree);
        prev = tree;
    }
}

#[test]
fn old_releases_are_pruned_to_keep_releases_and_rollback_walks_back() {
    let t = tempfile::tempdir().unwrap();
    let site = site(&t.path().join("site"));
    publish_versions(t.path(), &site, 5);
    let kept: Vec<u64> = site.releases().unwrap().into_iter().map(|s| s.0).collect();
    assert_eq!(kept, [3, 4, 5], "keep_releases is 3");
    assert!(site.incoming().unwrap().is_empty());
    assert_eq!(site.rollback().unwrap(), (AssignmentSerial(5), AssignmentSerial(4)));
    assert_eq!(site.rollback().unwrap(), (AssignmentSerial(4), AssignmentSerial(3)));
    assert_identical(&t.path().join("site/live"), &t.path().join("v3"));
    assert!(matches!(site.rollback(), Err(ReleaseError::NoPrevious { .. })));
}

#[test]
fn rollback_to_names_its_release_and_is_idempotent() {
    let t = tempfile::tempdir().unwrap();
    let site = site(&t.path().join("site"));
    publish_versions(t.path(), &site, 4);
    // Releases 2, 3, 4 are kept; 1 was pruned.
    assert_eq!(site.rollback_to(AssignmentSerial(2)).unwrap(), (AssignmentSerial(4), AssignmentSerial(2)));
    assert_identical(&t.path().join("site/live"), &t.path().join("v2"));
    assert_eq!(site.rollback_to(AssignmentSerial(2)).unwrap(), (AssignmentSerial(2), AssignmentSerial(2)));
    let err = site.rollback_to(AssignmentSerial(1)).unwrap_err();
    assert!(matches!(err, ReleaseError::NotKept { .. }), "{err}");
    assert!(err.to_string().contains("kept: 2, 3, 4"), "{err}");
    assert_identical(&t.path().join("site/live"), &t.path().join("v2"));
}

#[test]
fn a_crash_mid_build_leaves_nothing_a_commit_can_make_live() {
    let t = tempfile::tempdir().unwrap();
    let site = site(&t.path().join("site"));
    publish_versions(t.path(), &site, 1);
    // A build that a crash interrupted: its directory is not `incoming/2`.
    let half = t.path().join("site/incoming/2.building");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join("index.html"), "half").unwrap();
    assert!(site.incoming().unwrap().is_empty(), "an unfinished build is not awaiting commit");
    let err = site.commit(AssignmentSerial(2)).unwrap_err();
    assert!(matches!(err, ReleaseError::NotApplied { .. }), "{err}");
    assert_identical(&t.path().join("site/live"), &t.path().join("v1"));
    // The next publish builds afresh and the leftover goes with its commit.
    let tree = t.path().join("v2");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("index.html"), "version 2").unwrap();
    let a = t.path().join("2.cma");
    pack(&t.path().join("v1"), &tree, &a, &opts(2, 1, None)).unwrap();
    let file = AssignmentFile::open(&a, None).unwrap();
    site.apply(&file).unwrap();
    assert_eq!(site.incoming().unwrap(), [AssignmentSerial(2)]);
    assert!(!half.exists(), "apply replaced the unfinished build");
    fs::create_dir_all(t.path().join("site/incoming/7.building")).unwrap();
    site.commit(AssignmentSerial(2)).unwrap();
    assert_identical(&t.path().join("site/live"), &tree);
    assert_eq!(fs::read_dir(t.path().join("site/incoming")).unwrap().count(), 0, "leftovers pruned");
}

#[test]
fn a_commit_interrupted_before_the_switch_is_finished_when_sent_again() {
    let t = tempfile::tempdir().unwrap();
    let site = site(&t.path().join("site"));
    publish_versions(t.path(), &site, 2);
    let tree = t.path().join("v3");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("index.html"), "version 3").unwrap();
    let a = t.path().join("3.cma");
    pack(&t.path().join("v2"), &tree, &a, &opts(3, 2, None)).unwrap();
    site.apply(&AssignmentFile::open(&a, None).unwrap()).unwrap();
    // The crash: moved into place, `live` not yet switched.
    fs::rename(t.path().join("site/incoming/3"), t.path().join("site/releases/3")).unwrap();
    assert_identical(&t.path().join("site/live"), &t.path().join("v2"));
    site.commit(AssignmentSerial(3)).unwrap();
    assert_identical(&t.path().join("site/live"), &tree);
    assert!(site.commit(AssignmentSerial(3)).unwrap().is_empty(), "again: a no-op");
    // A commit of an older release still kept never switches back.
    let err = site.commit(AssignmentSerial(2)).unwrap_err();
    assert!(matches!(err, ReleaseError::NotApplied { .. }), "{err}");
    assert_identical(&t.path().join("site/live"), &tree);
}
