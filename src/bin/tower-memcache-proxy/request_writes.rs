//! How much of the request being written to an origin connection is still to go: its
//! head and the body its `Content-Length` frames. The rest of a request written after its
//! answer began to arrive (an upload an origin answers as it reads it, an echo) is no next
//! request, whatever its bytes look like; hyper writes the next one only once this one is
//! written whole and its answer read (review SV).

/// As many fields as a request head is read with here: one with more is not followed.
const MAX_FIELDS: usize = 128;

/// Bytes of the current request (head and length-framed body) not yet written.
#[derive(Default)]
pub(crate) struct RequestWrites {
    left: u64,
}

impl RequestWrites {
    /// Whether the next byte written may start a request: the last one, as far as its
    /// head told, has been written whole. A chunked body is not followed (its writes start
    /// with a chunk's size line), nor a head that came in pieces: their writes are judged
    /// by how they start, as before.
    pub(crate) fn at_start(&self) -> bool {
        self.left == 0
    }

    /// `written` bytes of a write whose first part was `first` went out.
    pub(crate) fn wrote(&mut self, first: &[u8], written: usize) {
        if self.left == 0 {
            self.left = message_length(first).unwrap_or(0);
        }
        self.left = self.left.saturating_sub(written as u64);
    }
}

/// The length of the request whose head `bytes` start with, whole: the head's and the
/// body's its `Content-Length` frames (none without one). `None` for no whole head, or a
/// body of another framing.
fn message_length(bytes: &[u8]) -> Option<u64> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = request.parse(bytes).ok()? else {
        return None;
    };
    let mut body = 0;
    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if field.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(field.value).ok()?.trim().parse().ok()?;
        }
    }
    (head as u64).checked_add(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_request_framed_by_its_length_is_no_request_start() {
        let mut writes = RequestWrites::default();
        assert!(writes.at_start());
        let head = b"POST /echo HTTP/1.1\r\nhost: origin\r\ncontent-length: 23\r\n\r\n";
        writes.wrote(head, head.len());
        writes.wrote(b"hello", 5);
        assert!(!writes.at_start());
        writes.wrote(b"GET / HTTP/1.1\r\n\r\n", 18);
        assert!(writes.at_start());
        // A bodiless request, written in two goes; a chunked one is not followed.
        let get = b"GET /next HTTP/1.1\r\nhost: origin\r\n\r\n";
        writes.wrote(get, 10);
        assert!(!writes.at_start());
        writes.wrote(&get[10..], get.len() - 10);
        assert!(writes.at_start());
        writes.wrote(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", 10);
        assert!(writes.at_start());
    }
}
