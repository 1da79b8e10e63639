//! A channel's output under a mask rule, held back until the detectors can see whole tokens:
//! a secret the host writes in pieces (`dd bs=1`, a pause mid-line, SSH's own packet size)
//! would otherwise pass in parts no detector recognises. Complete lines go at once; after a
//! quiet moment, whatever ends at whitespace (a prompt) goes too; a token without whitespace
//! waits for its end, up to a bound. Channels without a mask rule are not held at all.

use std::time::Duration;

/// The longest run without whitespace held back: past it, released as it is. No detector's
/// token is that long, and a blob of base64 on one line is not held whole.
const MAX_TOKEN: usize = 4096;

/// Quiet time after which what ends at whitespace is released (a prompt, a progress line).
pub(super) const QUIET: Duration = Duration::from_millis(50);

#[derive(Default)]
pub(super) struct Unsplit {
    held: Vec<u8>,
}

fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Unsplit {
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Appends `data`; returns what may go now: up to the last line end, or, when more than
    /// [`MAX_TOKEN`] would stay, up to the last whitespace, or everything.
    pub(super) fn push(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.held.extend_from_slice(data);
        let mut cut = self
            .held
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if self.held.len() - cut > MAX_TOKEN {
            cut = self.held.iter().rposition(is_space).map_or(0, |i| i + 1);
            if self.held.len() - cut > MAX_TOKEN {
                cut = self.held.len();
            }
        }
        self.release(cut)
    }

    /// After [`QUIET`]: up to the last whitespace; a token still open keeps waiting.
    pub(super) fn settle(&mut self) -> Option<Vec<u8>> {
        let cut = self.held.iter().rposition(is_space).map_or(0, |i| i + 1);
        self.release(cut)
    }

    /// At the end of the stream: everything.
    pub(super) fn flush(&mut self) -> Option<Vec<u8>> {
        self.release(self.held.len())
    }

    fn release(&mut self, cut: usize) -> Option<Vec<u8>> {
        (cut > 0).then(|| self.held.drain(..cut).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Detector, Detectors};

    fn text(b: Option<Vec<u8>>) -> String {
        String::from_utf8(b.unwrap_or_default()).unwrap()
    }

    #[test]
    fn a_secret_in_pieces_is_released_whole() {
        let mut u = Unsplit::default();
        // One byte at a time, as `dd bs=1` writes it: nothing goes until the line ends.
        let line = b"key ana@example.com ok\n";
        let mut out = String::new();
        for b in line {
            out.push_str(&text(u.push(&[*b])));
            if out.is_empty() {
                assert!(!u.is_empty());
            }
        }
        assert_eq!(out, "key ana@example.com ok\n");
        assert!(u.is_empty());
        let email = Detectors::new([Detector::Email]);
        assert_eq!(
            email.mask_bytes(out.as_bytes()).unwrap(),
            "key [redacted:email] ok\n"
        );
    }

    #[test]
    fn quiet_releases_up_to_whitespace_and_the_end_releases_all() {
        let mut u = Unsplit::default();
        assert_eq!(u.push(b"done\nuser@host:~$ "), Some(b"done\n".to_vec()));
        // A prompt ends at whitespace: it goes once the host is quiet.
        assert_eq!(text(u.settle()), "user@host:~$ ");
        // A token still open stays, even when quiet: its end may be on the way.
        assert_eq!(u.push(b"half of ana@exa"), None);
        assert_eq!(text(u.settle()), "half of ");
        assert_eq!(u.settle(), None);
        assert_eq!(text(u.push(b"mple.com\n")), "ana@example.com\n");
        assert_eq!(u.push(b"tail"), None);
        assert_eq!(text(u.flush()), "tail");
        assert_eq!(u.flush(), None);
    }

    #[test]
    fn what_is_held_is_bounded() {
        let mut u = Unsplit::default();
        // A long line with spaces: released up to its last space once past the bound.
        let words = "word ".repeat(1000);
        let out = text(u.push(words.as_bytes()));
        assert_eq!(out.len(), words.len());
        // One token longer than any secret: released as it is.
        let blob = vec![b'x'; MAX_TOKEN + 1];
        assert_eq!(u.push(&blob).map(|b| b.len()), Some(MAX_TOKEN + 1));
        assert!(u.is_empty());
    }
}
