//! Which redirects a target with `follow_redirects` has followed for it.
//!
//! A redirect is followed only to the target's own origin with a path under its base path
//! that passes the same check as a client's path ([`relay_proto::path`]), or to an origin the
//! operator named in `redirect_origins` (with the client's credentials dropped), and never
//! from `https` to `http`. Everything else (another origin, a path outside the base, a
//! scheme-relative `//host/x`, a relative reference) is passed to the client as it came, so
//! the client sees the 3xx.

use http::Uri;
use http::uri::PathAndQuery;
use relay_proto::path::{EncodedSlashes, check_rest_with};

/// What a target allows its redirects.
pub struct RedirectRules {
    base: Uri,
    base_origin: Option<String>,
    /// Further origins (`scheme://host:port`) named in `redirect_origins`.
    origins: Vec<String>,
    slashes: EncodedSlashes,
}

/// One redirect the connector follows.
#[derive(Debug, PartialEq, Eq)]
pub struct Hop {
    pub uri: Uri,
    /// Whether `uri` is on the target's own origin and under its base path: only then may the
    /// client's credentials go along.
    pub to_target: bool,
}

impl RedirectRules {
    pub fn new(base: Uri, origins: Vec<String>, slashes: EncodedSlashes) -> Self {
        RedirectRules {
            base_origin: origin(&base),
            base,
            origins,
            slashes,
        }
    }

    /// The hop a `Location` of a response to `current` leads to, or `None` when the redirect
    /// goes to the client.
    pub fn follow(&self, current: &Uri, location: &str) -> Option<Hop> {
        let next = resolve(current, location)?;
        if current.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
            return None;
        }
        let next_origin = origin(&next)?;
        if self.base_origin.as_ref() == Some(&next_origin) {
            let rest = under(self.base.path(), next.path())?;
            check_rest_with(rest, self.slashes).ok()?;
            Some(Hop {
                uri: next,
                to_target: true,
            })
        } else if self.origins.contains(&next_origin) {
            check_rest_with(next.path(), self.slashes).ok()?;
            Some(Hop {
                uri: next,
                to_target: false,
            })
        } else {
            None
        }
    }
}

/// `location` resolved against `current`: an absolute `http(s)` URL without user info, or an
/// absolute path on `current`'s origin. A scheme-relative `//host/x` counts as another
/// origin and relative references are left to the client: both give `None`.
fn resolve(current: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("//") {
        return None;
    }
    if location.starts_with('/') {
        let path: PathAndQuery = location.parse().ok()?;
        let mut parts = current.clone().into_parts();
        parts.path_and_query = Some(path);
        return Uri::from_parts(parts).ok();
    }
    let uri: Uri = location.parse().ok()?;
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    matches!(uri.scheme_str(), Some("http" | "https")).then_some(uri)
}

/// The part of `path` after `base` (the target's base path), when `path` is `base` itself or
/// below it.
fn under<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(base.trim_end_matches('/'))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `scheme://host:port` of an http(s) URL, with the scheme's default port filled in.
pub fn origin(uri: &Uri) -> Option<String> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    Some(format!(
        "{scheme}://{}:{}",
        authority.host().to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default_port)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(base: &str, origins: &[&str], slashes: EncodedSlashes) -> RedirectRules {
        RedirectRules::new(
            base.parse().expect("base"),
            origins.iter().map(|o| (*o).to_owned()).collect(),
            slashes,
        )
    }

    fn follows(rules: &RedirectRules, current: &str, location: &str) -> Option<(String, bool)> {
        rules
            .follow(&current.parse().expect("current"), location)
            .map(|hop| (hop.uri.to_string(), hop.to_target))
    }

    #[test]
    fn same_origin_redirects_are_followed_only_under_the_base_path() {
        let r = rules("http://t:8080/base", &[], EncodedSlashes::Reject);
        let from = "http://t:8080/base/go";
        for (location, to) in [
            ("/base/inside", "http://t:8080/base/inside"),
            ("/base", "http://t:8080/base"),
            ("/base/", "http://t:8080/base/"),
            ("/base/a?x=1", "http://t:8080/base/a?x=1"),
            ("http://t:8080/base/x", "http://t:8080/base/x"),
            ("HTTP://T:8080/base/x", "http://T:8080/base/x"),
        ] {
            assert_eq!(
                follows(&r, from, location),
                Some((to.to_owned(), true)),
                "{location}"
            );
        }
        for location in [
            "/admin/secret.txt",
            "/basement/x",
            "/base/../admin/secret.txt",
            "/base/..;/admin/secret.txt",
            "/base/%2e%2e/admin",
            "/base/..%3b/admin",
            "/base/%c0%ae%c0%ae/admin",
            "/base/%ef%bc%8e%ef%bc%8e/admin",
            "/base/a%2Fb",
            "http://t:8080/admin/secret.txt",
            "http://t:8080/base/../admin",
            "http://t:8081/base/x",
            "https://t:8080/base/x",
            "http://evil@t:8080/base/x",
        ] {
            assert_eq!(follows(&r, from, location), None, "{location}");
        }
    }

    #[test]
    fn scheme_relative_and_relative_locations_go_to_the_client() {
        let r = rules("http://t:8080/", &[], EncodedSlashes::Reject);
        for location in [
            "//t:8080/x",
            "//evil.example/x",
            "x/y",
            "../x",
            "?page=2",
            "ftp://t:8080/x",
            "",
        ] {
            assert_eq!(
                follows(&r, "http://t:8080/a/b", location),
                None,
                "{location}"
            );
        }
        assert_eq!(
            follows(&r, "http://t:8080/a/b", "/any/where"),
            Some(("http://t:8080/any/where".to_owned(), true)),
            "a target at / has all of its origin"
        );
    }

    #[test]
    fn the_targets_slash_policy_applies_to_redirects() {
        let r = rules("http://t/api", &[], EncodedSlashes::Pass);
        assert_eq!(
            follows(&r, "http://t/api/x", "/api/projects/group%2Fproject"),
            Some(("http://t/api/projects/group%2Fproject".to_owned(), true))
        );
        assert_eq!(
            follows(&r, "http://t/api/x", "/api/a%2F..%2F..%2Fadmin"),
            None
        );
    }

    #[test]
    fn named_origins_are_followed_without_credentials_and_never_to_http() {
        let r = rules(
            "https://t/base",
            &["https://login.example:443"],
            EncodedSlashes::Reject,
        );
        assert_eq!(
            follows(&r, "https://t/base/x", "https://login.example/sso?x=1"),
            Some(("https://login.example/sso?x=1".to_owned(), false))
        );
        assert_eq!(follows(&r, "https://t/base/x", "http://t/base/y"), None);
        assert_eq!(
            follows(&r, "https://t/base/x", "https://login.example/../x"),
            None
        );
        assert_eq!(
            follows(&r, "https://t/base/x", "https://other.example/"),
            None
        );
    }
}
