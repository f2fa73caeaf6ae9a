//! Where the request being written to an origin connection stands: in its head, in the
//! body its `Content-Length` frames, in the chunks of a chunked body, or done. The rest of
//! a request written after its answer began to arrive (an upload an origin answers as it
//! reads it, an echo) is no next request, whatever its bytes look like; hyper writes the
//! next one only once this one is written whole and its answer read (review SV).
//!
//! Followed byte by byte, in constant memory: a write may end anywhere (the socket took
//! part of it), a chunk's data just after its size line, and the next write then starts
//! with that data, a request line if the client's upload held one there (review SW).
//! Bytes that break the framing hyper writes leave the request [`lost`](RequestWrites::lost):
//! nothing more is written on that connection rather than a guess made.

/// The longest chunk-size line followed (hyper writes at most 16 hex digits and no
/// extension): past it the request is lost.
const MAX_SIZE_LINE: u64 = 4 * 1024;

/// The most trailer bytes followed after the last chunk (hyper writes those the request
/// declared, bounded by a client's head).
const MAX_TRAILERS: u64 = 64 * 1024;

/// The first bytes of a head line kept: enough for the framing fields' names and values.
const KEPT: usize = 64;

/// Bytes of the current request (head and body) not yet written, as far as they framed.
#[derive(Default)]
pub(crate) struct RequestWrites {
    at: At,
}

#[derive(Default)]
enum At {
    /// Between requests: the next byte starts one.
    #[default]
    Start,
    /// In the head, in its `line`-th line.
    Head {
        line: usize,
        current: Line,
        body: Framing,
    },
    /// In a body framed by its length: bytes left.
    Length(u64),
    /// In a chunk-size line: the size so far, and whether its digits ended (an extension,
    /// or white space, follows).
    Size {
        size: u64,
        digits: bool,
        ended: bool,
        length: u64,
    },
    /// In a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF, `seen` bytes of it.
    DataEnd { seen: u8 },
    /// After the last chunk: trailer lines, the current one `line` bytes long so far (its
    /// CR aside), `total` bytes of them.
    Trailers { line: u64, total: u64 },
    /// The framing broke: not followed any more.
    Lost,
}

/// A head line, its first [`KEPT`] bytes kept.
struct Line {
    kept: [u8; KEPT],
    length: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            kept: [0; KEPT],
            length: 0,
        }
    }
}

impl Line {
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.kept.get_mut(self.length) {
            *slot = byte;
        }
        self.length = self.length.saturating_add(1);
    }

    /// The line without its CR, if all of it was kept.
    fn whole(&self) -> Option<&[u8]> {
        let line = self.kept.get(..self.length)?;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn is_empty(&self) -> bool {
        self.length == 0 || (self.length == 1 && self.kept[0] == b'\r')
    }
}

/// How the head being read frames its body.
#[derive(Clone, Copy, Default)]
enum Framing {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Framed in a way not followed (two lengths, another coding).
    Unknown,
}

impl RequestWrites {
    /// Whether the next byte written starts a request: the last one has been written
    /// whole, as its head framed it.
    pub(crate) fn at_start(&self) -> bool {
        matches!(self.at, At::Start)
    }

    /// Whether the bytes written broke the framing hyper writes: nothing tells where the
    /// next request would start.
    pub(crate) fn lost(&self) -> bool {
        matches!(self.at, At::Lost)
    }

    /// `written` went out, in order.
    pub(crate) fn wrote(&mut self, written: &[u8]) {
        let mut rest = written;
        while !rest.is_empty() && !self.lost() {
            // A body's bytes are skipped whole; the rest goes a byte at a time.
            let skipped = match &mut self.at {
                At::Length(left) | At::Data(left) => {
                    let skipped =
                        usize::try_from(*left).map_or(rest.len(), |left| left.min(rest.len()));
                    *left -= skipped as u64;
                    skipped
                }
                _ => {
                    self.at = next(std::mem::take(&mut self.at), rest[0]);
                    1
                }
            };
            rest = &rest[skipped..];
            self.body_done();
        }
    }

    /// A length-framed body or a chunk's data written whole.
    fn body_done(&mut self) {
        match self.at {
            At::Length(0) => self.at = At::Start,
            At::Data(0) => self.at = At::DataEnd { seen: 0 },
            _ => {}
        }
    }
}

