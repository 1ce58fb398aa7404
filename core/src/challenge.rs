//! `WWW-Authenticate` parsing and rewriting (RFC 9110 §11.6.1; COMPAT.md §4.1; SECURITY.md §2.7).
//!
//! [`parse`] reads every challenge of one or more header values:
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param       = token BWS "=" BWS ( token / quoted-string )
//! ```
//!
//! A value is refused as a whole (never half-parsed into a realm) when it is longer than
//! [`MAX_CHALLENGE_LEN`], holds a byte outside visible ASCII, SP and HTAB (so never CR or LF),
//! repeats a parameter name within one challenge, or breaks the grammar. A `token68` challenge
//! (`Negotiate abc==`) is kept as a single parameter with an empty name.
//!
//! [`rewrite`] points a Bearer challenge at the proxy's `/v2/auth`; [`Challenge::to_header_value`]
//! serialises with every value quoted, so the output never holds CR, LF or an unescaped quote.
//! This module does not decide the realm (the exchange does, from configuration only).

/// Largest header value considered; longer values are unusable.
pub const MAX_CHALLENGE_LEN: usize = 8 * 1024;

/// Largest sum of all header values given to one [`parse`] call.
pub const MAX_CHALLENGE_TOTAL_LEN: usize = 4 * MAX_CHALLENGE_LEN;

/// One challenge: a scheme and its parameters in upstream order (names lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Auth scheme as sent (`Bearer`, `Basic`); compare case-insensitively.
    pub scheme: String,
    /// `(lower-case name, unescaped value)` in order.
    pub params: Vec<(String, String)>,
}

/// Why a header value was unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeError(pub &'static str);

impl core::fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unusable WWW-Authenticate: {}", self.0)
    }
}

impl std::error::Error for ChallengeError {}

impl Challenge {
    /// The value of a parameter (name compared case-insensitively).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// True for the `Bearer` scheme.
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }
    /// The `token68` of a challenge such as `Negotiate abc==`, stored as the one parameter with
    /// an empty name.
    pub fn token68(&self) -> Option<&str> {
        match self.params.as_slice() {
            [(name, value)] if name.is_empty() => Some(value),
            _ => None,
        }
    }
    /// Serialises as a header value: `Scheme k="v",k2="v2"` with `"` and `\` escaped.
    ///
    /// Defensive against hand-built values: characters that cannot appear in a header (CR, LF,
    /// other controls, non-ASCII) are dropped, as are scheme and name characters outside `tchar`,
    /// so the result always parses back.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(self.scheme.len() + 16 * self.params.len());
        out.extend(self.scheme.chars().filter(|&c| is_tchar_char(c)));
        if let Some(t68) = self.token68() {
            let t68: String = t68
                .chars()
                .filter(|&c| is_token68_char(c) || c == '=')
                .collect();
            if !t68.is_empty() {
                out.push(' ');
                out.push_str(&t68);
            }
            return out;
        }
        let mut first = true;
        for (name, value) in &self.params {
            let name: String = name.chars().filter(|&c| is_tchar_char(c)).collect();
            if name.is_empty() {
                // An empty name only means something as a lone token68.
                continue;
            }
            out.push(if first { ' ' } else { ',' });
            first = false;
            out.push_str(&name);
            out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '"' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    ' ' | '\t' | '!'..='~' => out.push(c),
                    // CR, LF, other controls and non-ASCII can never reach the header.
                    _ => {}
                }
            }
            out.push('"');
        }
        out
    }
}

/// Parses every challenge in one or more header values. A malformed value is unusable as a
/// whole (`Err`), never half-parsed.
pub fn parse(values: &[&[u8]]) -> Result<Vec<Challenge>, ChallengeError> {
    let mut total = 0usize;
    let mut out = Vec::new();
    for value in values {
        total = total.saturating_add(value.len());
        if value.len() > MAX_CHALLENGE_LEN || total > MAX_CHALLENGE_TOTAL_LEN {
            return Err(ChallengeError("header value too long"));
        }
        if !value
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
        {
            return Err(ChallengeError("byte outside visible ASCII"));
        }
        Parser { s: value, pos: 0 }.challenges(&mut out)?;
    }
    Ok(out)
}

