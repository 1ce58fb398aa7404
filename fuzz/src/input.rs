//! A tiny byte reader that turns raw fuzz input into structured choices (the fuzz crate depends on
//! nothing that would do it, and the same decoding must run on stable in the corpus replay).
//! Reading past the end yields zeros and empty slices, so every input decodes to something.

/// Consumes a fuzz input from the front.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `data` from its first byte.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, 0 at the end.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// A choice in `0..n` (`n` ≥ 1).
    pub fn choose(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// A length-prefixed slice of at most `max` bytes (`max` ≤ 255).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let want = usize::from(self.byte()) % (max + 1);
        let take = want.min(self.data.len());
        let (head, rest) = self.data.split_at(take);
        self.data = rest;
        head
    }

    /// A length-prefixed string (lossy UTF-8) of at most `max` bytes.
    pub fn string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.data)
    }
}

/// Decodes an `x-www-form-urlencoded` string into pairs (`+` is a space, `%XX` a byte, invalid
/// escapes kept literally, invalid UTF-8 replaced), like `form_urlencoded::parse`.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(part: &[u8]) -> String {
        let hex = |b: u8| char::from(b).to_digit(16);
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while let Some(&b) = part.get(i) {
            match (
                b,
                part.get(i + 1).copied().and_then(hex),
                part.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.extend(u8::try_from(h * 16 + l));
                    i += 3;
                }
                (b'+', _, _) => {
                    out.push(b' ');
                    i += 1;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|f| !f.is_empty())
        .map(|f| match f.iter().position(|&b| b == b'=') {
            Some(at) => (decode(&f[..at]), decode(&f[at + 1..])),
            None => (decode(f), String::new()),
        })
        .collect()
}
