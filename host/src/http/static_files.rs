//! Static files under a document root: what people expect a docroot to
//! serve besides its scripts (stylesheets, images, ...).

use bytes::Bytes;

use crate::site::routing::OpenFile;

/// Files larger than this are refused (403) rather than read into memory.
pub const MAX_STATIC_FILE_BYTES: u64 = 64 * 1024 * 1024;

pub enum StaticFile {
    Found { content_type: String, body: Bytes },
    TooLarge,
    Unreadable,
}

/// [`read`] off the async workers: file I/O blocks. Client requests and
/// subrequests alike read their static files here.
pub async fn read_async(file: OpenFile) -> StaticFile {
    tokio::task::spawn_blocking(move || read(&file))
        .await
        .unwrap_or(StaticFile::Unreadable)
}

/// Read `file`, the one the router opened beneath the root (never opened
/// again by its path).
pub fn read(file: &OpenFile) -> StaticFile {
    if file.metadata().len() > MAX_STATIC_FILE_BYTES {
        return StaticFile::TooLarge;
    }
    match file.read_at_most(MAX_STATIC_FILE_BYTES) {
        // It grew past the bound since it was opened.
        Ok(body) if body.len() as u64 > MAX_STATIC_FILE_BYTES => StaticFile::TooLarge,
        Ok(body) => StaticFile::Found {
            content_type: mime_guess::from_path(file.path())
                .first_or_octet_stream()
                .essence_str()
                .to_string(),
            body: Bytes::from(body),
        },
        Err(_) => StaticFile::Unreadable,
    }
}
