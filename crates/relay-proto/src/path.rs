//! The part of a relayed path after the target (`/{mode}/{tenant}/{target}{rest}`) must never
//! leave the target's base path. A target may decode percent-escapes, treat `\` as `/`, strip
//! `;` parameters from a segment (Tomcat, Jetty and Spring read `..;x=1` as `..`), map
//! look-alike characters to ASCII and resolve dot segments, so [`check_rest_with`] refuses
//! everything that could turn into a `.` or `..` segment or a new separator that way:
//!
//! - `.`/`..` segments, raw or percent-encoded, also once their `;…` parameters (raw `;` or
//!   `%3B`) are stripped: `..;/`, `%2e%2e;x=1`, `..%3b`;
//! - raw `\`, `%5C`, `%00` and malformed escapes, under every policy;
//! - overlong UTF-8 anywhere (`%c0%ae` is a `.` to a decoder that does not check, as IIS's
//!   once was): the bytes `C0`/`C1`, and `E0`/`F0` leading an overlong form. A Latin-1 path
//!   with `À`/`Á` is refused with them; a target that wants those gets them as UTF-8;
//! - look-alike separators anywhere (fullwidth `／` U+FF0F and `＼` U+FF3C, small `﹨`
//!   U+FE68), and segments that NFKC normalisation turns into `.` or `..` (fullwidth `．`
//!   U+FF0E, small `﹒` U+FE52, leaders `․` U+2024 and `‥` U+2025, `︰` U+FE30). A
//!   look-alike dot inside a name (`ファイル．txt`) passes.
//!
//! `%2F` and `%25` depend on the target ([`EncodedSlashes`]): refused by default, passed byte
//! for byte with [`EncodedSlashes::Pass`] when the path is safe also to a target that reads
//! `%2F` as `/` and decodes a `%25` once more. What passes is appended to the base path
//! unchanged.

/// What a target does with `%2F` (an encoded `/`) and `%25` (an encoded `%`) in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// Refuse both: a target might turn them into a separator or a second escape.
    #[default]
    Reject,
    /// Pass both unchanged (GitLab-style `group%2Fproject` ids, `100%25`), as long as the
    /// path holds no dot segment even with `%2F` read as `/`, and nothing that is refused
    /// appears after a `%25` is decoded once more (`%252e%252e` stays refused).
    Pass,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `.` or `..` segment, raw or percent-encoded, possibly with `;` parameters.
    DotSegment,
    /// `%2F`, `%5C` or a raw `\`: a separator a target might honour.
    EncodedSeparator,
    /// `%00`, `%25` or a malformed escape.
    BadEscape,
    /// Overlong UTF-8, a look-alike separator, or a segment of look-alike dots.
    LookAlike,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::DotSegment => {
                "'.' and '..' path segments (also with ';' parameters) are not allowed"
            }
            PathError::EncodedSeparator => "encoded '/' and '\\' are not allowed in the path",
            PathError::BadEscape => "the path contains %00, %25 or a malformed percent-escape",
            PathError::LookAlike => {
                "overlong UTF-8 and look-alike '.', '/' or '\\' characters are not allowed in the path"
            }
        }
    }
}

/// [`check_rest_with`] under the default policy, [`EncodedSlashes::Reject`].
pub fn check_rest(rest: &str) -> Result<(), PathError> {
    check_rest_with(rest, EncodedSlashes::Reject)
}

/// [`check_rest_with`] under the most lenient policy, [`EncodedSlashes::Pass`]: for the
/// relay, which does not know a target's policy. The connector applies the target's own.
pub fn check_rest_lenient(rest: &str) -> Result<(), PathError> {
    check_rest_with(rest, EncodedSlashes::Pass)
}

/// Checks `rest` (the path after the target, starting with `/` or empty; no query) for a
/// target whose policy is `slashes`. Whatever is refused under [`EncodedSlashes::Pass`] is
/// refused under every policy, so a relay that does not know the target checks with `Pass`.
pub fn check_rest_with(rest: &str, slashes: EncodedSlashes) -> Result<(), PathError> {
    if rest.as_bytes().contains(&b'\\') {
        return Err(PathError::EncodedSeparator);
    }
    for segment in rest.split('/') {
        let once = decode_strict(segment.as_bytes())?;
        if once.contains(&b'\\') {
            return Err(PathError::EncodedSeparator);
        }
        if slashes == EncodedSlashes::Reject {
            if once.contains(&b'/') {
                return Err(PathError::EncodedSeparator);
            }
            if once.contains(&b'%') {
                return Err(PathError::BadEscape);
            }
        }
        check_decoded(&once)?;
        if once.contains(&b'%') {
            // Only `Pass` gets here: what a target that decodes once more would see.
            let twice = decode_again(&once)?;
            check_decoded(&twice)?;
        }
    }
    Ok(())
}

