//! ApiToken UIDs, kept as 16 bytes when they are UUIDs.
//!
//! The API server gives every object a UUID in its canonical text form (36
//! lowercase characters). Held as text, a million of them are 36 MB; as
//! bytes, 16 MB. Any other UID (a hand-made object, a test) stays text, so
//! every UID reads back exactly as it came.

use std::fmt::Write as _;

/// Where the dashes of a canonical UUID stand.
const DASHES: [usize; 4] = [8, 13, 18, 23];

/// Where its 32 hex digits stand.
const DIGITS: [usize; 32] = {
    let mut at = [0; 32];
    let (mut i, mut pos, mut dash) = (0, 0, 0);
    while i < 32 {
        if dash < DASHES.len() && pos == DASHES[dash] {
            dash += 1;
        } else {
            at[i] = pos;
            i += 1;
        }
        pos += 1;
    }
    at
};

/// A UID to compare and hash without allocating: its 16 bytes when it is a
/// canonical UUID, its text otherwise. One UID always gives the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UidKey<'a> {
    /// A canonical (lowercase) UUID.
    Uuid([u8; 16]),
    /// Any other UID.
    Text(&'a str),
}

impl<'a> UidKey<'a> {
    /// The key of `uid`.
    pub fn of(uid: &'a str) -> Self {
        parse(uid).map_or(Self::Text(uid), Self::Uuid)
    }
}

/// The 16 bytes of a canonical UUID (`8-4-4-4-12` lowercase hex digits), or
/// `None` for anything else, uppercase included: those would not read back
/// as they came.
pub fn parse(uid: &str) -> Option<[u8; 16]> {
    let b = uid.as_bytes();
    if b.len() != 36 || DASHES.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, at) in out.iter_mut().zip(DIGITS.chunks_exact(2)) {
        *byte = prodgy_crds::token::hex_byte(b[at[0]], b[at[1]])?;
    }
    Some(out)
}

/// The canonical text of a UUID's 16 bytes.
pub fn format(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_round_trip_and_nothing_else_is_taken() {
        let uid = "0f8e4c1a-92b3-4d5e-a6f7-0123456789ab";
        let bytes = parse(uid).unwrap();
        assert_eq!(bytes[0], 0x0f);
        assert_eq!(bytes[15], 0xab);
        assert_eq!(format(&bytes), uid);
        assert_eq!(UidKey::of(uid), UidKey::Uuid(bytes));
        for other in [
            "0F8E4C1A-92B3-4D5E-A6F7-0123456789AB",
            "0f8e4c1a92b34d5ea6f70123456789ab",
            "{0f8e4c1a-92b3-4d5e-a6f7-0123456789ab}",
            "0f8e4c1a-92b3-4d5e-a6f7-0123456789a",
            "0f8e4c1a-92b3-4d5e-a6f7-0123456789abc",
            "0f8e4c1a_92b3-4d5e-a6f7-0123456789ab",
            "0f8e4c1a-92b3-4d5e-a6f7-0123456789ag",
            "u-1",
            "",
            "ü8e4c1a-92b3-4d5e-a6f7-0123456789ab",
        ] {
            assert_eq!(parse(other), None, "{other}");
            assert_eq!(UidKey::of(other), UidKey::Text(other));
        }
    }
}
