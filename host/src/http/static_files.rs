//! Static files under a document root: what people expect a docroot to
//! serve besides its scripts (stylesheets, images, ...).

use std::path::Path;

use bytes::Bytes;

/// Files larger than this are refused (403) rather than read into memory.
pub const MAX_STATIC_FILE_BYTES: u64 = 64 * 1024 * 1024;

pub enum StaticFile {
    Found { content_type: String, body: Bytes },
    TooLarge,
    Unreadable,
}

/// [`read`] off the async workers: file I/O blocks. Client requests and
/// subrequests alike read their static files here.
pub async fn read_async(path: std::path::PathBuf) -> StaticFile {
    tokio::task::spawn_blocking(move || read(&path))
        .await
        .unwrap_or(StaticFile::Unreadable)
}

/// Read `path` (already confined to the root by the router).
pub fn read(path: &Path) -> StaticFile {
    let Ok(meta) = std::fs::metadata(path) else {
        return StaticFile::Unreadable;
    };
    if meta.len() > MAX_STATIC_FILE_BYTES {
        return StaticFile::TooLarge;
    }
    match std::fs::read(path) {
        Ok(body) => StaticFile::Found {
            content_type: mime_guess::from_path(path)
                .first_or_octet_stream()
                .essence_str()
                .to_string(),
            body: Bytes::from(body),
        },
        Err(_) => StaticFile::Unreadable,
    }
}
