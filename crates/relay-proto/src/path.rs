//! The part of a relayed path after the target (`/{mode}/{tenant}/{target}{rest}`) must never
//! leave the target's base path. A target may decode percent-escapes, treat `\` as `/` and
//! resolve dot segments, so [`check_rest`] refuses everything that could turn into a `.` or
//! `..` segment or a new separator after one decoding: raw or percent-encoded `.`/`..`
//! segments, encoded `/` and `\`, raw `\`, a NUL byte, and a `%25` escape (a second decoding
//! could produce any of these). What passes is appended to the base path unchanged.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `.` or `..` segment, raw or percent-encoded.
    DotSegment,
    /// `%2F`, `%5C` or a raw `\`: a separator a target might honour.
    EncodedSeparator,
    /// `%00`, `%25` or a malformed escape.
    BadEscape,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::DotSegment => "'.' and '..' path segments are not allowed",
            PathError::EncodedSeparator => "encoded '/' and '\\' are not allowed in the path",
            PathError::BadEscape => "the path contains %00, %25 or a malformed percent-escape",
        }
    }
}

/// Checks `rest` (the path after the target, starting with `/` or empty; no query).
pub fn check_rest(rest: &str) -> Result<(), PathError> {
    let bytes = rest.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(PathError::EncodedSeparator);
    }
    for segment in rest.split('/') {
        let mut decoded = Vec::with_capacity(segment.len());
        let mut i = 0;
        let raw = segment.as_bytes();
        while i < raw.len() {
            if raw[i] == b'%' {
                let byte = raw
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 | b'%' => return Err(PathError::BadEscape),
                    _ => decoded.push(byte),
                }
                i += 3;
            } else {
                decoded.push(raw[i]);
                i += 1;
            }
        }
        if decoded == b"." || decoded == b".." {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_escapes_from_the_base_path() {
        for bad in [
            "/../admin/secret.txt",
            "/files/../admin",
            "/files/..",
            "/%2e%2e/admin",
            "/%2E%2e/admin",
            "/.%2e/admin",
            "/..%2fadmin",
            "/..%2Fadmin",
            "/a%5c..%5cadmin",
            "/a\\..\\admin",
            "/./x",
            "/%2e/x",
            "/%252e%252e/admin",
            "/a%00b",
            "/a%zz",
            "/a%2",
        ] {
            assert!(check_rest(bad).is_err(), "{bad}");
        }
        for good in [
            "",
            "/",
            "/a/b.c",
            "/.well-known/x",
            "/a..b/...",
            "/a%20b",
            "/%41",
            "/a//b",
        ] {
            assert_eq!(check_rest(good), Ok(()), "{good}");
        }
    }

    /// What a lenient target might do with a path: percent-decode (once), treat `\` as `/`,
    /// resolve dot segments.
    fn resolve(path: &str) -> String {
        let mut decoded = Vec::new();
        let raw = path.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let byte = raw
                .get(i + 1..i + 3)
                .filter(|_| raw[i] == b'%')
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match byte {
                Some(b) => {
                    decoded.push(b);
                    i += 3;
                }
                None => {
                    decoded.push(raw[i]);
                    i += 1;
                }
            }
        }
        let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        for segment in decoded.split('/') {
            match segment {
                "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
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
            Just("%5C".to_owned()),
            Just("\\".to_owned()),
            Just("%25".to_owned()),
            Just("%".to_owned()),
            "[a-z.%0-9A-F]{0,6}",
        ]
    }

    proptest! {
        /// Whatever a client sends, a path that passes stays under the base path after a
        /// target decoded and resolved it.
        #[test]
        fn nothing_that_passes_leaves_the_base_path(
            parts in proptest::collection::vec(segment(), 0..8),
            separators in proptest::collection::vec(prop_oneof![Just("/"), Just("")], 0..8),
        ) {
            let mut rest = String::new();
            for (i, part) in parts.iter().enumerate() {
                // The relay's `rest` always starts with `/`.
                let separator = if i == 0 { "/" } else { separators.get(i).copied().unwrap_or("/") };
                rest.push_str(separator);
                rest.push_str(part);
            }
            if check_rest(&rest).is_ok() {
                let resolved = resolve(&format!("/base{rest}"));
                prop_assert!(
                    resolved == "/base" || resolved.starts_with("/base/"),
                    "{rest} resolved to {resolved}"
                );
            }
        }
    }
}