/// Where a request stands once `byte` followed where it stood (`at`), a body's bytes aside.
fn next(at: At, byte: u8) -> At {
    match at {
        At::Start => {
            let mut current = Line::default();
            current.push(byte);
            At::Head {
                line: 0,
                current,
                body: Framing::None,
            }
        }
        At::Head {
            line,
            mut current,
            body,
        } => {
            if byte != b'\n' {
                current.push(byte);
                return At::Head {
                    line,
                    current,
                    body,
                };
            }
            if line > 0 && current.is_empty() {
                return match body {
                    Framing::None => At::Start,
                    Framing::Length(0) => At::Start,
                    Framing::Length(length) => At::Length(length),
                    Framing::Chunked => size_line(),
                    Framing::Unknown => At::Lost,
                };
            }
            let body = if line == 0 {
                body
            } else {
                framed(body, &current)
            };
            At::Head {
                line: line.saturating_add(1),
                current: Line::default(),
                body,
            }
        }
        At::Size {
            size,
            digits,
            ended,
            length,
        } => {
            let length = length.saturating_add(1);
            if length > MAX_SIZE_LINE {
                return At::Lost;
            }
            match byte {
                b'\n' if digits && size == 0 => At::Trailers { line: 0, total: 0 },
                b'\n' if digits => At::Data(size),
                b'\n' => At::Lost,
                _ if ended => At::Size {
                    size,
                    digits,
                    ended,
                    length,
                },
                _ => match (byte as char).to_digit(16) {
                    Some(digit) => match size.checked_mul(16) {
                        Some(size) => At::Size {
                            size: size + u64::from(digit),
                            digits: true,
                            ended,
                            length,
                        },
                        None => At::Lost,
                    },
                    // `;` (an extension), white space or the CR: the digits ended.
                    None if digits => At::Size {
                        size,
                        digits,
                        ended: true,
                        length,
                    },
                    None => At::Lost,
                },
            }
        }
        At::DataEnd { seen } => match (seen, byte) {
            (0, b'\r') => At::DataEnd { seen: 1 },
            (0 | 1, b'\n') => size_line(),
            _ => At::Lost,
        },
        At::Trailers { line, total } => {
            let total = total.saturating_add(1);
            match byte {
                _ if total > MAX_TRAILERS => At::Lost,
                // The empty line after the trailers ends the request.
                b'\n' if line == 0 => At::Start,
                b'\n' => At::Trailers { line: 0, total },
                b'\r' => At::Trailers { line, total },
                _ => At::Trailers {
                    line: line.saturating_add(1),
                    total,
                },
            }
        }
        // Written whole by `wrote`; here only once done, which `body_done` ends.
        At::Length(left) => At::Length(left),
        At::Data(left) => At::Data(left),
        At::Lost => At::Lost,
    }
}

fn size_line() -> At {
    At::Size {
        size: 0,
        digits: false,
        ended: false,
        length: 0,
    }
}

