//! Incremental detokenization with stop strings.
//!
//! Tokens arrive one at a time; text is released only when it is valid UTF-8 and cannot be the
//! start of a stop string. A stop string is never part of the output, also when it spans
//! several tokens.

/// Text state of one sequence's output.
#[derive(Debug, Default)]
pub struct TextStream {
    stop: Vec<String>,
    pending: Vec<u8>,
    held: String,
}

/// What feeding a token produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Feed {
    /// Text that may be sent now.
    pub text: String,
    /// A stop string was found; `text` ends just before it.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop,
            pending: Vec::new(),
            held: String::new(),
        }
    }

    /// Append a token's bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Feed {
        self.pending.extend_from_slice(bytes);
        let valid = decode_prefix(&mut self.pending);
        self.held.push_str(&valid);
        if let Some(i) = self.first_stop() {
            let text = self.held[..i].to_string();
            self.held.clear();
            self.pending.clear();
            return Feed {
                text,
                stopped: true,
            };
        }
        let keep = self.stop_prefix_len();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Feed {
            text,
            stopped: false,
        }
    }

    /// Release everything held (at the end of generation).
    pub fn finish(&mut self) -> String {
        let mut s = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            s.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        s
    }

    fn first_stop(&self) -> Option<usize> {
        self.stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn stop_prefix_len(&self) -> usize {
        let mut best = 0;
        for s in &self.stop {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if suffix.len() < s.len() && s.starts_with(suffix) {
                    best = best.max(suffix.len());
                    break;
                }
            }
        }
        best
    }
}

/// Take the longest prefix of `buf` that is complete UTF-8 (invalid bytes become U+FFFD);
/// an incomplete sequence at the end stays in `buf`.
fn decode_prefix(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return out;
            }
            Err(e) => {
                let good = start + e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[start..good]).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start = good + n;
                    }
                    None => {
                        buf.drain(..good);
                        return out;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let mut t = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let f = t.feed(p);
            out.push_str(&f.text);
            if f.stopped {
                return (out, true);
            }
        }
        out.push_str(&t.finish());
        (out, false)
    }

    #[test]
    fn stop_spanning_tokens_is_cut() {
        assert_eq!(
            run(&["END"], &[b"hello E", b"N", b"D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &[b"a\n", b"\nb"]), ("a".into(), true));
    }

    #[test]
    fn near_misses_are_released() {
        assert_eq!(run(&["END"], &[b"EN", b"X"]), ("ENX".into(), false));
        assert_eq!(run(&[], &[b"abc"]), ("abc".into(), false));
    }

    #[test]
    fn split_utf8_is_held_until_complete() {
        let e = "é".as_bytes();
        let mut t = TextStream::new(vec![]);
        assert_eq!(t.feed(&e[..1]).text, "");
        assert_eq!(t.feed(&e[1..]).text, "é");
        assert_eq!(run(&[], &[&[0xff], b"a"]), ("\u{FFFD}a".into(), false));
    }
}
