//! The response heads an origin connection reads, held until whole and looked at before
//! hyper parses them: an answer whose head (or a 1xx before it) frames a body otherwise
//! than hyper reads it by ([`framed_two_ways`]) is handed to hyper with `Connection:
//! close` first, so that hyper closes its connection once it has read it, as it reads it.
//!
//! Once hyper has read a bodiless answer's head (a 204, or a chunked body read whole),
//! its connection is idle, and back in the pool before the answer reaches `forward`; a
//! request on another thread could take it there before `forward` retired it, and the
//! rest of what the origin framed then answered that request (review SQ). A connection
//! hyper knows is to close never goes back. The answer itself is read in full as before:
//! the field is hop-by-hop, and `forward` drops it.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::origin_connection::framed_two_ways;

/// As many fields as hyper's client takes in a head: past it hyper fails the answer.
const MAX_FIELDS: usize = 100;

/// Bytes of heads held at most: past hyper's bound (`MAX_RESPONSE_HEAD`) hyper fails the
/// answer itself, and they are handed over as they are.
const MAX_HEAD: usize = 128 * 1024;

/// The field that tells hyper the connection ends with this answer.
const CLOSE: &[u8] = b"Connection: close\r\n";

/// The current exchange's response heads, held until the final one is whole.
pub(crate) struct ResponseHeads {
    held: Vec<u8>,
    /// Where the head being read starts in `held` (1xx heads before it).
    head_at: usize,
    /// Whether a head held (a 1xx) framed a body two ways.
    two_ways: bool,
    /// Until the final head is read (or the bytes are no head hyper would take).
    watching: bool,
}

impl Default for ResponseHeads {
    fn default() -> Self {
        Self {
            held: Vec::new(),
            head_at: 0,
            two_ways: false,
            watching: true,
        }
    }
}

impl ResponseHeads {
    /// Bytes written after bytes were read: a new request (a request line first) has its
    /// answer's heads come next. Not the rest of a request body written as its answer
    /// arrives: what is read next is more of that answer.
    pub(crate) fn wrote_after_read(&mut self, written: &[u8]) {
        let mut no_fields = [];
        let mut request = httparse::Request::new(&mut no_fields);
        // The request line whole is enough: its fields may follow in another write.
        let _ = request.parse(written);
        if request.version.is_some() {
            self.watching = true;
        }
    }

    /// Whether bytes read are to go through [`read`](Self::read).
    pub(crate) fn watching(&self) -> bool {
        self.watching
    }

    /// Takes bytes read; what hyper is to read now: nothing while a head is incomplete,
    /// the heads held once the final one is whole (with `Connection: close` when one of
    /// them framed a body two ways), and what followed them.
    pub(crate) fn read(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(bytes);
        // A head ends with a line end: without one in these bytes, none can have ended.
        // Parsed anyway, every read of an origin trickling its head a byte at a time
        // parsed all of it again (quadratic in the head's size, 128 KiB at most).
        if memchr::memchr(b'\n', bytes).is_none() && self.held.len() <= MAX_HEAD {
            return Vec::new();
        }
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut head = httparse::Response::new(&mut fields);
            let parsed = head.parse(&self.held[self.head_at..]);
            let (length, status) = match parsed {
                Ok(httparse::Status::Complete(length)) => {
                    let status = head.code.and_then(|code| StatusCode::from_u16(code).ok());
                    let Some(status) = status else {
                        return self.release();
                    };
                    self.two_ways |= framed_two_ways(status, &framing_fields(head.headers));
                    (length, status)
                }
                Ok(httparse::Status::Partial) if self.held.len() <= MAX_HEAD => return Vec::new(),
                // Not a head hyper takes: it fails the answer itself.
                _ => return self.release(),
            };
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                // hyper skips it and reads the next head.
                self.head_at += length;
                continue;
            }
            if self.two_ways {
                tracing::warn!(%status, "upstream framed a response two ways: its connection is closed after it");
                // After the status line: hyper honours any `Connection` line that says close.
                // Found as hyper finds it, past the empty lines before it (httparse skips
                // them): after the first line end, the field stood before the status line
                // there, and hyper failed the answer (review SV).
                let status_at = self.head_at
                    + self.held[self.head_at..]
                        .iter()
                        .take_while(|&&byte| matches!(byte, b'\r' | b'\n'))
                        .count();
                let line_end = self.held[status_at..]
                    .iter()
                    .position(|&byte| byte == b'\n')
                    .map_or(status_at, |end| status_at + end + 1);
                self.held.splice(line_end..line_end, CLOSE.iter().copied());
            }
            return self.release();
        }
    }

    /// What is held, handed over as it is once the connection ends (hyper judges it).
    pub(crate) fn ended(&mut self) -> Vec<u8> {
        self.release()
    }

    fn release(&mut self) -> Vec<u8> {
        self.watching = false;
        self.head_at = 0;
        self.two_ways = false;
        std::mem::take(&mut self.held)
    }
}

