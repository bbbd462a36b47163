//! The token endpoint, discovery and JWKS against a real listener and SQLite store.

mod common;
#[path = "flood/mod.rs"]
mod flood;
#[path = "lockout/mod.rs"]
mod lockout;

use std::time::Duration;

use common::{TestIdentity, token_claims, token_kid};
use hyper::http::StatusCode;
use relay_store::now_ms;
use relay_token::{AUDIENCE_RELAY, Validator};

fn error_of(answer: &common::Answer) -> &str {
    answer.json["error"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn issued_token_validates_against_the_running_service() {
    let id = TestIdentity::start().await;
    // Tenant names match case-insensitively; the token carries the canonical spelling.
    let answer = id.token(&id.form("acme", &id.secret)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(answer.json["expires_in"], 3600);
    assert_eq!(answer.json["scope"], "connector");
    let token = answer.json["access_token"].as_str().expect("access_token");

    let claims = Validator::new(&id.base, AUDIENCE_RELAY)
        .validate(token)
        .await
        .expect("valid token");
    assert_eq!(claims.iss, id.base);
    assert_eq!(claims.sub, "Acme");
    assert_eq!(claims.client_id, "Acme");
    assert_eq!(claims.tenant.as_deref(), Some("Acme"));
    assert!(claims.has_scope("connector") && !claims.has_scope("client"));
    assert_eq!(claims.exp - claims.iat, 3600);
    assert!(!claims.jti.is_empty());

    let jwks = id.get("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks.json["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(kids.contains(&token_kid(token).as_str()), "{kids:?}");
    assert_eq!(jwks.json["keys"][0]["alg"], "RS256");
    assert_eq!(jwks.json["keys"][0]["use"], "sig");
}

#[tokio::test]
async fn discovery_document_points_at_the_endpoints() {
    let id = TestIdentity::start().await;
    let doc = id.get("/.well-known/openid-configuration").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.json["issuer"], id.base);
    assert_eq!(
        doc.json["token_endpoint"],
        format!("{}/connect/token", id.base)
    );
    assert_eq!(
        doc.json["jwks_uri"],
        format!("{}/.well-known/jwks.json", id.base)
    );
    assert_eq!(
        doc.json["grant_types_supported"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        doc.json["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        doc.json["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
}

#[tokio::test]
async fn basic_authentication_and_the_secrets_scope() {
    let id = TestIdentity::start().await;
    let answer = id
        .token_basic(
            "Acme",
            &id.secret,
            "grant_type=client_credentials&scope=connector",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["scope"], "connector");
    let claims = token_claims(answer.json["access_token"].as_str().expect("token"));
    assert_eq!(claims["tenant"], "Acme");
    assert_eq!(claims["tenant_id"], id.tenant.id.as_str());
    let secrets = id.store.list_secrets(&id.tenant.id).await.expect("secrets");
    assert_eq!(claims["secret_id"], secrets[0].id.as_str());
}

#[tokio::test]
async fn a_secret_grants_its_own_scope_and_never_the_other() {
    let id = TestIdentity::start().await;
    let (_, client_secret) = id
        .store
        .create_secret(&id.tenant.id, None, relay_store::CredentialScope::Client)
        .await
        .expect("client secret");
    // No scope asked: the secret's own.
    let client = id.token(&id.form("Acme", &client_secret)).await;
    assert_eq!(client.status, StatusCode::OK, "{}", client.json);
    assert_eq!(client.json["scope"], "client");
    let connector = id.token(&id.form("Acme", &id.secret)).await;
    assert_eq!(connector.json["scope"], "connector");
    for (secret, scope) in [
        (client_secret.as_str(), "connector"),
        (id.secret.as_str(), "client"),
        (client_secret.as_str(), "client+connector"),
        (id.secret.as_str(), "client+connector"),
    ] {
        let form = format!("{}&scope={scope}", id.form("Acme", secret));
        let answer = id.token(&form).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{scope}: {}",
            answer.json
        );
        assert_eq!(error_of(&answer), "invalid_scope", "{scope}");
    }
}

#[tokio::test]
async fn every_bad_credential_gets_the_same_answer() {
    let id = TestIdentity::start().await;
    let wrong = id.token(&id.form("Acme", "wrong-secret")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&wrong), "invalid_client");
    assert!(wrong.headers.get("www-authenticate").is_none());

    let unknown = id.token(&id.form("nobody", &id.secret)).await;
    assert_eq!((unknown.status, &unknown.json), (wrong.status, &wrong.json));

    let basic = id
        .token_basic("Acme", "wrong-secret", "grant_type=client_credentials")
        .await;
    assert_eq!((basic.status, &basic.json), (wrong.status, &wrong.json));
    assert!(
        basic.headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic")
    );

    let (revoked, revoked_secret) = id
        .store
        .create_secret(&id.tenant.id, None, relay_store::CredentialScope::Connector)
        .await
        .expect("secret");
    assert!(
        id.store
            .revoke_secret(&id.tenant.id, &revoked.id)
            .await
            .expect("revoke")
    );
    let answer = id.token(&id.form("Acme", &revoked_secret)).await;
    assert_eq!((answer.status, &answer.json), (wrong.status, &wrong.json));

    let expires_at = now_ms() + 1_000;
    let (_, expiring_secret) = id
        .store
        .create_secret(
            &id.tenant.id,
            Some(expires_at),
            relay_store::CredentialScope::Connector,
        )
        .await
        .expect("secret");
    // Wait for the secret's expiry time itself, the condition under test.
    let remaining = u64::try_from(expires_at + 50 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(remaining)).await;
    let answer = id.token(&id.form("Acme", &expiring_secret)).await;
    assert_eq!((answer.status, &answer.json), (wrong.status, &wrong.json));

    // The original secret still works: failures changed nothing.
    assert_eq!(
        id.token(&id.form("Acme", &id.secret)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_requests_get_rfc6749_errors() {
    let id = TestIdentity::start().await;
    let secret = &id.secret;
    let cases = [
        (
            format!("grant_type=password&client_id=Acme&client_secret={secret}"),
            "unsupported_grant_type",
        ),
        (
            format!("client_id=Acme&client_secret={secret}"),
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&client_id=Acme".to_owned(),
            "invalid_request",
        ),
        (
            format!(
                "grant_type=client_credentials&grant_type=client_credentials&client_id=Acme&client_secret={secret}"
            ),
            "invalid_request",
        ),
        (
            format!(
                "grant_type=client_credentials&client_id=Acme&client_secret={secret}&scope=admin"
            ),
            "invalid_scope",
        ),
        (
            format!(
                "grant_type=client_credentials&client_id=Acme&client_secret={secret}&scope=management:write"
            ),
            "invalid_scope",
        ),
    ];
    for (form, expected) in cases {
        let answer = id.token(&form).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{form}");
        assert_eq!(error_of(&answer), expected, "{form}");
        assert!(answer.json["error_description"].is_string());
        assert!(
            !answer.json.to_string().contains(secret.as_str()),
            "never echo the secret"
        );
    }

    let json_body = id
        .request(
            hyper::http::Method::POST,
            "/connect/token",
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(
        (json_body.status, error_of(&json_body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    let both = id
        .token_basic("Acme", secret, &id.form("Acme", secret))
        .await;
    assert_eq!(
        (both.status, error_of(&both)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn health_endpoints_and_graceful_shutdown() {
    let id = TestIdentity::start().await;
    assert_eq!(id.get("/health/live").await.status, StatusCode::OK);
    assert_eq!(id.get("/health/ready").await.status, StatusCode::OK);
    id.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), id.task)
        .await
        .expect("stops within 10 s");
    result.expect("task").expect("serve returns Ok");
}
