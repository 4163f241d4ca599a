//! Guest text on its way to the server's log: every byte a script chooses
//! (`ngx.log`, `print`, `io.write`, `warn`, error messages, tracebacks, init
//! script output) passes through [`escape`] first, so a script cannot forge
//! log lines (CR/LF), terminal escapes or invalid UTF-8, and no line is longer
//! than [`MAX_LOG_LINE_BYTES`] of its text.

/// A log line longer than this (in the guest's bytes) is cut.
pub const MAX_LOG_LINE_BYTES: usize = 4096;

/// `bytes` as one log line: at most [`MAX_LOG_LINE_BYTES`] of them, control
/// characters but tab escaped (`\n`, `\r`, `\u{1b}`), invalid UTF-8 as `\xNN`,
/// and ` [...]` after a cut.
pub fn escape(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_LOG_LINE_BYTES)];
    let mut out = String::with_capacity(cut.len() + 8);
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > cut.len() {
        out.push_str(" [...]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_whatever_the_guest_wrote() {
        assert_eq!(
            escape(b"a\r\n127.0.0.1 - GET /x 200\n\x1b[2J\xff\tb"),
            "a\\r\\n127.0.0.1 - GET /x 200\\n\\u{1b}[2J\\xff\tb"
        );
        let long = vec![b'x'; MAX_LOG_LINE_BYTES + 1];
        let line = escape(&long);
        assert!(line.ends_with(" [...]"));
        assert_eq!(line.len(), MAX_LOG_LINE_BYTES + " [...]".len());
    }
}