/// Rewrites a Bearer challenge: `realm` becomes `new_realm` (placed first), every other
/// parameter kept in order. Non-Bearer challenges and Bearer ones without a realm come back
/// unchanged.
pub fn rewrite(challenge: &Challenge, new_realm: &str) -> Challenge {
    if !challenge.is_bearer() || challenge.param("realm").is_none() {
        return challenge.clone();
    }
    let mut params = Vec::with_capacity(challenge.params.len());
    params.push(("realm".to_owned(), new_realm.to_owned()));
    params.extend(
        challenge
            .params
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("realm"))
            .cloned(),
    );
    Challenge {
        scheme: challenge.scheme.clone(),
        params,
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_tchar_char(c: char) -> bool {
    u8::try_from(c).is_ok_and(is_tchar)
}

/// `token68` characters before its trailing `=` run (RFC 9110 §11.2).
fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

fn is_token68_char(c: char) -> bool {
    u8::try_from(c).is_ok_and(is_token68)
}

/// A cursor over one header value, already checked to be visible ASCII, SP and HTAB.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Skips OWS and empty list elements (`, ,`), as the `#rule` allows.
    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        // The whole value was checked to be ASCII, so this slice is UTF-8.
        core::str::from_utf8(self.s.get(start..self.pos)?)
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// True when the text at the cursor is `token BWS "=" BWS` followed by a possible value (not
    /// the end, `,` or `=`): an auth-param rather than a new challenge or a token68 such as
    /// `abc=`. The cursor does not move.
    fn at_auth_param(&self) -> bool {
        let mut p = self.pos;
        let start = p;
        while self.s.get(p).copied().is_some_and(is_tchar) {
            p += 1;
        }
        if p == start {
            return false;
        }
        while matches!(self.s.get(p), Some(b' ' | b'\t')) {
            p += 1;
        }
        if self.s.get(p) != Some(&b'=') {
            return false;
        }
        p += 1;
        while matches!(self.s.get(p), Some(b' ' | b'\t')) {
            p += 1;
        }
        !matches!(self.s.get(p), None | Some(b',' | b'='))
    }

    /// Tries `token68 OWS (end / ",")` at the cursor; on success consumes the token68.
    fn token68(&mut self) -> Option<String> {
        let start = self.pos;
        let mut p = start;
        while self.s.get(p).copied().is_some_and(is_token68) {
            p += 1;
        }
        if p == start {
            return None;
        }
        while self.s.get(p) == Some(&b'=') {
            p += 1;
        }
        let end = p;
        while matches!(self.s.get(p), Some(b' ' | b'\t')) {
            p += 1;
        }
        if p < self.s.len() && self.s.get(p) != Some(&b',') {
            return None;
        }
        let t = core::str::from_utf8(self.s.get(start..end)?)
            .ok()?
            .to_owned();
        self.pos = end;
        Some(t)
    }

    fn quoted_string(&mut self) -> Result<String, ChallengeError> {
        // Caller saw the opening quote.
        self.pos += 1;
        let mut v = String::new();
        loop {
            match self.peek() {
                None => return Err(ChallengeError("unterminated quoted-string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(v);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) => v.push(char::from(b)),
                        None => return Err(ChallengeError("dangling backslash")),
                    }
                    self.pos += 1;
                }
                Some(b) => {
                    v.push(char::from(b));
                    self.pos += 1;
                }
            }
        }
    }

    fn challenges(&mut self, out: &mut Vec<Challenge>) -> Result<(), ChallengeError> {
        self.skip_separators();
        while !self.at_end() {
            let scheme = self
                .token()
                .ok_or(ChallengeError("expected an auth-scheme"))?
                .to_owned();
            let mut ch = Challenge {
                scheme,
                params: Vec::new(),
            };
            let had_space = matches!(self.peek(), Some(b' ' | b'\t'));
            self.skip_ows();
            if self.at_end() || self.peek() == Some(b',') {
                out.push(ch);
                self.skip_separators();
                continue;
            }
            if !had_space {
                return Err(ChallengeError("expected a space after the auth-scheme"));
            }
            if !self.at_auth_param() {
                let t68 = self
                    .token68()
                    .ok_or(ChallengeError("expected token68 or auth-param"))?;
                ch.params.push((String::new(), t68));
                out.push(ch);
                self.skip_separators();
                continue;
            }
            self.params(&mut ch)?;
            out.push(ch);
        }
        Ok(())
    }

    /// Reads `auth-param *( OWS "," OWS auth-param )` and stops before the next challenge.
    fn params(&mut self, ch: &mut Challenge) -> Result<(), ChallengeError> {
        loop {
            let name = self
                .token()
                .ok_or(ChallengeError("expected a parameter name"))?
                .to_ascii_lowercase();
            self.skip_ows();
            if self.peek() != Some(b'=') {
                return Err(ChallengeError("expected '='"));
            }
            self.pos += 1;
            self.skip_ows();
            let value = match self.peek() {
                Some(b'"') => self.quoted_string()?,
                _ => self
                    .token()
                    .ok_or(ChallengeError("expected a parameter value"))?
                    .to_owned(),
            };
            if ch.params.iter().any(|(n, _)| *n == name) {
                return Err(ChallengeError("duplicate parameter"));
            }
            ch.params.push((name, value));
            self.skip_ows();
            match self.peek() {
                None => return Ok(()),
                Some(b',') => {
                    self.skip_separators();
                    if self.at_end() || !self.at_auth_param() {
                        // The end, or the next challenge's scheme.
                        return Ok(());
                    }
                }
                Some(_) => return Err(ChallengeError("expected ',' after a parameter")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Vec<Challenge>, ChallengeError> {
        parse(&[s.as_bytes()])
    }

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.to_owned(),
            params: params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn docker_hub_challenge() {
        let got = p(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#)
            .unwrap();
        assert_eq!(
            got,
            vec![ch(
                "Bearer",
                &[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io")
                ]
            )]
        );
    }

    #[test]
    fn names_lower_cased_tokens_and_bws() {
        let got = p("Bearer Realm = x , SERVICE=\"a b\"").unwrap();
        assert_eq!(
            got,
            vec![ch("Bearer", &[("realm", "x"), ("service", "a b")])]
        );
    }

    #[test]
    fn quoted_pairs_unescaped() {
        let got = p(r#"Bearer realm="a\"b\\c\d""#).unwrap();
        assert_eq!(got[0].param("realm"), Some(r#"a"b\cd"#));
    }

    #[test]
    fn several_challenges_one_line() {
        let got =
            p(r#"Basic realm="r", Bearer realm="x",scope="s", Negotiate abc==, NTLM"#).unwrap();
        assert_eq!(
            got,
            vec![
                ch("Basic", &[("realm", "r")]),
                ch("Bearer", &[("realm", "x"), ("scope", "s")]),
                ch("Negotiate", &[("", "abc==")]),
                ch("NTLM", &[]),
            ]
        );
        assert_eq!(got[2].token68(), Some("abc=="));
        assert_eq!(got[2].to_header_value(), "Negotiate abc==");
        // `abc=` is a token68, not a parameter without a value.
        assert_eq!(
            p("Negotiate abc=, Basic realm=x").unwrap()[0],
            ch("Negotiate", &[("", "abc=")])
        );
    }

    #[test]
    fn empty_list_elements_and_empty_value() {
        assert_eq!(p("").unwrap(), vec![]);
        assert_eq!(
            p(" , ,Basic realm=x,, ").unwrap(),
            vec![ch("Basic", &[("realm", "x")])]
        );
    }

    #[test]
    fn malformed_is_refused_whole() {
        for bad in [
            "Bearer realm=\"x",
            "Bearer realm=\"x\\",
            "Bearer realm=x, y=",
            "Bearer realm=x service=y",
            "Bearer realm=x,realm=y",
            "Bearer realm=x,REALM=y",
            "Bearer=x",
            "\"Bearer\" realm=x",
            "Bearer realm=a\"b\"",
            "Bearer realm=x, =y",
            "Negotiate abc== def",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bad_bytes_and_length_refused() {
        assert!(parse(&[b"Bearer realm=\"a\r\nX: y\""]).is_err());
        assert!(parse(&[b"Bearer realm=\"\xc3\xa9\""]).is_err());
        assert!(parse(&[b"Bearer realm=\"\0\""]).is_err());
        let long = format!("Bearer realm=\"{}\"", "a".repeat(MAX_CHALLENGE_LEN));
        assert!(parse(&[long.as_bytes()]).is_err());
    }

    #[test]
    fn lines_concatenate() {
        let got = parse(&[b"Basic realm=x", b"Bearer realm=y"]).unwrap();
        assert_eq!(
            got,
            vec![
                ch("Basic", &[("realm", "x")]),
                ch("Bearer", &[("realm", "y")])
            ]
        );
    }

    #[test]
    fn serialise_quotes_and_escapes() {
        let c = ch("Bearer", &[("realm", "a\"b\\c"), ("service", "s")]);
        assert_eq!(c.to_header_value(), r#"Bearer realm="a\"b\\c",service="s""#);
        assert_eq!(ch("Basic", &[]).to_header_value(), "Basic");
    }

    #[test]
    fn serialise_strips_cr_lf() {
        let c = ch("Bearer", &[("realm", "https://x/\r\nSet-Cookie: a=b")]);
        let v = c.to_header_value();
        assert_eq!(v, r#"Bearer realm="https://x/Set-Cookie: a=b""#);
    }

    #[test]
    fn rewrite_puts_realm_first() {
        let c = ch(
            "Bearer",
            &[
                ("service", "svc"),
                ("realm", "https://t/token"),
                ("scope", "x"),
            ],
        );
        let r = rewrite(&c, "https://p/v2/auth");
        assert_eq!(
            r,
            ch(
                "Bearer",
                &[
                    ("realm", "https://p/v2/auth"),
                    ("service", "svc"),
                    ("scope", "x")
                ]
            )
        );
        assert_eq!(rewrite(&r, "https://p/v2/auth"), r);
    }

    #[test]
    fn rewrite_leaves_others() {
        let basic = ch("Basic", &[("realm", "x")]);
        assert_eq!(rewrite(&basic, "https://p/v2/auth"), basic);
        let no_realm = ch("Bearer", &[("service", "x")]);
        assert_eq!(rewrite(&no_realm, "https://p/v2/auth"), no_realm);
    }
}
