//! OSC 52: the terminal escape sequence that sets the system clipboard.
//!
//! Works over SSH and inside most terminals (and tmux with
//! `set-clipboard on`) without any clipboard daemon or native library, which
//! is why `copy` uses it instead of a platform clipboard API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The escape sequence that puts `text` on the clipboard (`c` selection),
/// terminated by BEL, which every OSC-52-capable terminal accepts.
pub fn encode(text: &str) -> String {
    format!("\x1b]52;c;{}\x07", STANDARD.encode(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_base64_of_the_text_in_an_osc52_sequence() {
        assert_eq!(encode("prod_abc"), "\x1b]52;c;cHJvZF9hYmM=\x07");
        assert_eq!(encode(""), "\x1b]52;c;\x07");
    }

    #[test]
    fn control_characters_cannot_escape_the_sequence() {
        // A hostile prefix with its own BEL/ESC must stay inside the base64.
        let seq = encode("a\x07\x1b]0;pwned\x07");
        let body = &seq[7..seq.len() - 1];
        assert!(!body.contains(['\x07', '\x1b']));
        assert_eq!(
            STANDARD.decode(body).unwrap(),
            b"a\x07\x1b]0;pwned\x07".to_vec()
        );
    }
}
