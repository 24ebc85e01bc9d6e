//! A streaming `multipart/form-data` reader (RFC 7578) over a request body: parts arrive one
//! at a time and a part's content is handed out in chunks as it is received, so an upload is
//! never held whole in memory. (axum's `multipart` feature would pull `multer` and
//! `encoding_rs` for what fits here in one small state machine.)
//!
//! Part headers are bounded (16 KiB); the caller bounds content.

use axum::body::{Body, Bytes};
use futures_util::StreamExt;

const MAX_HEADERS: usize = 16 << 10;

#[derive(Debug)]
pub enum MultipartError {
    /// Malformed body or Content-Type (400).
    Invalid(String),
    /// The body stream failed (the client went away mid-upload).
    Body(String),
}

impl std::fmt::Display for MultipartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(m) => write!(f, "{m}"),
            Self::Body(m) => write!(f, "reading the request body: {m}"),
        }
    }
}

type R<T> = Result<T, MultipartError>;

fn invalid(m: impl Into<String>) -> MultipartError {
    MultipartError::Invalid(m.into())
}

/// The boundary of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for p in parts {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim().trim_matches('"');
            if !v.is_empty() && v.len() <= 200 {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// One part's headers.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
}

#[derive(PartialEq)]
enum State {
    /// Before a delimiter (preamble or the end of a part's content).
    Content,
    /// Right after a delimiter: `--` ends the body, CRLF starts a part.
    AfterDelimiter,
    Headers,
    Done,
}

pub struct Multipart {
    stream: axum::body::BodyDataStream,
    buf: Vec<u8>,
    /// `\r\n--boundary`.
    delim: Vec<u8>,
    state: State,
    /// Bytes read from the body so far.
    pub received: u64,
    eof: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

impl Multipart {
    pub fn new(body: Body, boundary: &str) -> Self {
        Self {
            stream: body.into_data_stream(),
            // A leading CRLF lets the first delimiter match like the others.
            buf: b"\r\n".to_vec(),
            delim: format!("\r\n--{boundary}").into_bytes(),
            state: State::Content,
            received: 0,
            eof: false,
        }
    }

    /// Read more of the body; false at its end.
    async fn fill(&mut self) -> R<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.stream.next().await {
            Some(Ok(b)) => {
                self.received += b.len() as u64;
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(MultipartError::Body(e.to_string())),
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// The next part, skipping what is left of the current one; `None` after the last.
    pub async fn next_part(&mut self) -> R<Option<Part>> {
        while self.state == State::Content {
            // Drain the rest of the current content (or the preamble).
            self.chunk().await?;
        }
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::AfterDelimiter => {
                    while self.buf.len() < 2 {
                        if !self.fill().await? {
                            return Err(invalid("the multipart body ends inside a delimiter"));
                        }
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    // Transport padding (spaces, tabs) may precede the CRLF.
                    let pad = self
                        .buf
                        .iter()
                        .take_while(|&&b| b == b' ' || b == b'\t')
                        .count();
                    if self.buf.len() < pad + 2 {
                        if !self.fill().await? {
                            return Err(invalid("the multipart body ends inside a delimiter"));
                        }
                        continue;
                    }
                    if &self.buf[pad..pad + 2] != b"\r\n" {
                        return Err(invalid("malformed multipart delimiter line"));
                    }
                    self.buf.drain(..pad + 2);
                    self.state = State::Headers;
                }
                State::Headers => {
                    let end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                            break i;
                        }
                        if self.buf.len() > MAX_HEADERS {
                            return Err(invalid("multipart part headers are too large"));
                        }
                        if !self.fill().await? {
                            return Err(invalid("the multipart body ends inside part headers"));
                        }
                    };
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end + 4);
                    self.state = State::Content;
                    return parse_headers(&head).map(Some);
                }
                State::Content => unreachable!("drained above"),
            }
        }
    }

    /// The next chunk of the current part's content; `None` at its end.
    pub async fn chunk(&mut self) -> R<Option<Bytes>> {
        if self.state != State::Content {
            return Ok(None);
        }
        loop {
            if let Some(i) = find(&self.buf, &self.delim) {
                if i > 0 {
                    let out: Vec<u8> = self.buf.drain(..i).collect();
                    return Ok(Some(Bytes::from(out)));
                }
                self.buf.drain(..self.delim.len());
                self.state = State::AfterDelimiter;
                return Ok(None);
            }
            // Everything but a possible partial delimiter at the end can go out.
            let keep = self.delim.len() - 1;
            if self.buf.len() > keep {
                let n = self.buf.len() - keep;
                let out: Vec<u8> = self.buf.drain(..n).collect();
                return Ok(Some(Bytes::from(out)));
            }
            if !self.fill().await? {
                return Err(invalid(
                    "the multipart body ended before its closing delimiter (upload cut off?)",
                ));
            }
        }
    }

    /// The whole content of the current part, up to `limit` bytes (for small text fields).
    pub async fn text(&mut self, limit: usize) -> R<String> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
            if out.len() > limit {
                return Err(invalid(format!(
                    "a form field is longer than {limit} bytes"
                )));
            }
        }
        String::from_utf8(out).map_err(|_| invalid("a form field is not UTF-8"))
    }
}

