//! Streaming a JSON array of records from a reader, one element at a time:
//! a million records never sit in memory as JSON text, only the unfinished
//! element does.
//!
//! Each element is parsed straight out of the read buffer: serde finds where
//! it ends, so a well-formed record costs one pass over its bytes. Only an
//! element that does not parse as a `T` falls back to a byte scanner
//! ([`element_end`]) that cuts it at the next top-level `,` or `]`; its raw
//! bytes go to the caller, who decides what they are worth. The array's own
//! syntax (the commas, the closing `]`, nothing after it) fails the whole
//! read.

use std::io::Read;

use serde::de::DeserializeOwned;

/// The least read at a time; a buffer holding a long element grows by
/// doubling, so an element of any size is read in linear time.
const CHUNK: usize = 256 * 1024;

/// One element of the array.
#[derive(Debug)]
pub enum Element<'a, T> {
    /// It parsed as a `T`.
    Parsed(T),
    /// It did not; its bytes, cut at the next top-level separator.
    Raw(&'a [u8]),
}

/// Calls `f` with each element of a JSON array whose opening `[` was
/// already consumed. Fails on a missing `]`, an empty element or anything
/// after the array.
pub fn for_each_element<R: Read, T: DeserializeOwned>(
    reader: R,
    mut f: impl FnMut(Element<'_, T>),
) -> Result<(), String> {
    let mut r = Reader::new(reader);
    let mut first = true;
    loop {
        let b = r.peek()?;
        if first && b == b']' {
            r.pos += 1;
            r.keep = r.pos;
            break;
        }
        if matches!(b, b',' | b']') {
            return Err(format!("empty array element at position {}", r.count));
        }
        r.element(&mut f)?;
        r.count += 1;
        first = false;
        let b = r.peek()?;
        r.pos += 1;
        r.keep = r.pos;
        if b == b']' {
            break;
        }
    }
    r.rest_is_whitespace()
}

struct Reader<R> {
    reader: R,
    /// Read bytes are `buf[..end]`; the rest is spare room, zeroed once
    /// when the buffer grows, never on each read.
    buf: Vec<u8>,
    end: usize,
    /// The next unread byte.
    pos: usize,
    /// The first byte a refill must keep: the start of the element being
    /// read, or `pos` between elements.
    keep: usize,
    eof: bool,
    /// How many bytes the parser is given first: twice the last element,
    /// so about twice a record's bytes are checked as UTF-8, not the buffer.
    window: usize,
    /// Elements read so far.
    count: usize,
}

/// The least text the parser is given at first.
const MIN_WINDOW: usize = 512;

impl<R: Read> Reader<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            buf: vec![0; 2 * CHUNK],
            end: 0,
            pos: 0,
            keep: 0,
            eof: false,
            window: MIN_WINDOW,
            count: 0,
        }
    }

    /// Drops what is before `keep` and reads more; false at the end.
    fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        let keep = self.keep;
        self.buf.copy_within(keep..self.end, 0);
        (self.end, self.pos, self.keep) = (self.end - keep, self.pos - keep, 0);
        if self.buf.len() - self.end < CHUNK {
            let len = (self.end + CHUNK).max(2 * self.buf.len());
            self.buf.resize(len, 0);
        }
        let n = loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                read => break read.map_err(|e| e.to_string())?,
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// The next byte that is not whitespace, left unread.
    fn peek(&mut self) -> Result<u8, String> {
        loop {
            let rest = &self.buf[self.pos..self.end];
            match rest.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    self.pos += i;
                    return Ok(self.buf[self.pos]);
                }
                None => {
                    self.pos = self.end;
                    if !self.fill()? {
                        return Err("the array is not closed (truncated file?)".into());
                    }
                }
            }
        }
    }

    /// Reads one element, starting at `pos` (not whitespace), and hands it
    /// to `f`; leaves `pos` after it.
    fn element<T: DeserializeOwned>(
        &mut self,
        f: &mut impl FnMut(Element<'_, T>),
    ) -> Result<(), String> {
        self.keep = self.pos;
        if let Some((value, len)) = self.parse()? {
            // A value must be followed by a separator.
            self.pos += len;
            let next = self.peek()?;
            self.pos = self.keep;
            if matches!(next, b',' | b']') {
                self.pos += len;
                self.keep = self.pos;
                f(Element::Parsed(value));
                return Ok(());
            }
        }
        let len = self.cut()?;
        f(Element::Raw(&self.buf[self.pos..self.pos + len]));
        self.pos += len;
        self.keep = self.pos;
        Ok(())
    }

    /// The element at `pos` as a `T`, with its length; `None` when it does
    /// not parse.
    fn parse<T: DeserializeOwned>(&mut self) -> Result<Option<(T, usize)>, String> {
        let mut window = self.window;
        loop {
            let upto = self.end.min(self.pos + window);
            let bytes = &self.buf[self.pos..upto];
            // Parse up to the first byte that is not UTF-8, or up to a
            // character the window cuts.
            let (text, bad) = match std::str::from_utf8(bytes) {
                Ok(text) => (text, false),
                Err(e) => (
                    std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
                    e.error_len().is_some(),
                ),
            };
            let mut values = serde_json::Deserializer::from_str(text).into_iter::<T>();
            let parsed = values.next();
            let len = values.byte_offset();
            // A value that ends where the text does may go on (`7` of `73`),
            // unless a byte that is not UTF-8 or the end of the file follows.
            let whole = bad || len < text.len() || (upto == self.end && self.eof);
            match parsed {
                Some(Ok(value)) if whole => {
                    self.window = (2 * len).max(MIN_WINDOW);
                    return Ok(Some((value, len)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) if e.is_eof() && !bad => {}
                _ => return Ok(None),
            }
            if upto < self.end {
                window *= 2;
            } else if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// The length of the element at `pos`, by the byte scanner.
    fn cut(&mut self) -> Result<usize, String> {
        loop {
            if let Some(len) = element_end(&self.buf[self.pos..self.end])? {
                return Ok(len);
            }
            if !self.fill()? {
                return Err("the array is not closed (truncated file?)".into());
            }
        }
    }

    fn rest_is_whitespace(&mut self) -> Result<(), String> {
        loop {
            if !self.buf[self.pos..self.end]
                .iter()
                .all(u8::is_ascii_whitespace)
            {
                return Err("data after the closing ]".into());
            }
            self.pos = self.end;
            self.keep = self.pos;
            if !self.fill()? {
                return Ok(());
            }
        }
    }
}

/// The length of the array element `bytes` starts with (its first byte is
/// not whitespace), up to the top-level `,` or `]` after it and without the
/// whitespace before that; `None` when `bytes` ends first. Only strings and
/// nesting are followed; the syntax inside the element is left to its
/// parser.
pub fn element_end(bytes: &[u8]) -> Result<Option<usize>, String> {
    let (mut depth, mut at, mut last) = (0usize, 0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'"' => match string_end(&bytes[at + 1..]) {
                Some(len) => at += len + 1,
                None => return Ok(None),
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b',' | b']' if depth == 0 => {
                return if at == 0 {
                    Err("empty array element".into())
                } else {
                    Ok(Some(last + 1))
                };
            }
            b'}' => return Err("unbalanced }".into()),
            _ => {}
        }
        if !bytes[at].is_ascii_whitespace() {
            last = at;
        }
        at += 1;
    }
    Ok(None)
}

/// Where the string whose opening quote came just before `bytes` closes:
/// the index of its closing quote.
fn string_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        at += memchr::memchr2(b'"', b'\\', &bytes[at..])?;
        if bytes[at] == b'"' {
            return Some(at);
        }
        // Over the backslash and the byte it escapes.
        at += 2;
        if at > bytes.len() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;

    /// Yields one byte per read, so every buffer boundary is met.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// Each element as `+<value>` (parsed) or `-<bytes>` (raw), read as `T`
    /// in one piece and one byte at a time; both must agree.
    fn read<T: DeserializeOwned + serde::Serialize>(body: &[u8]) -> Result<Vec<String>, String> {
        let show = |e: Element<'_, T>| match e {
            Element::Parsed(v) => format!("+{}", serde_json::to_string(&v).unwrap()),
            Element::Raw(b) => format!("-{}", String::from_utf8_lossy(b)),
        };
        let (mut whole, mut trickled) = (Vec::new(), Vec::new());
        let a = for_each_element(body, |e| whole.push(show(e)));
        let b = for_each_element(Trickle(body), |e| trickled.push(show(e)));
        assert_eq!(a, b, "{}", String::from_utf8_lossy(body));
        assert_eq!(whole, trickled);
        a.map(|()| whole)
    }

    type Object = BTreeMap<String, Value>;

    #[test]
    fn elements_are_parsed_in_place_or_cut_at_top_level_separators() {
        let body = br#" {"a":[1,2],"s":"x,]}\"\\"} , 7 ,"str,]" ,[ [] ],12345 ]  "#;
        let values = read::<Value>(body).unwrap();
        let objects = read::<Object>(body).unwrap();
        let object = r#"+{"a":[1,2],"s":"x,]}\"\\"}"#;
        assert_eq!(values, [object, "+7", r#"+"str,]""#, "+[[]]", "+12345"]);
        // What is not an object comes as it was written.
        assert_eq!(objects, [object, "-7", r#"-"str,]""#, "-[ [] ]", "-12345"]);
        assert_eq!(read::<Value>(b"]").unwrap(), Vec::<String>::new());
        assert_eq!(read::<Value>(b"  \n ] \n").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_element_that_does_not_parse_is_handed_over_whole() {
        // Junk after a value, a syntax error, a number that goes on past a
        // buffer boundary, and bytes that are not UTF-8 inside a string.
        let mut body = br#"{"a":1} x , {"a":,"b":2}, 73, {"s":""#.to_vec();
        body.extend_from_slice(b"\xff\xfe\"}, 7\xff, {\"ok\":true}]");
        assert_eq!(
            read::<Object>(&body).unwrap(),
            [
                r#"-{"a":1} x"#,
                r#"-{"a":,"b":2}"#,
                "-73",
                "-{\"s\":\"\u{fffd}\u{fffd}\"}",
                "-7\u{fffd}",
                r#"+{"ok":true}"#,
            ]
        );
    }

    #[test]
    fn a_bad_byte_after_a_value_does_not_make_the_reader_take_in_the_file() {
        struct Counting<'a>(&'a [u8], &'a std::cell::Cell<usize>);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.set(self.1.get() + n);
                Ok(n)
            }
        }
        let mut body = b"7\xff".to_vec();
        while body.len() < 4 * CHUNK {
            body.extend_from_slice(b", 1");
        }
        body.push(b']');
        let read = std::cell::Cell::new(0);
        let mut at_first = None;
        for_each_element::<_, Value>(Counting(&body, &read), |_| {
            at_first.get_or_insert(read.get());
        })
        .unwrap();
        assert!(at_first.unwrap() <= 2 * CHUNK, "{at_first:?}");
    }

    #[test]
    fn the_array_itself_must_be_well_formed() {
        for bad in [
            &b"{\"a\":1}"[..],
            b"{\"a\":1},",
            b"1,,2]",
            b",1]",
            b"1] x",
            b"}]",
            b"{\"a\":\"]",
            b"[1,2",
            b"\"\\",
        ] {
            assert!(
                read::<Value>(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
            assert!(
                read::<Object>(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_element_longer_than_the_buffer_is_read_whole() {
        let long = "x".repeat(3 * CHUNK + 7);
        let body = format!(r#"{{"s":"{long}"}}, 1]"#);
        let mut got = Vec::new();
        for_each_element::<_, Object>(body.as_bytes(), |e| {
            got.push(matches!(e, Element::Parsed(ref o) if o["s"] == long.as_str()));
        })
        .unwrap();
        assert_eq!(got, [true, false]);
    }

    #[test]
    fn element_end_follows_strings_and_nesting_only() {
        assert_eq!(element_end(br#"{"a":"}]\","} ,"#), Ok(Some(13)));
        assert_eq!(element_end(b"[1,[2]] ]"), Ok(Some(7)));
        assert_eq!(element_end(b"7 ,"), Ok(Some(1)));
        assert_eq!(element_end(br#"{"a":"\"#), Ok(None));
        assert_eq!(element_end(b"{\"a\":[1"), Ok(None));
        assert!(element_end(b",").is_err());
        assert!(element_end(b"}").is_err());
    }
}
