//! Oracles for the request-path, reference and range fuzz targets (SECURITY.md §4). Each
//! `check_*` takes the raw fuzz input and panics on a violated property.

use dockerproxy_core::range::{RangeDecision, content_range, decide};
use dockerproxy_core::reference::{Digest, MAX_NAME_LEN, MAX_TAG_LEN, Name, Reference, Tag};
use dockerproxy_core::request::{Classified, RegistryRequest, classify};

/// `classify` on arbitrary UTF-8: never panics; every name it returns re-parses to itself;
/// paths with NUL, non-ASCII, an encoded `/` or a dot segment are always refused.
pub fn check_classify(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let result = classify(path);
    let lower = path.to_ascii_lowercase();
    let must_fail = path.contains('\0')
        || !path.is_ascii()
        || lower.contains("%2f")
        || lower.contains("%00")
        || path.split('/').any(|s| s == "." || s == "..");
    if must_fail {
        assert!(result.is_err(), "accepted {path:?}: {result:?}");
    }
    match &result {
        Ok(Classified::Registry(r)) => {
            if let Some(name) = r.name() {
                assert_eq!(Name::parse(name.as_str()).as_ref(), Some(name), "{path:?}");
                assert!(name.as_str().len() <= MAX_NAME_LEN);
            }
            match r {
                RegistryRequest::Manifest { reference, .. } => {
                    let printed = reference.to_string();
                    assert_eq!(
                        Reference::parse(&printed).as_ref(),
                        Ok(reference),
                        "{path:?}"
                    );
                }
                RegistryRequest::Blob { digest, .. }
                | RegistryRequest::Referrers { digest, .. } => {
                    assert_eq!(Digest::parse(&digest.to_string()).as_ref(), Ok(digest));
                }
                _ => {}
            }
        }
        Ok(Classified::Root) => assert_eq!(path, "/"),
        Ok(Classified::Other) => {}
        Err(e) => assert_eq!(e.status.as_u16(), 400, "{path:?}"),
    }
}

/// Name, tag, digest and reference parsers: an accepted value prints back as the input and
/// stays within the grammar's alphabet and limits; a digest's storage path stays relative and
/// has no dot segment.
pub fn check_reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(n) = Name::parse(s) {
        assert_eq!(n.as_str(), s);
        assert!(s.len() <= MAX_NAME_LEN);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        );
        assert!(!s.starts_with('/') && !s.ends_with('/') && !s.contains("//"));
    }
    if let Some(t) = Tag::parse(s) {
        assert_eq!(t.as_str(), s);
        assert!(!s.is_empty() && s.len() <= MAX_TAG_LEN);
        assert!(!s.starts_with(['.', '-']));
    }
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex().len(), d.algorithm().hex_len());
        let path = d.storage_path();
        assert!(path.starts_with("blobs/") && !path.contains(".."), "{path}");
        assert!(path.ends_with(d.hex()));
    }
    match Reference::parse(s) {
        Ok(r) => {
            assert_eq!(r.to_string(), s);
            assert_eq!(matches!(r, Reference::Digest(_)), s.contains(':'));
        }
        Err(_) => assert!(Tag::parse(s).is_none() || s.contains(':')),
    }
}

/// Splits a range fuzz input: first line = decimal size (or, if not a number, its length),
/// the rest = the header bytes. Without a newline, the whole input is the header on 11 bytes.
pub fn range_input(data: &[u8]) -> (u64, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let (first, rest) = (&data[..i], &data[i + 1..]);
            let size = std::str::from_utf8(first)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(first.len() as u64);
            (size, rest)
        }
        None => (11, data),
    }
}

/// `decide` agrees with [`range_oracle`]; a partial range lies inside the body and its
/// `Content-Range` is consistent.
pub fn check_range(data: &[u8]) {
    let (size, header) = range_input(data);
    let got = decide(Some(header), size);
    assert_eq!(
        got,
        range_oracle(header, size),
        "{:?} on {size}",
        String::from_utf8_lossy(header)
    );
    if let RangeDecision::Partial { start, end } = got {
        assert!(start <= end && end < size);
        assert_eq!(
            content_range(start, end, size),
            format!("bytes {start}-{end}/{size}")
        );
    }
    assert_eq!(decide(None, size), RangeDecision::Full);
}

/// An independent version of the range contract, in 128-bit arithmetic.
pub fn range_oracle(header: &[u8], size: u64) -> RangeDecision {
    let Ok(h) = std::str::from_utf8(header) else {
        return RangeDecision::Full;
    };
    let mut parts = h.splitn(2, '=');
    let (Some(unit), Some(set)) = (parts.next(), parts.next()) else {
        return RangeDecision::Full;
    };
    if !unit.trim_matches([' ', '\t']).eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeDecision::Full;
    }
    let mut ends = set.splitn(2, '-');
    let (Some(a), Some(b)) = (ends.next(), ends.next()) else {
        return RangeDecision::Full;
    };
    let value = |t: &str| -> Result<Option<i128>, ()> {
        let t = t.trim_matches([' ', '\t']);
        if t.is_empty() {
            Ok(None)
        } else if t.bytes().all(|c| c.is_ascii_digit()) && t.trim_start_matches('0').len() <= 20 {
            let v: i128 = t.parse().map_err(|_| ())?;
            if v > i128::from(u64::MAX) {
                Err(())
            } else {
                Ok(Some(v))
            }
        } else {
            Err(())
        }
    };
    let (Ok(a), Ok(b)) = (value(a), value(b)) else {
        return RangeDecision::Full;
    };
    let size = i128::from(size);
    let (start, end) = match (a, b) {
        (None, None) => return RangeDecision::Full,
        (Some(a), Some(b)) if a > b => return RangeDecision::Full,
        (Some(a), Some(b)) => (a, b.min(size - 1)),
        (Some(a), None) => (a, size - 1),
        (None, Some(n)) => (size - n.min(size), size - 1),
    };
    if start >= size || start > end {
        RangeDecision::Unsatisfiable
    } else {
        RangeDecision::Partial {
            start: start as u64,
            end: end as u64,
        }
    }
}