/// One percent-decoding of a raw segment: a malformed escape or `%00` is refused.
fn decode_strict(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let byte = raw
                .get(i + 1..i + 3)
                .and_then(hex)
                .ok_or(PathError::BadEscape)?;
            if byte == 0 {
                return Err(PathError::BadEscape);
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The second decoding a `%25` allows: what is not an escape stays as it is (`100%`), but an
/// escape may not produce a separator, a NUL or yet another `%`.
fn decode_again(once: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(once.len());
    let mut i = 0;
    while i < once.len() {
        match once
            .get(i + 1..i + 3)
            .filter(|_| once[i] == b'%')
            .and_then(hex)
        {
            Some(b'/' | b'\\') => return Err(PathError::EncodedSeparator),
            Some(0 | b'%') => return Err(PathError::BadEscape),
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(once[i]);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn hex(pair: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(pair).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(text, 16).ok()
}

/// Look-alike dots (NFKC gives `.` or `..`) as UTF-8, with what they become.
const LOOKALIKE_DOTS: [(&[u8], &[u8]); 5] = [
    ("\u{FF0E}".as_bytes(), b"."),
    ("\u{FE52}".as_bytes(), b"."),
    ("\u{2024}".as_bytes(), b"."),
    ("\u{2025}".as_bytes(), b".."),
    ("\u{FE30}".as_bytes(), b".."),
];

/// Look-alike `/` and `\` as UTF-8.
const LOOKALIKE_SEPARATORS: [&[u8]; 3] = [
    "\u{FF0F}".as_bytes(),
    "\u{FF3C}".as_bytes(),
    "\u{FE68}".as_bytes(),
];

/// Checks one decoded segment (which may hold `/` from a passed `%2F`): no overlong UTF-8,
/// no look-alike separator, and no piece that is `.` or `..` once `;…` is stripped and
/// look-alike dots are read as dots.
fn check_decoded(decoded: &[u8]) -> Result<(), PathError> {
    if overlong(decoded) || LOOKALIKE_SEPARATORS.iter().any(|s| contains(decoded, s)) {
        return Err(PathError::LookAlike);
    }
    for piece in decoded.split(|&b| b == b'/') {
        let name = piece.split(|&b| b == b';').next().unwrap_or_default();
        if name == b"." || name == b".." {
            return Err(PathError::DotSegment);
        }
        if normalised_dots(name).is_some_and(|n| n == b"." || n == b"..") {
            return Err(PathError::LookAlike);
        }
    }
    Ok(())
}

/// `name` with look-alike dots mapped to `.`, when it has any.
fn normalised_dots(name: &[u8]) -> Option<Vec<u8>> {
    if !name.iter().any(|&b| b >= 0x80) {
        return None;
    }
    let mut out = Vec::with_capacity(name.len());
    let mut rest = name;
    let mut changed = false;
    'outer: while let Some((&first, tail)) = rest.split_first() {
        for (lookalike, dots) in LOOKALIKE_DOTS {
            if let Some(after) = rest.strip_prefix(lookalike) {
                out.extend_from_slice(dots);
                rest = after;
                changed = true;
                continue 'outer;
            }
        }
        out.push(first);
        rest = tail;
    }
    changed.then_some(out)
}

/// Whether `bytes` hold an overlong UTF-8 form: `C0`/`C1` (never valid), or `E0`/`F0`
/// followed by a byte that makes the sequence overlong.
fn overlong(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        let next = bytes.get(i + 1).copied();
        matches!(b, 0xC0 | 0xC1)
            || (b == 0xE0 && next.is_some_and(|n| (0x80..0xA0).contains(&n)))
            || (b == 0xF0 && next.is_some_and(|n| (0x80..0x90).contains(&n)))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Refused under every policy.
    const ALWAYS_BAD: &[&str] = &[
        "/../admin/secret.txt",
        "/files/../admin",
        "/files/..",
        "/%2e%2e/admin",
        "/%2E%2e/admin",
        "/.%2e/admin",
        "/..%2fadmin",
        "/..%2Fadmin",
        "/a%2F..%2Fadmin",
        "/a%5c..%5cadmin",
        "/a\\..\\admin",
        "/./x",
        "/%2e/x",
        "/%252e%252e/admin",
        "/%252E%252E%252Fadmin",
        "/a%252fb",
        "/a%255cb",
        "/a%2500",
        "/a%252500",
        "/a%00b",
        "/a%zz",
        "/a%2",
        // `;` parameters: Tomcat, Jetty and Spring resolve these as `..`.
        "/..;/admin",
        "/..;x=1/admin",
        "/%2e%2e;/admin",
        "/%2e%2e;x/admin",
        "/..%3b/admin",
        "/..%3B/admin",
        "/.;/admin",
        "/a%2F..;x",
        "/..%253b/admin",
        // Overlong UTF-8 `.`, `/` and `\`.
        "/%c0%ae%c0%ae/admin",
        "/%C0%AE/admin",
        "/a%c0%afb",
        "/a%c1%9cb",
        "/%e0%80%ae%e0%80%ae/admin",
        "/%f0%80%80%ae/admin",
        "/%25c0%25ae%25c0%25ae/admin",
        // Look-alike dots that NFKC turns into `.` / `..`, and look-alike separators.
        "/%ef%bc%8e%ef%bc%8e/admin",
        "/%EF%BC%8E/admin",
        "/.%ef%bc%8e/admin",
        "/%ef%bc%8e%ef%bc%8e;x/admin",
        "/%e2%80%a5/admin",
        "/%ef%b8%b0/admin",
        "/%ef%b9%92%ef%b9%92/admin",
        "/%e2%80%a4/admin",
        "/a%ef%bc%8fb",
        "/a%ef%bc%bcb",
        "/a%ef%b9%a8b",
        "/\u{FF0E}\u{FF0E}/admin",
        "/%25ef%25bc%258e%25ef%25bc%258e/admin",
    ];

    /// Passed under every policy.
    const ALWAYS_GOOD: &[&str] = &[
        "",
        "/",
        "/a/b.c",
        "/.well-known/x",
        "/a..b/...",
        "/a%20b",
        "/%41",
        "/a//b",
        "/a;b=1/c",
        "/;x/c",
        "/...;x",
        "/file%ef%bc%8etxt",
        "/\u{30D5}\u{30A1}\u{30A4}\u{30EB}\u{FF0E}txt",
        "/caf%c3%a9",
        "/%e0%a4%85",
        "/%f0%9f%98%80",
    ];

    /// Passed only where the target passes `%2F` and `%25`.
    const PASS_ONLY: &[&str] = &[
        "/projects/group%2Fproject",
        "/projects/group%2fsub%2Fproject/issues",
        "/discount/100%25",
        "/a%25b",
        "/a%25zz",
        "/a%25",
        "/%2F",
        "/a%2F%2Fb",
        "/a%2F...%2Fb",
        "/a%25%32",
        "/a%2520b",
    ];

    #[test]
    fn refuses_escapes_from_the_base_path() {
        for bad in ALWAYS_BAD {
            for policy in [EncodedSlashes::Reject, EncodedSlashes::Pass] {
                assert!(check_rest_with(bad, policy).is_err(), "{bad} {policy:?}");
            }
        }
        for good in ALWAYS_GOOD {
            for policy in [EncodedSlashes::Reject, EncodedSlashes::Pass] {
                assert_eq!(check_rest_with(good, policy), Ok(()), "{good} {policy:?}");
            }
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_dot_segments() {
        for bad in [
            "/..;/admin",
            "/..;x=1/a",
            "/%2e%2e;/a",
            "/..%3b/a",
            "/..%3B",
        ] {
            assert_eq!(check_rest(bad), Err(PathError::DotSegment), "{bad}");
        }
    }

    #[test]
    fn overlong_utf8_and_fullwidth_dots_are_refused() {
        for bad in [
            "/%c0%ae%c0%ae/admin",
            "/%ef%bc%8e%ef%bc%8e/admin",
            "/a%ef%bc%8fb",
        ] {
            for policy in [EncodedSlashes::Reject, EncodedSlashes::Pass] {
                assert_eq!(
                    check_rest_with(bad, policy),
                    Err(PathError::LookAlike),
                    "{bad}"
                );
            }
        }
    }

    #[test]
    fn encoded_slashes_and_percents_pass_only_where_the_target_allows_them() {
        for path in PASS_ONLY {
            assert_eq!(
                check_rest_with(path, EncodedSlashes::Pass),
                Ok(()),
                "{path}"
            );
            assert!(check_rest(path).is_err(), "{path} refused by default");
        }
        assert_eq!(
            check_rest("/group%2Fproject"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(check_rest("/100%25"), Err(PathError::BadEscape));
    }

    #[test]
    fn the_policy_is_named_as_in_the_configuration() {
        #[derive(serde::Deserialize)]
        struct T {
            p: EncodedSlashes,
        }
        let pass: T = serde_json::from_str(r#"{"p":"pass"}"#).expect("pass");
        assert_eq!(pass.p, EncodedSlashes::Pass);
        let reject: T = serde_json::from_str(r#"{"p":"reject"}"#).expect("reject");
        assert_eq!(reject.p, EncodedSlashes::Reject);
        assert!(serde_json::from_str::<T>(r#"{"p":"maybe"}"#).is_err());
        assert_eq!(EncodedSlashes::default(), EncodedSlashes::Reject);
    }

    fn percent_decode(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes
                .get(i + 1..i + 3)
                .filter(|_| bytes[i] == b'%')
                .and_then(hex)
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// What the most lenient target might do with a path: percent-decode `decodings` times,
    /// read overlong and look-alike forms as ASCII, treat `\` as `/`, strip `;` parameters
    /// from every segment, resolve dot segments.
    fn resolve(path: &str, decodings: usize) -> String {
        let mut bytes = path.as_bytes().to_vec();
        for _ in 0..decodings {
            bytes = percent_decode(&bytes);
        }
        // A careless UTF-8 decoder reads overlong forms as the ASCII they encode.
        for (from, to) in [
            (&[0xC0, 0xAE][..], b'.'),
            (&[0xC0, 0xAF][..], b'/'),
            (&[0xC1, 0x9C][..], b'\\'),
            (&[0xE0, 0x80, 0xAE][..], b'.'),
            (&[0xE0, 0x80, 0xAF][..], b'/'),
            (&[0xF0, 0x80, 0x80, 0xAE][..], b'.'),
        ] {
            let mut mapped = Vec::with_capacity(bytes.len());
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix(from) {
                    mapped.push(to);
                    rest = after;
                } else {
                    mapped.push(rest[0]);
                    rest = &rest[1..];
                }
            }
            bytes = mapped;
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        for (from, to) in [
            ("\u{FF0E}", "."),
            ("\u{FE52}", "."),
            ("\u{2024}", "."),
            ("\u{2025}", ".."),
            ("\u{FE30}", ".."),
            ("\u{FF0F}", "/"),
            ("\u{FF3C}", "/"),
            ("\u{FE68}", "/"),
            ("\\", "/"),
        ] {
            text = text.replace(from, to);
        }
        let mut out: Vec<&str> = Vec::new();
        for segment in text.split('/') {
            match segment.split(';').next().unwrap_or_default() {
                "." => {}
                ".." => {
                    out.pop();
                }
                _ => out.push(segment),
            }
        }
        out.join("/")
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just(".%2e".to_owned()),
            Just("%2f".to_owned()),
            Just("%2F".to_owned()),
            Just("%5C".to_owned()),
            Just("\\".to_owned()),
            Just("%25".to_owned()),
            Just("%252e".to_owned()),
            Just("%252f".to_owned()),
            Just("%253b".to_owned()),
            Just("%".to_owned()),
            Just(";".to_owned()),
            Just("%3b".to_owned()),
            Just("%3B".to_owned()),
            Just("%c0%ae".to_owned()),
            Just("%c0%af".to_owned()),
            Just("%e0%80%ae".to_owned()),
            Just("%ef%bc%8e".to_owned()),
            Just("%ef%bc%8f".to_owned()),
            Just("%e2%80%a5".to_owned()),
            Just("\u{FF0E}".to_owned()),
            "[a-z.;%0-9A-F]{0,6}",
        ]
    }

    fn rest_of(parts: &[String], separators: &[&str]) -> String {
        let mut rest = String::new();
        for (i, part) in parts.iter().enumerate() {
            // The relay's `rest` always starts with `/`.
            let separator = if i == 0 {
                "/"
            } else {
                separators.get(i).copied().unwrap_or("/")
            };
            rest.push_str(separator);
            rest.push_str(part);
        }
        rest
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever a client sends, a path that passes stays under the base path after a
        /// target decoded (twice, where `%25` passes) and resolved it.
        #[test]
        fn nothing_that_passes_leaves_the_base_path(
            parts in proptest::collection::vec(segment(), 0..8),
            separators in proptest::collection::vec(prop_oneof![Just("/"), Just("")], 0..8),
            pass in any::<bool>(),
        ) {
            let rest = rest_of(&parts, &separators);
            let policy = if pass { EncodedSlashes::Pass } else { EncodedSlashes::Reject };
            if check_rest_with(&rest, policy).is_ok() {
                for decodings in 1..=2 {
                    let resolved = resolve(&format!("/base{rest}"), decodings);
                    prop_assert!(
                        resolved == "/base" || resolved.starts_with("/base/"),
                        "{rest} ({policy:?}, decoded {decodings}x) resolved to {resolved}"
                    );
                }
            }
        }

        /// `Reject` never passes what `Pass` refuses, so the relay (checking with `Pass`)
        /// refuses everything that no target may get.
        #[test]
        fn reject_is_stricter_than_pass(
            parts in proptest::collection::vec(segment(), 0..8),
            separators in proptest::collection::vec(prop_oneof![Just("/"), Just("")], 0..8),
        ) {
            let rest = rest_of(&parts, &separators);
            if check_rest_with(&rest, EncodedSlashes::Pass).is_err() {
                prop_assert!(check_rest(&rest).is_err(), "{rest}");
            }
        }
    }
}
