//! The Lua scripts that handle a request, one per phase, read from disk.

use std::path::{Path, PathBuf};

use super::{Handlers, Source};

/// Which script handles each phase (`None`: the phase does nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseScripts {
    pub rewrite: Option<PathBuf>,
    pub access: Option<PathBuf>,
    pub content: Option<PathBuf>,
    pub header_filter: Option<PathBuf>,
    pub body_filter: Option<PathBuf>,
    pub log: Option<PathBuf>,
}

/// A script that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ScriptError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl PhaseScripts {
    /// A content handler alone.
    pub fn content(path: PathBuf) -> Self {
        PhaseScripts {
            content: Some(path),
            ..PhaseScripts::default()
        }
    }

    /// Read every script. Each is reported in messages under its path
    /// relative to `shown_from` (so logs and errors never show where on the
    /// host the scripts live).
    pub fn load(&self, shown_from: &Path) -> Result<Handlers, ScriptError> {
        let read = |path: &Option<PathBuf>| -> Result<Option<Source>, ScriptError> {
            let Some(path) = path else { return Ok(None) };
            let code = std::fs::read(path).map_err(|source| ScriptError {
                path: path.clone(),
                source,
            })?;
            let shown = path.strip_prefix(shown_from).unwrap_or(path);
            Ok(Some(Source {
                name: format!("@{}", shown.display()),
                code,
            }))
        };
        Ok(Handlers {
            rewrite: read(&self.rewrite)?,
            access: read(&self.access)?,
            content: read(&self.content)?,
            header_filter: read(&self.header_filter)?,
            body_filter: read(&self.body_filter)?,
            log: read(&self.log)?,
        })
    }
}
