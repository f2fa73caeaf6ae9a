//! Reading raw HTTP/1.1 heads, and writing plain answers, for origins and clients written
//! on bare TCP (what hyper would never send or accept).

/// A `200 OK` of `body`, framed by its length; `fields` (whole lines, each ending in CRLF,
/// or nothing) come before `Content-Length`.
pub fn ok(fields: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Where `needle` first starts in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The value of the first field named `name` (any case) in a request or response head,
/// white space trimmed.
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field
            .trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// Reads more of `reader` into `buffer`; false at its end (or on an error).
pub async fn more(
    reader: &mut (impl tokio::io::AsyncReadExt + Unpin),
    buffer: &mut Vec<u8>,
) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match reader.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The next request (or response) head from `buffer` and then `reader`, taken out of
/// `buffer` with its blank line; `None` once the connection ended first.
pub async fn next_head(
    reader: &mut (impl tokio::io::AsyncReadExt + Unpin),
    buffer: &mut Vec<u8>,
) -> Option<String> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        if !more(reader, buffer).await {
            return None;
        }
    }
}

/// The next request head, as [`next_head`], its body read and dropped ([`skip_body`]);
/// `None` once the connection ended first or the body's framing broke.
pub async fn next_request(
    reader: &mut (impl tokio::io::AsyncReadExt + Unpin),
    buffer: &mut Vec<u8>,
) -> Option<String> {
    let head = next_head(reader, buffer).await?;
    skip_body(reader, buffer, &head).await.then_some(head)
}

/// Reads and drops, from `buffer` and then `reader`, the body `head` frames (by
/// `Content-Length`, or chunked without trailers); false if the connection ended first
/// or a chunk size is no number.
pub async fn skip_body(
    reader: &mut (impl tokio::io::AsyncReadExt + Unpin),
    buffer: &mut Vec<u8>,
    head: &str,
) -> bool {
    if header_of(head, "transfer-encoding").is_some() {
        loop {
            let Some(end) = find(buffer, b"\r\n") else {
                if !more(reader, buffer).await {
                    return false;
                }
                continue;
            };
            let line = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            else {
                return false;
            };
            // The size line, the data and its CRLF (the last chunk's: the blank line).
            let whole = end + 2 + size + 2;
            while buffer.len() < whole {
                if !more(reader, buffer).await {
                    return false;
                }
            }
            buffer.drain(..whole);
            if size == 0 {
                return true;
            }
        }
    }
    let length = header_of(head, "content-length")
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < length {
        if !more(reader, buffer).await {
            return false;
        }
    }
    buffer.drain(..length);
    true
}
