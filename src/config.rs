//! Typed configuration, read from TOML, with defaults for every option.
//!
//! Every section denies unknown keys, so a misspelt option is an error that
//! names it rather than a silently ignored line. [`Config::validate`] checks
//! what types cannot (ranges, patterns) and every error says which key is
//! wrong, what is wrong with it, and how to fix it. `config.example.toml` at
//! the repository root lists every option with its default; a test checks
//! that it parses to exactly [`Config::default`].

use std::path::Path;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A configuration problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}\nfix: compare with config.example.toml, which lists every option with its default")]
    Parse {
        /// The file.
        path: String,
        /// toml's message (it quotes the line and names the key).
        message: String,
    },
    /// A value is of the right type but not acceptable.
    #[error("config key `{key}`: {problem}\nfix: {fix}")]
    Invalid {
        /// Dotted key, e.g. `releases.keep_releases`.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into(), fix: fix.into() }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// What content is taken from a tree and how it is packed.
    pub content: ContentConfig,
    /// Releases kept on a back-end server.
    pub releases: ReleasesConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`info,cmover::protocol=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Json, level: "info".into() }
    }
}

/// `[content]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// Glob patterns of files to take; empty takes everything.
    pub include: Vec<String>,
    /// Glob patterns of files and directories to leave out.
    pub exclude: Vec<String>,
    /// File extensions (without the dot, any case) never worth compressing.
    pub incompressible: Vec<String>,
    /// Smallest saving, as a fraction of a chunk, for which a compressed chunk is kept.
    pub min_compression_gain: f64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            incompressible: DEFAULT_INCOMPRESSIBLE.iter().map(|s| s.to_string()).collect(),
            min_compression_gain: 0.05,
        }
    }
}

/// Extensions of formats that are already compressed.
pub const DEFAULT_INCOMPRESSIBLE: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "ico", "mp4", "m4v", "webm", "mkv", "mov", "avi",
    "mp3", "m4a", "ogg", "opus", "flac", "zip", "gz", "tgz", "bz2", "xz", "zst", "lz4", "7z", "rar", "br",
    "woff", "woff2", "pdf", "jar",
];

/// `[releases]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReleasesConfig {
    /// Releases kept per site, the live one included (older ones are deleted after a commit).
    pub keep_releases: u32,
    /// Free space that must remain on the site's file system after an apply.
    pub min_free_disk: ByteSize,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig { keep_releases: 3, min_free_disk: ByteSize::mib(64) }
    }
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
                "use error, warn, info, debug or trace, optionally with per-module directives like \"info,cmover=debug\"",
            ));
        }
        for (key, patterns) in
            [("content.include", &self.content.include), ("content.exclude", &self.content.exclude)]
        {
            for p in patterns.iter() {
                if let Err(e) = globset::Glob::new(p) {
                    return Err(invalid(
                        key,
                        format!("{p:?} is not a glob pattern: {}", e.kind()),
                        "use shell-style globs such as \"*.tmp\", \"cache/**\" or \"**/.git\"",
                    ));
                }
            }
        }
        for ext in &self.content.incompressible {
            if ext.is_empty() || ext.contains(['.', '/']) {
                return Err(invalid(
                    "content.incompressible",
                    format!("{ext:?} is not a file extension"),
                    "list bare extensions without the dot, like \"jpg\"",
                ));
            }
        }
        let gain = self.content.min_compression_gain;
        if !(0.0..1.0).contains(&gain) {
            return Err(invalid(
                "content.min_compression_gain",
                format!("{gain} is outside 0.0 ..< 1.0"),
                "give a fraction such as 0.05 (keep compressed chunks that save at least 5 %)",
            ));
        }
        if self.releases.keep_releases < 2 {
            return Err(invalid(
                "releases.keep_releases",
                format!("{} leaves nothing to roll back to", self.releases.keep_releases),
                "keep at least 2 releases (the default is 3)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_documents_exactly_the_defaults() {
        let text = include_str!("../config.example.toml");
        let parsed = Config::from_toml(text, "config.example.toml").unwrap();
        assert_eq!(parsed, Config::default());
        // Every option the code knows appears in the example, uncommented.
        let defaults = toml::to_string(&Config::default()).unwrap();
        let example: toml::Table = toml::from_str(text).unwrap();
        let known: toml::Table = toml::from_str(&defaults).unwrap();
        for (section, table) in &known {
            let table = table.as_table().unwrap();
            let ex = example.get(section).and_then(|t| t.as_table());
            let ex = ex.unwrap_or_else(|| panic!("[{section}] missing from config.example.toml"));
            for key in table.keys() {
                assert!(ex.contains_key(key), "{section}.{key} missing from config.example.toml");
            }
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[releases]\nkep_releases = 3\n", "f.toml").unwrap_err().to_string();
        assert!(err.contains("kep_releases"), "{err}");
        assert!(err.contains("f.toml"), "{err}");
        assert!(err.contains("fix:"), "{err}");
    }

    #[test]
    fn bad_values_name_key_problem_and_fix() {
        let cases = [
            ("[releases]\nkeep_releases = 1\n", "releases.keep_releases"),
            ("[content]\nmin_compression_gain = 1.5\n", "content.min_compression_gain"),
            ("[content]\nexclude = [\"a[\"]\n", "content.exclude"),
            ("[content]\nincompressible = [\".jpg\"]\n", "content.incompressible"),
            ("[log]\nlevel = \"info,cmover=loudest\"\n", "log.level"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, "f.toml").unwrap_err();
            let ConfigError::Invalid { key: k, .. } = &err else { panic!("{err}") };
            assert_eq!(k, key);
            assert!(err.to_string().contains("fix: "), "{err}");
        }
        let err = Config::from_toml("[releases]\nmin_free_disk = \"lots\"\n", "f.toml").unwrap_err();
        assert!(err.to_string().contains("min_free_disk"), "{err}");
    }
}
