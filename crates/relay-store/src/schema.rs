//! Diesel table definitions, shared by both backends. Mirrors `migrations/*/up.sql`.

diesel::table! {
    tenants (id) {
        id -> Text,
        name -> Text,
        name_lower -> Text,
        display_name -> Nullable<Text>,
        description -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    tenant_configs (tenant_id) {
        tenant_id -> Text,
        keep_alive_interval_ms -> Nullable<BigInt>,
        reconnect_min_delay_ms -> Nullable<BigInt>,
        reconnect_max_delay_ms -> Nullable<BigInt>,
        request_expiry_ms -> Nullable<BigInt>,
        max_body_bytes -> Nullable<BigInt>,
        concurrency_limit -> Nullable<BigInt>,
        ack_mode -> Nullable<Text>,
        tracing -> Nullable<Bool>,
        require_client_auth -> Nullable<Bool>,
        updated_at -> BigInt,
        max_tunnels -> Nullable<BigInt>,
    }
}

diesel::table! {
    client_secrets (id) {
        id -> Text,
        tenant_id -> Text,
        hash -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
        scope -> Text,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        algorithm -> Text,
        private_pem -> Text,
        public_jwk -> Text,
        created_at -> BigInt,
        activates_at -> BigInt,
        retires_at -> Nullable<BigInt>,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    origins (id) {
        id -> Text,
        started_at -> BigInt,
        last_heartbeat_at -> BigInt,
        stopped_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    connections (id) {
        id -> Text,
        tenant_id -> Text,
        origin_id -> Nullable<Text>,
        remote_addr -> Text,
        connector_version -> Nullable<Text>,
        machine_name -> Nullable<Text>,
        connected_at -> BigInt,
        last_seen_at -> BigInt,
        disconnected_at -> Nullable<BigInt>,
        disconnect_requested_at -> Nullable<BigInt>,
        tenant_name -> Nullable<Text>,
        secret_id -> Nullable<Text>,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    management_clients (id) {
        id -> Text,
        name -> Text,
        name_lower -> Text,
        hash -> Text,
        scopes -> Text,
        tenant_id -> Nullable<Text>,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Text,
        key_hash -> Text,
        scopes -> Text,
        tenant_id -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
        created_by_client -> Nullable<Text>,
        created_by_key -> Nullable<Text>,
    }
}

diesel::table! {
    request_log (id) {
        id -> Text,
        tenant -> Text,
        target -> Text,
        method -> Text,
        path -> Text,
        status -> BigInt,
        request_bytes -> Nullable<BigInt>,
        response_bytes -> Nullable<BigInt>,
        duration_ms -> BigInt,
        outcome -> Text,
        node -> Text,
        started_at -> BigInt,
        tenant_id -> Nullable<Text>,
    }
}

diesel::table! {
    installation_secrets (name) {
        name -> Text,
        value -> Text,
        created_at -> BigInt,
    }
}

diesel::joinable!(tenant_configs -> tenants (tenant_id));
diesel::joinable!(client_secrets -> tenants (tenant_id));
diesel::joinable!(connections -> tenants (tenant_id));

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    tenant_configs,
    client_secrets,
    signing_keys,
    origins,
    connections,
    management_clients,
    api_keys,
    request_log,
    installation_secrets,
);
