//! The chunked-body scanner: finds where a chunked body ends while its bytes pass unchanged.

/// Where a chunked body ends, found as its bytes pass by (RFC 9112 §7.1): sizes, extensions,
/// data, the last chunk and the trailer section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkedScanner {
    /// At the start of a chunk-size line.
    #[default]
    Start,
    /// In a chunk size.
    Size {
        /// Its value so far.
        value: u64,
        /// Its hex digits so far.
        digits: u8,
    },
    /// In a chunk extension, up to its CR.
    Extension {
        /// The chunk's size.
        value: u64,
    },
    /// After the CR that ends a size line.
    SizeLf {
        /// The chunk's size.
        value: u64,
    },
    /// In chunk data: bytes left.
    Data(u64),
    /// After chunk data: its CR.
    DataCr,
    /// After chunk data: its LF.
    DataLf,
    /// At the start of a trailer line (or of the blank line that ends the message).
    TrailerStart,
    /// In a trailer field line, up to its LF.
    Trailer,
    /// After the CR of the blank line that ends the message.
    EndLf,
    /// The message ended.
    Done,
}

/// A chunked body that is not valid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl ChunkedScanner {
    /// Takes the next `bytes` of the body: `Some(n)` when the message ends after the first `n`
    /// of them (the rest belongs to what follows), `None` when it goes on.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Self::Start => match hex(b) {
                    Some(d) => Self::Size {
                        value: d,
                        digits: 1,
                    },
                    None => return Err(BadChunk),
                },
                Self::Size { value, digits } => match (hex(b), b) {
                    (Some(_), _) if digits >= 15 => return Err(BadChunk),
                    (Some(d), _) => Self::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    },
                    (None, b';' | b' ' | b'\t') => Self::Extension { value },
                    (None, b'\r') => Self::SizeLf { value },
                    _ => return Err(BadChunk),
                },
                Self::Extension { value } => match b {
                    b'\r' => Self::SizeLf { value },
                    b'\n' => return Err(BadChunk),
                    _ => Self::Extension { value },
                },
                Self::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => Self::TrailerStart,
                    (b'\n', n) => Self::Data(n),
                    _ => return Err(BadChunk),
                },
                Self::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == left {
                        Self::DataCr
                    } else {
                        Self::Data(left - take)
                    };
                    continue;
                }
                Self::DataCr if b == b'\r' => Self::DataLf,
                Self::DataLf if b == b'\n' => Self::Start,
                Self::DataCr | Self::DataLf => return Err(BadChunk),
                Self::TrailerStart if b == b'\r' => Self::EndLf,
                Self::TrailerStart | Self::Trailer if b == b'\n' => {
                    if *self == Self::TrailerStart {
                        return Err(BadChunk);
                    }
                    Self::TrailerStart
                }
                Self::TrailerStart | Self::Trailer => Self::Trailer,
                Self::EndLf if b == b'\n' => {
                    *self = Self::Done;
                    return Ok(Some(i + 1));
                }
                Self::EndLf => return Err(BadChunk),
                Self::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok((*self == Self::Done).then_some(0))
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}
