//! Bounded capture of a command's stdout and stderr: the head and the tail are kept, the middle is counted and
//! elided, so a command that prints gigabytes costs the agent a fixed amount of memory and its report stays under
//! `MAX_REPORT_BYTES`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use muster_schemas::limits::MAX_OUTPUT_BYTES;

/// Bytes of one stream kept: the first `limit / 2` and the last `limit / 2`.
#[derive(Debug, Clone)]
pub struct BoundedOutput {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes dropped between the head and the tail.
    elided: u64,
}

impl Default for BoundedOutput {
    fn default() -> Self {
        Self::new(MAX_OUTPUT_BYTES)
    }
}

impl BoundedOutput {
    /// A capture keeping at most `limit` bytes, half from the start and half from the end.
    pub fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        Self { head_cap, tail_cap: limit - head_cap, head: Vec::new(), tail: VecDeque::new(), elided: 0 }
    }

    /// Appends bytes as the command writes them.
    pub fn push(&mut self, mut bytes: &[u8]) {
        let to_head = bytes.len().min(self.head_cap - self.head.len());
        self.head.extend_from_slice(&bytes[..to_head]);
        bytes = &bytes[to_head..];
        if bytes.is_empty() {
            return;
        }
        // Only the last `tail_cap` bytes of this chunk can survive; skip the rest at once.
        if bytes.len() > self.tail_cap {
            let skip = bytes.len() - self.tail_cap;
            self.elided += (skip + self.tail.len()) as u64;
            self.tail.clear();
            bytes = &bytes[skip..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.elided += overflow as u64;
        self.tail.extend(bytes);
    }

    /// Bytes received so far, kept or not.
    pub fn total(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.elided
    }

    /// The kept text: invalid UTF-8 replaced, and a marker saying how much was elided between head and tail.
    /// Never longer (in bytes) than the limit plus the marker, even when replacement characters would widen it.
    pub fn text(&self) -> String {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        if self.elided == 0 {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            return clamp_head(String::from_utf8_lossy(&all).into_owned(), self.head_cap + self.tail_cap);
        }
        let head = clamp_head(String::from_utf8_lossy(trim_partial_end(&self.head)).into_owned(), self.head_cap);
        let tail = clamp_tail(String::from_utf8_lossy(trim_partial_start(&tail)).into_owned(), self.tail_cap);
        format!("{head}\n… {} bytes elided …\n{tail}", self.elided)
    }
}

/// The first at most `max` bytes of `s`, cut at a character boundary.
fn clamp_head(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The last at most `max` bytes of `s`, cut at a character boundary.
fn clamp_tail(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// Drops an incomplete UTF-8 sequence cut off at the end of the head (it would show as a replacement character).
fn trim_partial_end(bytes: &[u8]) -> &[u8] {
    // A UTF-8 character is at most 4 bytes: look at most 3 bytes back for its lead byte.
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 != 0x80 {
            let needed = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else if b >= 0xC0 {
                2
            } else {
                1
            };
            return if needed > back { &bytes[..bytes.len() - back] } else { bytes };
        }
    }
    bytes
}

/// Drops continuation bytes at the start of the tail (the rest of a character whose start was elided).
fn trim_partial_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take(3).take_while(|b| *b & 0xC0 == 0x80).count();
    &bytes[skip..]
}

/// Where a running command's stdout and stderr go: shared between the executor writing and the runner reading
/// progress snapshots.
#[derive(Debug, Clone)]
pub struct OutputCapture {
    stdout: Arc<Mutex<BoundedOutput>>,
    stderr: Arc<Mutex<BoundedOutput>>,
}

impl Default for OutputCapture {
    fn default() -> Self {
        Self::new(MAX_OUTPUT_BYTES)
    }
}

impl OutputCapture {
    /// A capture keeping at most `limit` bytes per stream.
    pub fn new(limit: usize) -> Self {
        Self {
            stdout: Arc::new(Mutex::new(BoundedOutput::new(limit))),
            stderr: Arc::new(Mutex::new(BoundedOutput::new(limit))),
        }
    }

    /// Appends to stdout.
    pub fn stdout(&self, bytes: &[u8]) {
        lock(&self.stdout).push(bytes);
    }

    /// Appends to stderr.
    pub fn stderr(&self, bytes: &[u8]) {
        lock(&self.stderr).push(bytes);
    }

    /// The kept text of (stdout, stderr).
    pub fn text(&self) -> (String, String) {
        (lock(&self.stdout).text(), lock(&self.stderr).text())
    }
}

/// The data is plain bytes: a writer that panicked mid-push leaves nothing inconsistent worth losing output over.
fn lock(m: &Mutex<BoundedOutput>) -> MutexGuard<'_, BoundedOutput> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut o = BoundedOutput::new(16);
        o.push(b"hello ");
        o.push(b"world");
        assert_eq!(o.text(), "hello world");
        assert_eq!(o.total(), 11);
    }

    #[test]
    fn exactly_the_limit_is_kept_whole() {
        let mut o = BoundedOutput::new(10);
        o.push(b"0123456789");
        assert_eq!(o.text(), "0123456789");
    }

    #[test]
    fn long_output_keeps_head_and_tail_with_a_marker() {
        let mut o = BoundedOutput::new(10);
        o.push(b"abcdefghijklmnopqrstuvwxyz");
        assert_eq!(o.text(), "abcde\n… 16 bytes elided …\nvwxyz");
        assert_eq!(o.total(), 26);
    }

    #[test]
    fn chunking_does_not_change_what_is_kept() {
        let data: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut whole = BoundedOutput::new(100);
        whole.push(&data);
        for chunk in [1, 3, 7, 49, 50, 51, 99, 100, 101, 4096] {
            let mut o = BoundedOutput::new(100);
            for part in data.chunks(chunk) {
                o.push(part);
            }
            assert_eq!(o.text(), whole.text(), "chunk size {chunk}");
            assert_eq!(o.total(), 10_000);
        }
        let text = whole.text();
        assert!(text.starts_with(std::str::from_utf8(&data[..50]).unwrap()));
        assert!(text.ends_with(std::str::from_utf8(&data[10_000 - 50..]).unwrap()));
        assert!(text.contains("… 9900 bytes elided …"));
    }

    #[test]
    fn cut_characters_are_dropped_not_mangled() {
        let mut o = BoundedOutput::new(8);
        // "éééééééé": 16 bytes; the head keeps 4 bytes (2 chars), the tail 4 bytes (2 chars).
        o.push("éééééééé".as_bytes());
        assert_eq!(o.text(), "éé\n… 8 bytes elided …\néé");
        let mut o = BoundedOutput::new(8);
        o.push(b"x");
        o.push("éééééééé".as_bytes());
        // Head "xé" + half of é; tail starts mid-é.
        let text = o.text();
        assert!(!text.contains('\u{FFFD}'), "{text:?}");
        assert!(text.starts_with("xé\n") && text.ends_with("\néé"), "{text:?}");
    }

    #[test]
    fn invalid_utf8_never_exceeds_the_limit() {
        let mut o = BoundedOutput::new(64);
        o.push(&[0xFF; 10_000]);
        let text = o.text();
        // Each invalid byte becomes a 3-byte replacement character; the kept text is clamped back.
        let marker = "\n… 9936 bytes elided …\n";
        assert!(text.contains(marker), "{text:?}");
        assert!(text.len() <= 64 + marker.len(), "{} bytes", text.len());
    }

    #[test]
    fn capture_is_shared() {
        let c = OutputCapture::new(100);
        let writer = c.clone();
        writer.stdout(b"out");
        writer.stderr(b"err");
        assert_eq!(c.text(), ("out".to_owned(), "err".to_owned()));
    }
}
