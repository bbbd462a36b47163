use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::{AUDIENCE_RELAY, KeyPair, sign};

static KEY_A: LazyLock<KeyPair> = LazyLock::new(|| KeyPair::generate().expect("generate key A"));
static KEY_B: LazyLock<KeyPair> = LazyLock::new(|| KeyPair::generate().expect("generate key B"));

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit i64")
}

fn claims(iss: &str, exp_in: i64) -> Claims {
    let now = now();
    Claims {
        iss: iss.into(),
        aud: vec![AUDIENCE_RELAY.into()],
        sub: "acme".into(),
        client_id: "acme".into(),
        tenant: Some("acme".into()),
        tenant_id: None,
        secret_id: None,
        scope: "connector".into(),
        iat: now.min(now + exp_in) - 60,
        nbf: now.min(now + exp_in) - 60,
        exp: now + exp_in,
        jti: "jti-1".into(),
    }
}

fn jwks(keys: &[&KeyPair]) -> Jwks {
    Jwks {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    }
}

fn fixed(keys: &[&KeyPair]) -> Validator {
    Validator::from_jwks("http://idp", AUDIENCE_RELAY, &jwks(keys))
}

fn reason(result: Result<Claims, TokenError>) -> String {
    match result {
        Err(TokenError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn signed_token_roundtrips() {
    let issued = claims("http://idp", 3600);
    let token = sign(&KEY_A, &issued).expect("sign");
    let claims = fixed(&[&KEY_A]).validate(&token).await.expect("valid");
    assert_eq!(claims, issued);
    assert!(claims.has_scope("connector"));
}

#[tokio::test]
async fn tampered_token_is_rejected() {
    let token = sign(&KEY_A, &claims("http://idp", 3600)).expect("sign");
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    payload["tenant"] = "other".into();
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("json"));
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(
        reason(fixed(&[&KEY_A]).validate(&forged).await),
        "bad signature"
    );
    assert_eq!(
        reason(fixed(&[&KEY_A]).validate("not.a.token").await),
        "malformed token"
    );
}

#[tokio::test]
async fn expiry_honours_the_leeway() {
    let validator = fixed(&[&KEY_A]);
    let expired = sign(&KEY_A, &claims("http://idp", -120)).expect("sign");
    assert_eq!(reason(validator.validate(&expired).await), "expired");
    let just_expired = sign(&KEY_A, &claims("http://idp", -10)).expect("sign");
    validator
        .validate(&just_expired)
        .await
        .expect("within leeway");
}

#[tokio::test]
async fn wrong_audience_or_issuer_is_rejected() {
    let validator = fixed(&[&KEY_A]);
    let mut other_aud = claims("http://idp", 3600);
    other_aud.aud = vec!["management".into()];
    let token = sign(&KEY_A, &other_aud).expect("sign");
    assert_eq!(reason(validator.validate(&token).await), "wrong audience");

    let token = sign(&KEY_A, &claims("http://evil", 3600)).expect("sign");
    assert_eq!(reason(validator.validate(&token).await), "wrong issuer");
}

#[tokio::test]
async fn other_algorithms_and_unknown_keys_are_rejected() {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(KEY_A.kid().to_owned());
    let key = jsonwebtoken::EncodingKey::from_secret(b"guessable");
    let hs256 = jsonwebtoken::encode(&header, &claims("http://idp", 3600), &key).expect("encode");
    assert_eq!(
        reason(fixed(&[&KEY_A]).validate(&hs256).await),
        "algorithm not allowed"
    );

    let token = sign(&KEY_B, &claims("http://idp", 3600)).expect("sign");
    assert_eq!(
        reason(fixed(&[&KEY_A]).validate(&token).await),
        "unknown key id"
    );
}

/// A tiny OIDC authority serving discovery and a swappable JWKS.
struct Authority {
    url: String,
    jwks: Arc<Mutex<Jwks>>,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_fetches: Arc<AtomicUsize>,
}

impl Authority {
    async fn start(initial: Jwks) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let this = Self {
            url: format!("http://{addr}"),
            jwks: Arc::new(Mutex::new(initial)),
            jwks_fetches: Arc::default(),
            discovery_fetches: Arc::default(),
        };
        let (jwks, jwks_fetches, discovery_fetches) = (
            this.jwks.clone(),
            this.jwks_fetches.clone(),
            this.discovery_fetches.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (jwks, jf, df) = (
                    jwks.clone(),
                    jwks_fetches.clone(),
                    discovery_fetches.clone(),
                );
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = match req.uri().path() {
                        "/.well-known/openid-configuration" => {
                            df.fetch_add(1, Ordering::SeqCst);
                            Some(serde_json::json!({
                                "issuer": format!("http://{addr}"),
                                "jwks_uri": format!("http://{addr}/jwks"),
                            }))
                        }
                        "/jwks" => {
                            jf.fetch_add(1, Ordering::SeqCst);
                            let jwks = jwks.lock().expect("jwks lock").clone();
                            Some(serde_json::to_value(jwks).expect("json"))
                        }
                        _ => None,
                    };
                    let response = match body {
                        Some(json) => Response::new(Full::new(Bytes::from(json.to_string()))),
                        None => {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        this
    }

    fn publish(&self, keys: &[&KeyPair]) {
        *self.jwks.lock().expect("jwks lock") = jwks(keys);
    }

    fn fetches(&self) -> (usize, usize) {
        (
            self.discovery_fetches.load(Ordering::SeqCst),
            self.jwks_fetches.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test]
async fn unknown_kid_triggers_one_refresh() {
    let authority = Authority::start(jwks(&[&KEY_A])).await;
    let validator =
        Validator::new(&authority.url, AUDIENCE_RELAY).with_min_refresh_interval(Duration::ZERO);
    let token_a = sign(&KEY_A, &claims(&authority.url, 3600)).expect("sign");
    validator.validate(&token_a).await.expect("A valid");
    validator
        .validate(&token_a)
        .await
        .expect("A valid from cache");
    assert_eq!(authority.fetches(), (1, 1));

    authority.publish(&[&KEY_A, &KEY_B]);
    let token_b = sign(&KEY_B, &claims(&authority.url, 3600)).expect("sign");
    validator
        .validate(&token_b)
        .await
        .expect("B valid after refresh");
    assert_eq!(
        authority.fetches(),
        (1, 2),
        "discovery is fetched once, the JWKS again"
    );
}

#[tokio::test]
async fn bogus_kids_cannot_hammer_the_authority() {
    let authority = Authority::start(jwks(&[&KEY_A])).await;
    let validator = Validator::new(&authority.url, AUDIENCE_RELAY);
    let token_a = sign(&KEY_A, &claims(&authority.url, 3600)).expect("sign");
    validator.validate(&token_a).await.expect("A valid");

    let token_b = sign(&KEY_B, &claims(&authority.url, 3600)).expect("sign");
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let (validator, token) = (validator.clone(), token_b.clone());
            tokio::spawn(async move { validator.validate(&token).await })
        })
        .collect();
    for attempt in flood {
        assert_eq!(reason(attempt.await.expect("task")), "unknown key id");
    }
    authority.publish(&[&KEY_A, &KEY_B]);
    assert_eq!(reason(validator.validate(&token_b).await), "unknown key id");
    assert_eq!(
        authority.fetches(),
        (1, 1),
        "no refetch within the minimum interval"
    );
}

#[tokio::test]
async fn unreachable_authority_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    drop(listener);
    let validator = Validator::new(&format!("http://{addr}"), AUDIENCE_RELAY);
    let token = sign(&KEY_A, &claims("http://idp", 3600)).expect("sign");
    let err = validator.validate(&token).await.expect_err("must fail");
    assert!(err.is_unavailable(), "{err:?}");
}