fn param(header: &str, key: &str) -> Option<String> {
    // `form-data; name="file"; filename="a.csv"` (quoted strings may hold `;`).
    let mut rest = header;
    while let Some(i) = rest.find(';') {
        rest = rest[i + 1..].trim_start();
        let Some(eq) = rest.find('=') else { break };
        let k = rest[..eq].trim();
        let v = &rest[eq + 1..];
        let (val, after) = if let Some(q) = v.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((j, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = j + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &q[end.min(q.len())..])
        } else {
            let e = v.find(';').unwrap_or(v.len());
            (v[..e].trim().to_string(), &v[e..])
        };
        if k.eq_ignore_ascii_case(key) {
            return Some(val);
        }
        rest = after;
    }
    None
}

fn parse_headers(head: &str) -> R<Part> {
    let mut disposition = None;
    for line in head.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("content-disposition") {
            disposition = Some(v.trim().to_string());
        }
    }
    let d = disposition.ok_or_else(|| invalid("a multipart part has no Content-Disposition"))?;
    let name = param(&d, "name").ok_or_else(|| invalid("a multipart part has no name"))?;
    Ok(Part {
        name,
        filename: param(&d, "filename"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: Vec<&'static [u8]>) -> Body {
        let s = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        Body::from_stream(s)
    }

    async fn collect(mp: &mut Multipart) -> Vec<(Part, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(p) = mp.next_part().await.unwrap() {
            let mut v = Vec::new();
            while let Some(c) = mp.chunk().await.unwrap() {
                v.extend_from_slice(&c);
            }
            out.push((p, v));
        }
        out
    }

    #[tokio::test]
    async fn parts_split_across_chunks_anywhere() {
        let body: &'static [u8] = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a;b \\\"q\\\".csv\"\r\nContent-Type: text/csv\r\n\r\na,b\r\n1,2\r\n--Xy\r\n--XyZ--\r\nepilogue";
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            let mut mp = Multipart::new(body_of(vec![a, b]), "XyZ");
            let parts = collect(&mut mp).await;
            assert_eq!(parts.len(), 2, "split at {split}");
            assert_eq!(parts[0].0.name, "purpose");
            assert_eq!(parts[0].1, b"dataset");
            assert_eq!(parts[1].0.filename.as_deref(), Some("a;b \"q\".csv"));
            assert_eq!(parts[1].1, b"a,b\r\n1,2\r\n--Xy", "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_body_cut_off_is_an_error() {
        let mut mp = Multipart::new(
            body_of(vec![
                b"--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
            ]),
            "B",
        );
        let p = mp.next_part().await.unwrap().unwrap();
        assert_eq!(p.name, "file");
        let mut err = None;
        loop {
            match mp.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(err, Some(MultipartError::Invalid(_))));
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("application/json"), None);
    }
}
