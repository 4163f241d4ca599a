//! The header block: how a list of headers crosses from guest to host
//! (`response.send-head`, `tasks.subrequest`), as ONE flat `list<u8>`.
//!
//! A nested WIT list (`list<tuple<list<u8>, list<u8>>>`) is lifted whole by
//! wasmtime before the host sees it, each inner list checked only against the
//! guest's memory: a modified guest can point every entry at the same bytes
//! and have the host copy N × M bytes out of M (terabytes out of a few MiB)
//! before any bound runs. A flat list is copied once and is at most the
//! guest's own memory; this decoder then checks every count and length
//! before anything is built from it, and borrows from the block (it copies
//! no header byte).
//!
//! The encoding, for each header in order:
//!
//! ```text
//! name length: u32, little-endian | name bytes | value length: u32, little-endian | value bytes
//! ```
//!
//! and nothing else: no count, no padding, an empty block for no headers.

use thiserror::Error;

/// Why a header block was refused. The bounds are checked in this order
/// for the whole block: more than `max_count` headers first, then more
/// than `max_bytes` bytes of names and values; a block that does not parse
/// is refused where it stops parsing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderBlockError {
    #[error("more than {max} headers")]
    TooMany { max: usize },
    #[error("more than {max} bytes of header names and values")]
    TooLarge { max: usize },
    #[error("malformed header block: header {index}'s {part} at byte {at}: {problem}")]
    Malformed {
        /// The header (from 0) being read.
        index: usize,
        /// `name` or `value`.
        part: &'static str,
        /// Where its length prefix starts in the block.
        at: usize,
        problem: &'static str,
    },
}

/// One header of a block: its name and value, borrowed from the block.
pub type HeaderRef<'a> = (&'a [u8], &'a [u8]);

/// The headers of `block`, as slices of it: at most `max_count` of them,
/// with at most `max_bytes` of names and values together. Holds at most
/// `max_count` pairs of slices, whatever the block declares.
pub fn decode(
    block: &[u8],
    max_count: usize,
    max_bytes: usize,
) -> Result<Vec<HeaderRef<'_>>, HeaderBlockError> {
    let mut headers = Vec::new();
    let mut rest = block;
    let mut bytes: usize = 0;
    while !rest.is_empty() {
        let index = headers.len();
        if index == max_count {
            return Err(HeaderBlockError::TooMany { max: max_count });
        }
        let name = take(block, &mut rest, index, "name")?;
        let value = take(block, &mut rest, index, "value")?;
        // Both are slices of `block`: the sum is at most its length.
        bytes += name.len() + value.len();
        headers.push((name, value));
    }
    if bytes > max_bytes {
        return Err(HeaderBlockError::TooLarge { max: max_bytes });
    }
    Ok(headers)
}

/// One length-prefixed part off the front of `rest` (a tail of `block`).
fn take<'a>(
    block: &[u8],
    rest: &mut &'a [u8],
    index: usize,
    part: &'static str,
) -> Result<&'a [u8], HeaderBlockError> {
    let malformed = |problem| HeaderBlockError::Malformed {
        index,
        part,
        at: block.len() - rest.len(),
        problem,
    };
    let Some((prefix, tail)) = rest.split_first_chunk::<4>() else {
        return Err(malformed("its length is cut short"));
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > tail.len() {
        return Err(malformed("its length runs past the end of the block"));
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Ok(part)
}

/// `headers` as a header block (what the guest's C glue builds).
pub fn encode<'a>(headers: impl IntoIterator<Item = HeaderRef<'a>>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        for part in [name, value] {
            let len = u32::try_from(part.len()).expect("a header part under 4 GiB");
            block.extend_from_slice(&len.to_le_bytes());
            block.extend_from_slice(part);
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_order() {
        let headers: [(&[u8], &[u8]); 3] = [(b"X-A", b"1"), (b"X-Empty", b""), (b"X-A", b"two")];
        let block = encode(headers);
        assert_eq!(&block[..8], &[3, 0, 0, 0, b'X', b'-', b'A', 1]);
        assert_eq!(decode(&block, 3, 17).unwrap(), headers);
        assert_eq!(
            decode(&block, 3, 16),
            Err(HeaderBlockError::TooLarge { max: 16 })
        );
        assert_eq!(
            decode(&block, 2, 17),
            Err(HeaderBlockError::TooMany { max: 2 })
        );
        assert_eq!(decode(&[], 0, 0).unwrap(), []);
    }

    /// Aliasing, in the flat encoding: a length that claims more bytes than
    /// follow is refused, whatever it claims, before anything is built.
    #[test]
    fn lengths_past_the_end_are_refused() {
        let mut block = encode([(&b"X-A"[..], &b"1"[..])]);
        block.extend_from_slice(&u32::MAX.to_le_bytes());
        block.extend_from_slice(b"short");
        assert_eq!(
            decode(&block, 256, 65536),
            Err(HeaderBlockError::Malformed {
                index: 1,
                part: "name",
                at: 12,
                problem: "its length runs past the end of the block",
            })
        );
        let mut block = encode([(&b"X-A"[..], &b"1"[..])]);
        block.extend_from_slice(&[1, 0, 0, 0, b'X', 2, 0, 0, 0, b'v']);
        assert!(matches!(
            decode(&block, 256, 65536),
            Err(HeaderBlockError::Malformed {
                index: 1,
                part: "value",
                at: 17,
                ..
            })
        ));
        for cut in [1, 3, 5, 7] {
            let block = &encode([(&b"X"[..], &b"v"[..])])[..cut];
            assert!(
                matches!(
                    decode(block, 256, 65536),
                    Err(HeaderBlockError::Malformed { index: 0, .. })
                ),
                "{cut}"
            );
        }
    }

    /// A million empty headers is a few MiB of block: refused at the
    /// first header past the bound, holding no more than the bound.
    #[test]
    fn counts_over_the_bound_are_refused() {
        let block = vec![0u8; 8 * 1_000_000];
        assert_eq!(
            decode(&block, 256, 65536),
            Err(HeaderBlockError::TooMany { max: 256 })
        );
        let at_bound = vec![0u8; 8 * 256];
        assert_eq!(decode(&at_bound, 256, 65536).unwrap().len(), 256);
        // Too many wins over too large, as the host's messages always had it.
        let big = vec![b'v'; 65536];
        let many: Vec<(&[u8], &[u8])> = vec![(b"X", &big); 257];
        assert_eq!(
            decode(&encode(many), 256, 65536),
            Err(HeaderBlockError::TooMany { max: 256 })
        );
    }

    #[test]
    fn bytes_over_the_bound_are_refused() {
        let value = vec![b'v'; 65535];
        let block = encode([(&b"X"[..], &value[..])]);
        assert_eq!(decode(&block, 256, 65536).unwrap().len(), 1);
        let block = encode([(&b"X"[..], &value[..]), (&b"Y"[..], &b""[..])]);
        assert_eq!(
            decode(&block, 256, 65536),
            Err(HeaderBlockError::TooLarge { max: 65536 })
        );
    }
}