/// The head's framing fields (`Content-Length`, `Transfer-Encoding`), every line of them.
fn framing_fields(fields: &[httparse::Header<'_>]) -> HeaderMap {
    let mut framing = HeaderMap::new();
    for field in fields {
        let name = if field.name.eq_ignore_ascii_case("content-length") {
            header::CONTENT_LENGTH
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            header::TRANSFER_ENCODING
        } else {
            continue;
        };
        // A value no field may hold still names the field (and is no length of 0).
        let value = HeaderValue::from_bytes(field.value)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        framing.append::<HeaderName>(name, value);
    }
    framing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper is handed for `reads`, one exchange.
    fn handed(reads: &[&[u8]]) -> String {
        let mut heads = ResponseHeads::default();
        let mut out = Vec::new();
        for read in reads {
            if heads.watching() {
                out.extend(heads.read(read));
            } else {
                out.extend_from_slice(read);
            }
        }
        out.extend(heads.ended());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn only_heads_framed_two_ways_are_handed_over_closing_their_connection() {
        // Held until whole, across reads.
        assert_eq!(
            handed(&[
                b"HTTP/1.1 204 No Content\r\nContent-",
                b"Length: 5\r\n\r\nhello"
            ]),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
        );
        let both = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            handed(&[both.as_bytes(), b"0\r\n\r\n"]),
            "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 5\r\n\
             transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        // Empty lines before the status line, which hyper skips: the field after it.
        assert_eq!(
            handed(&[b"\r\n\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"]),
            "\r\n\nHTTP/1.1 204 No Content\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
        );
        // A 1xx framing a body: the final head closes the connection.
        assert_eq!(
            handed(&[
                b"HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
            ]),
            "HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        );
        // Others as they came; what follows the final head is no head.
        for reads in [
            &[
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".as_slice(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ][..],
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 49\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            ],
            &[b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"],
            &[
                b"\0\0\x12\x04\0\0\0\0\0",
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            ],
            &[b"HTTP/1.1 204 No Content\r\nContent"],
        ] {
            assert_eq!(handed(reads).as_bytes(), reads.concat(), "{reads:?}");
        }
    }

    #[test]
    fn a_head_trickled_a_byte_at_a_time_is_handed_over_as_one_read_would_be() {
        for head in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        ] {
            let bytes: Vec<&[u8]> = head.as_bytes().chunks(1).collect();
            assert_eq!(handed(&bytes), handed(&[head.as_bytes()]), "{head:?}");
        }
    }

    #[test]
    fn only_a_request_line_written_after_an_answer_starts_another_exchange() {
        let mut heads = ResponseHeads::default();
        assert!(
            !heads
                .read(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
                .is_empty()
        );
        // More of a request body, written as its answer arrives.
        heads.wrote_after_read(b"and the rest of the upload");
        assert!(!heads.watching());
        heads.wrote_after_read(b"GET /next HTTP/1.1\r\nHost: origin.example\r\n\r\n");
        assert!(heads.watching());
    }
}
