//! The offline commands: `diff`, `apply`, `commit`, `abort`, `rollback` and
//! `inspect`, usable without any CCM or agent running. `main.rs` parses the
//! command line and calls these.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::Config;
use crate::protocol::assignment::{Command, Kind};
use crate::protocol::crypto::{parse_key_file, ContentKey, CryptoError};
use crate::protocol::ids::{AssignmentSerial, JobId};
use crate::protocol::paths::SiteName;
use crate::storage::assignment_file::{AssignmentError, AssignmentFile};
use crate::storage::pack::{pack, PackError, PackOptions, PackSummary};
use crate::storage::releases::{Outcome, ReleaseError, SiteOptions, SiteRoot};
use crate::storage::tree::{scan, ScanError, TreeFilter};

/// Why an offline command failed.
#[derive(Debug, Error)]
pub enum OfflineError {
    /// A key file could not be read or is not a key.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Building the assignment failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Reading a tree failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The assignment is invalid.
    #[error(transparent)]
    Assignment(#[from] AssignmentError),
    /// Applying, committing or rolling back failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// Reads a key file (hex, as written by `cmover keygen`).
pub fn load_key(path: &Path) -> Result<ContentKey, OfflineError> {
    let key_err = |reason: String| OfflineError::Key { path: path.to_owned(), reason };
    let bytes = crate::config::read_secret_file("key file", path).map_err(|e| match e {
        crate::config::ConfigError::Invalid { problem, fix, .. } => key_err(format!("{problem}; fix: {fix}")),
        other => key_err(other.to_string()),
    })?;
    let secret = parse_key_file(&bytes).map_err(|e: CryptoError| key_err(e.to_string()))?;
    ContentKey::from_secret(&secret).map_err(|e| key_err(e.to_string()))
}

/// Options of `cmover diff`.
#[derive(Debug, Clone, Default)]
pub struct DiffArgs {
    /// The site name recorded in the header (default `default`).
    pub site: Option<SiteName>,
    /// Serial of the release to build; default 1 for an empty OLD, else 2.
    pub serial: Option<u64>,
    /// Serial of the release OLD is; default serial − 1.
    pub base_serial: Option<u64>,
    /// The job id recorded in the header.
    pub job_id: u64,
    /// Encrypt with this key.
    pub key: Option<ContentKey>,
}

/// `cmover diff OLD NEW -o OUT`: builds the assignment turning OLD into NEW.
pub fn diff(
    old: &Path,
    new: &Path,
    out: &Path,
    args: DiffArgs,
    config: &Config,
) -> Result<PackSummary, OfflineError> {
    let filter = TreeFilter::new(&config.content.include, &config.content.exclude)?;
    let old_empty = scan(old, &filter)?.is_empty();
    let serial = args.serial.unwrap_or(if old_empty { 1 } else { 2 });
    let base = args.base_serial.unwrap_or(serial.saturating_sub(1));
    let encrypt = match args.key {
        Some(k) => {
            let mut salt = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).map_err(|_| {
                OfflineError::Key { path: PathBuf::new(), reason: "no system randomness".into() }
            })?;
            Some((k, salt))
        }
        None => None,
    };
    let opts = PackOptions {
        site: args.site.unwrap_or_else(default_site),
        serial: AssignmentSerial(serial),
        base_serial: AssignmentSerial(base),
        job_id: JobId(args.job_id),
        created_ms: crate::clock::unix_ms(),
        filter,
        compression: Default::default(),
        incompressible: config
            .content
            .incompressible
            .iter()
            .map(|e| e.to_ascii_lowercase())
            .collect::<HashSet<_>>(),
        min_compression_gain: config.content.min_compression_gain,
        encrypt,
    };
    Ok(pack(old, new, out, &opts)?)
}

/// The site name of assignments built without one.
pub fn default_site() -> SiteName {
    SiteName::new("default").unwrap_or_else(|_| unreachable!("a valid name"))
}

/// Site options from the configuration.
pub fn site_options(config: &Config) -> SiteOptions {
    SiteOptions {
        keep_releases: config.releases.keep_releases,
        min_free_disk: config.releases.min_free_disk.as_u64(),
        fail_before_command: None,
    }
}

/// `cmover apply FILE --site-root DIR`: carries out the assignment; a content
/// assignment is also committed unless `commit` is false.
pub fn apply(
    file: &Path,
    site_root: &Path,
    commit: bool,
    key: Option<&ContentKey>,
    opts: SiteOptions,
) -> Result<Vec<Outcome>, OfflineError> {
    let a = AssignmentFile::open(file, key)?;
    let site = SiteRoot::new(site_root, opts);
    let mut outcomes = vec![site.execute(&a)?];
    if commit && a.header.kind == Kind::Content {
        let pruned = site.commit(a.header.serial)?;
        outcomes.push(Outcome::Committed {
            serial: a.header.serial.0,
            pruned: pruned.into_iter().map(|s| s.0).collect(),
        });
    }
    Ok(outcomes)
}

/// One line per outcome, for people.
pub fn describe(site_root: &Path, outcome: &Outcome) -> String {
    let root = site_root.display();
    match outcome {
        Outcome::Applied(r) => format!(
            "built release {} in {root}/incoming/{}: {} commands, {} files written ({} bytes), {} entries carried over",
            r.serial, r.serial, r.commands, r.files_written, r.bytes_written, r.carried_over
        ),
        Outcome::Committed { serial, pruned } if pruned.is_empty() => format!("release {serial} is live in {root}/live"),
        Outcome::Committed { serial, pruned } => {
            format!("release {serial} is live in {root}/live (deleted old releases {})", crate::protocol::ids::join(pruned))
        }
        Outcome::Aborted { serial } => format!("discarded release {serial} from {root}/incoming"),
        Outcome::RolledBack { from, to } => format!("rolled back {root}/live from release {from} to release {to}"),
    }
}

/// `cmover inspect FILE`: the header, then one line per command.
pub fn inspect_text(a: &AssignmentFile) -> String {
    let h = &a.header;
    let mut s = String::new();
    let _ = writeln!(s, "assignment   {}", a.path().display());
    let _ = writeln!(s, "kind         {:?}", h.kind);
    let _ = writeln!(s, "site         {}", h.site);
    let _ = writeln!(s, "serial       {}", h.serial);
    let base = if h.is_delta() { format!("{}", h.base_serial) } else { "none (full release)".into() };
    let _ = writeln!(s, "base         {base}");
    let _ = writeln!(s, "job          {}", h.job_id);
    let _ = writeln!(s, "created      {} ms since the Unix epoch", h.created_ms);
    let _ = writeln!(s, "size         {} bytes (data {}, commands {})", a.len(), h.data_len, h.body_len);
    let _ = writeln!(s, "data sha256  {} (verified)", h.data_sha256);
    match &h.encryption {
        Some(e) => {
            let _ = writeln!(s, "encryption   AES-256-GCM, key id {}", hex::encode(e.key_id));
        }
        None => {
            let _ = writeln!(s, "encryption   none");
        }
    }
    let _ = writeln!(s, "commands     {}", h.command_count);
    for (i, c) in a.commands.iter().enumerate() {
        let line = match c {
            Command::MakeDir { path, mode } => format!("mkdir    {path} mode {mode:o}"),
            Command::PutFile { path, meta, size, sha256, data } => format!(
                "put      {path} mode {:o} {size} bytes ({} stored) sha256 {}",
                meta.mode,
                data.len,
                sha256.short()
            ),
            Command::PatchFile { path, base, size, sha256, data, .. } => format!(
                "patch    {path} from {base}: {size} bytes, delta {} raw / {} stored, sha256 {}",
                data.raw_len,
                data.len,
                sha256.short()
            ),
            Command::Remove { path } => format!("remove   {path}"),
            Command::Rename { from, to, .. } => format!("rename   {from} -> {to}"),
            Command::SetMode { path, mode, mtime } => match mtime {
                Some(t) => format!("setmode  {path} mode {mode:o} mtime {}", t.secs),
                None => format!("setmode  {path} mode {mode:o}"),
            },
            Command::Symlink { path, target } => format!("symlink  {path} -> {target}"),
        };
        let _ = writeln!(s, "  {i:>6}  {line}");
    }
    s
}

/// `cmover inspect FILE --json`.
pub fn inspect_json(a: &AssignmentFile) -> serde_json::Value {
    serde_json::json!({
        "path": a.path(),
        "size": a.len(),
        "header": a.header,
        "commands": a.commands,
    })
}

/// What [`inspect_json`] says, borrowed from the assignment.
#[derive(serde::Serialize)]
struct InspectView<'a> {
    path: &'a Path,
    size: u64,
    header: &'a crate::protocol::assignment::Header,
    commands: &'a [Command],
}

/// `cmover inspect FILE --json`, written to `out` as it is serialized (pretty,
/// then a newline): no JSON tree of the commands is built, so a 16 MB
/// assignment of 4 M commands no longer takes gigabytes (4.2 GiB were
/// measured) on top of the decoded commands.
pub fn write_inspect_json(a: &AssignmentFile, out: impl std::io::Write) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    let view = InspectView { path: a.path(), size: a.len(), header: &a.header, commands: &a.commands };
    serde_json::to_writer_pretty(&mut out, &view)?;
    std::io::Write::write_all(&mut out, b"\n")?;
    std::io::Write::flush(&mut out)
}