/// `body` with the head line `line` read: its `Content-Length` or `Transfer-Encoding`.
fn framed(body: Framing, line: &Line) -> Framing {
    // The name, whole within what is kept: a framing field's is far shorter. Any other
    // field, however long (a `Content-Length-Digest`), leaves the framing alone.
    let kept = &line.kept[..line.length.min(KEPT)];
    let Some(colon) = kept.iter().position(|&byte| byte == b':') else {
        return body;
    };
    let name = &kept[..colon];
    if !name.eq_ignore_ascii_case(b"content-length")
        && !name.eq_ignore_ascii_case(b"transfer-encoding")
    {
        return body;
    }
    // A framing value longer than kept is none hyper writes.
    let Some(whole) = line.whole() else {
        return Framing::Unknown;
    };
    let value = whole[colon + 1..].trim_ascii();
    if name.eq_ignore_ascii_case(b"content-length") {
        let length = std::str::from_utf8(value)
            .ok()
            .and_then(|value| value.parse::<u64>().ok());
        return match (body, length) {
            (Framing::None, Some(length)) => Framing::Length(length),
            (Framing::Length(first), Some(length)) if first == length => body,
            (Framing::Chunked, _) => Framing::Chunked,
            _ => Framing::Unknown,
        };
    }
    if name.eq_ignore_ascii_case(b"transfer-encoding") {
        return if value.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Unknown
        };
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the writes of `request`, cut at every `cuts`, stand after each: whether the
    /// next byte starts a request.
    fn starts(request: &[u8], cuts: &[usize]) -> Vec<bool> {
        let mut writes = RequestWrites::default();
        let mut at = 0;
        cuts.iter()
            .chain([&request.len()])
            .map(|&cut| {
                writes.wrote(&request[at..cut]);
                at = cut;
                assert!(!writes.lost(), "lost at {cut}");
                writes.at_start()
            })
            .collect()
    }

    #[test]
    fn the_rest_of_a_request_framed_by_its_length_is_no_request_start() {
        let head = "POST /echo HTTP/1.1\r\nhost: origin\r\ncontent-length: 23\r\n\r\n";
        let request = format!("{head}helloGET / HTTP/1.1\r\n\r\n");
        let cut = head.len() + 5;
        assert_eq!(starts(request.as_bytes(), &[10, cut]), [false, false, true]);
        // A bodiless request, and a head with more fields than any parser's array.
        let fields = "x-a: b\r\n".repeat(1000);
        let get = format!("GET /next HTTP/1.1\r\n{fields}host: origin\r\n\r\n");
        assert_eq!(starts(get.as_bytes(), &[10]), [false, true]);
        let many = format!("POST / HTTP/1.1\r\n{fields}content-length: 3\r\n\r\nabc");
        assert_eq!(starts(many.as_bytes(), &[many.len() - 3]), [false, true]);
        // Long fields named like the framing ones, but other.
        let long = "x".repeat(200);
        let named = format!(
            "POST / HTTP/1.1\r\ncontent-length-digest: {long}\r\ntransfer-encodings{long}: x\r\n\
             content-length: 3\r\n\r\nabc"
        );
        assert_eq!(starts(named.as_bytes(), &[named.len() - 3]), [false, true]);
    }

    /// A write that ends just after a chunk's size line: the next one starts with the
    /// chunk's data, a request line here, and is no request start (review SW).
    #[test]
    fn a_chunked_body_is_followed_to_its_last_chunk_and_trailers() {
        let head = "POST /up HTTP/1.1\r\nhost: origin\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = "10\r\nGET / HTTP/1.1\r\n\r\n";
        let request = format!("{head}{chunk}{chunk}0\r\n\r\n");
        let request = request.as_bytes();
        // Every cut, each byte of it written apart.
        for cut in 1..request.len() {
            assert_eq!(starts(request, &[cut]), [false, true], "cut at {cut}");
        }
        let bytes: Vec<usize> = (1..request.len()).collect();
        assert!(
            starts(request, &bytes)
                .iter()
                .rev()
                .skip(1)
                .all(|start| !start)
        );
        // The size line's end: what follows is data.
        let mut writes = RequestWrites::default();
        writes.wrote(format!("{head}10\r\n").as_bytes());
        assert!(!writes.at_start());
        writes.wrote(b"GET / HTTP/1.1\r\n");
        assert!(!writes.at_start());
        // Extensions and trailers, and a bodiless request after.
        let extended =
            format!("{head}5;name=value\r\nhello\r\n0\r\nx-sum: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let end = extended.len() - "GET / HTTP/1.1\r\n\r\n".len();
        assert_eq!(
            starts(extended.as_bytes(), &[end - 1, end]),
            [false, true, true]
        );
    }

    #[test]
    fn framing_it_cannot_follow_leaves_the_request_lost() {
        let head = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        for bad in [
            format!("{head}zz\r\n"),
            format!("{head}5\r\nhelloXX"),
            format!("{head}{}\r\n", "f".repeat(17)),
            format!("{head}1;{}", "x".repeat(5000)),
            format!("{head}0\r\n{}", "x".repeat(70_000)),
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".into(),
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".into(),
            format!(
                "POST / HTTP/1.1\r\ncontent-length: {}5\r\n\r\n",
                " ".repeat(80)
            ),
        ] {
            let mut writes = RequestWrites::default();
            writes.wrote(bad.as_bytes());
            assert!(writes.lost(), "{bad:.80}");
            assert!(!writes.at_start());
        }
    }
}
