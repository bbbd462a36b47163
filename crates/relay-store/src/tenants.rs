//! Tenants and their configuration.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::models::{AckMode, NewTenant, Tenant, TenantConfig};
use crate::schema::{tenant_configs, tenants};
use crate::store::with_conn;
use crate::{Store, StoreError, now_ms};

const MAX_NAME_LEN: usize = 64;
const MAX_DISPLAY_NAME_LEN: usize = 200;
const MAX_DESCRIPTION_LEN: usize = 2000;

/// Checks a tenant name: 1..=64 characters of `[A-Za-z0-9_-]`.
pub fn validate_tenant_name(name: &str) -> Result<(), StoreError> {
    let message = if name.is_empty() {
        "must not be empty".to_owned()
    } else if name.len() > MAX_NAME_LEN {
        format!("must be at most {MAX_NAME_LEN} characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        "may only contain A-Z, a-z, 0-9, '-' and '_'".to_owned()
    } else {
        return Ok(());
    };
    Err(StoreError::Invalid {
        field: "name",
        message,
    })
}

fn check_len(field: &'static str, value: Option<&str>, max: usize) -> Result<(), StoreError> {
    match value {
        Some(v) if v.chars().count() > max => Err(StoreError::Invalid {
            field,
            message: format!("must be at most {max} characters"),
        }),
        _ => Ok(()),
    }
}

/// Row shape of `tenant_configs`; `treat_none_as_null` makes the upsert reset cleared fields.
#[derive(Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = tenant_configs, primary_key(tenant_id), treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct TenantConfigRow {
    tenant_id: String,
    keep_alive_interval_ms: Option<i64>,
    reconnect_min_delay_ms: Option<i64>,
    reconnect_max_delay_ms: Option<i64>,
    request_expiry_ms: Option<i64>,
    max_body_bytes: Option<i64>,
    concurrency_limit: Option<i64>,
    ack_mode: Option<String>,
    tracing: Option<bool>,
    require_client_auth: Option<bool>,
    updated_at: i64,
    max_tunnels: Option<i64>,
}

impl TenantConfigRow {
    fn into_config(self) -> Result<TenantConfig, StoreError> {
        let invalid = |field, message| StoreError::Invalid { field, message };
        Ok(TenantConfig {
            keep_alive_interval_ms: self.keep_alive_interval_ms,
            reconnect_min_delay_ms: self.reconnect_min_delay_ms,
            reconnect_max_delay_ms: self.reconnect_max_delay_ms,
            request_expiry_ms: self.request_expiry_ms,
            max_body_bytes: self.max_body_bytes,
            concurrency_limit: self
                .concurrency_limit
                .map(u32::try_from)
                .transpose()
                .map_err(|e| invalid("concurrency_limit", format!("stored value: {e}")))?,
            ack_mode: self
                .ack_mode
                .map(|m| m.parse::<AckMode>())
                .transpose()
                .map_err(|e| invalid("ack_mode", format!("stored value: {e}")))?,
            tracing: self.tracing,
            require_client_auth: self.require_client_auth,
            max_tunnels: self
                .max_tunnels
                .map(u32::try_from)
                .transpose()
                .map_err(|e| invalid("max_tunnels", format!("stored value: {e}")))?,
        })
    }
}

fn validate_config(cfg: &TenantConfig) -> Result<(), StoreError> {
    let non_negative = [
        ("keep_alive_interval_ms", cfg.keep_alive_interval_ms),
        ("reconnect_min_delay_ms", cfg.reconnect_min_delay_ms),
        ("reconnect_max_delay_ms", cfg.reconnect_max_delay_ms),
        ("request_expiry_ms", cfg.request_expiry_ms),
        ("max_body_bytes", cfg.max_body_bytes),
    ];
    for (field, value) in non_negative {
        if value.is_some_and(|v| v < 0) {
            return Err(StoreError::Invalid {
                field,
                message: "must not be negative".into(),
            });
        }
    }
    if let (Some(min), Some(max)) = (cfg.reconnect_min_delay_ms, cfg.reconnect_max_delay_ms)
        && min > max
    {
        return Err(StoreError::Invalid {
            field: "reconnect_max_delay_ms",
            message: "must not be less than reconnect_min_delay_ms".into(),
        });
    }
    if cfg.concurrency_limit == Some(0) {
        return Err(StoreError::Invalid {
            field: "concurrency_limit",
            message: "must be at least 1".into(),
        });
    }
    if cfg.max_tunnels == Some(0) {
        return Err(StoreError::Invalid {
            field: "max_tunnels",
            message: "must be at least 1".into(),
        });
    }
    Ok(())
}

impl Store {
    /// Creates a tenant. [`StoreError::Conflict`] if the name exists in any letter case.
    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        validate_tenant_name(&new.name)?;
        check_len(
            "display_name",
            new.display_name.as_deref(),
            MAX_DISPLAY_NAME_LEN,
        )?;
        check_len(
            "description",
            new.description.as_deref(),
            MAX_DESCRIPTION_LEN,
        )?;
        let now = now_ms();
        let tenant = Tenant {
            id: uuid::Uuid::now_v7().to_string(),
            name: new.name,
            display_name: new.display_name,
            description: new.description,
            created_at: now,
            updated_at: now,
        };
        let values = (
            tenants::id.eq(&tenant.id),
            tenants::name.eq(&tenant.name),
            tenants::name_lower.eq(tenant.name.to_ascii_lowercase()),
            tenants::display_name.eq(&tenant.display_name),
            tenants::description.eq(&tenant.description),
            tenants::created_at.eq(tenant.created_at),
            tenants::updated_at.eq(tenant.updated_at),
        );
        with_conn!(self, |conn| {
            diesel::insert_into(tenants::table)
                .values(values)
                .execute(conn)
                .await
        })?;
        Ok(tenant)
    }

    /// Finds a tenant by name, ignoring ASCII case. Invalid names are simply not found.
    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        if validate_tenant_name(name).is_err() {
            return Ok(None);
        }
        let lower = name.to_ascii_lowercase();
        Ok(with_conn!(self, |conn| {
            tenants::table
                .filter(tenants::name_lower.eq(&lower))
                .select(Tenant::as_select())
                .first(conn)
                .await
                .optional()
        })?)
    }

    pub async fn tenant_by_id(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(with_conn!(self, |conn| {
            tenants::table
                .find(id)
                .select(Tenant::as_select())
                .first(conn)
                .await
                .optional()
        })?)
    }

    /// All tenants, ordered by name (ignoring case).
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        Ok(with_conn!(self, |conn| {
            tenants::table
                .order(tenants::name_lower)
                .select(Tenant::as_select())
                .load(conn)
                .await
        })?)
    }

    /// One page of tenants ordered by name, optionally only those whose name contains
    /// `filter` (ignoring case), with the total number of matches.
    pub async fn list_tenants_page(
        &self,
        filter: Option<&str>,
        skip: i64,
        take: i64,
    ) -> Result<(Vec<Tenant>, i64), StoreError> {
        let pattern = filter.filter(|f| !f.is_empty()).map(|f| {
            let escaped: String = f
                .to_ascii_lowercase()
                .chars()
                .flat_map(|c| match c {
                    '%' | '_' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("%{escaped}%")
        });
        Ok(with_conn!(self, |conn| {
            let mut query = tenants::table.into_boxed();
            let mut count = tenants::table.into_boxed();
            if let Some(p) = &pattern {
                query = query.filter(tenants::name_lower.like(p.clone()).escape('\\'));
                count = count.filter(tenants::name_lower.like(p.clone()).escape('\\'));
            }
            let total: i64 = count.count().get_result(conn).await?;
            let rows = query
                .order(tenants::name_lower)
                .offset(skip)
                .limit(take)
                .select(Tenant::as_select())
                .load(conn)
                .await?;
            Ok::<_, StoreError>((rows, total))
        })?)
    }

    /// Replaces display name and description. [`StoreError::NotFound`] for an unknown id.
    pub async fn update_tenant(
        &self,
        id: &str,
        display_name: Option<String>,
        description: Option<String>,
    ) -> Result<Tenant, StoreError> {
        check_len(
            "display_name",
            display_name.as_deref(),
            MAX_DISPLAY_NAME_LEN,
        )?;
        check_len("description", description.as_deref(), MAX_DESCRIPTION_LEN)?;
        let query = diesel::update(tenants::table.find(id)).set((
            tenants::display_name.eq(display_name),
            tenants::description.eq(description),
            tenants::updated_at.eq(now_ms()),
        ));
        if with_conn!(self, |conn| query.execute(conn).await)? == 0 {
            return Err(StoreError::NotFound);
        }
        self.tenant_by_id(id).await?.ok_or(StoreError::NotFound)
    }

    /// Deletes a tenant with its configuration and secrets. Its connection records stay as
    /// history (the nodes holding its tunnels notice and close them). `Ok(false)` if it did
    /// not exist.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let query = diesel::delete(tenants::table.find(id));
        Ok(with_conn!(self, |conn| query.execute(conn).await)? > 0)
    }

    /// `(number of tenants, newest created_at)`: changes whenever a tenant is created or
    /// deleted, so relay nodes notice both with one cheap query.
    pub async fn tenant_fingerprint(&self) -> Result<(i64, Option<i64>), StoreError> {
        let query = tenants::table.select((
            diesel::dsl::count_star(),
            diesel::dsl::max(tenants::created_at),
        ));
        Ok(with_conn!(self, |conn| query.get_result(conn).await)?)
    }

    /// Those of `ids` that name existing tenants.
    pub async fn existing_tenant_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let query = tenants::table
            .filter(tenants::id.eq_any(ids.to_vec()))
            .select(tenants::id);
        let found: Vec<String> = with_conn!(self, |conn| query.load(conn).await)?;
        Ok(found.into_iter().collect())
    }

    /// `(tenant_id, updated_at)` of every tenant configuration: a cheap way for relay nodes
    /// to notice changed settings.
    pub async fn tenant_config_versions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let query =
            tenant_configs::table.select((tenant_configs::tenant_id, tenant_configs::updated_at));
        Ok(with_conn!(self, |conn| query.load(conn).await)?)
    }

    /// The tenant's settings; all `None` when none were ever set (or the tenant is unknown).
    pub async fn tenant_config(&self, tenant_id: &str) -> Result<TenantConfig, StoreError> {
        let row = with_conn!(self, |conn| {
            tenant_configs::table
                .find(tenant_id)
                .select(TenantConfigRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map_or_else(|| Ok(TenantConfig::default()), TenantConfigRow::into_config)
    }

    /// Replaces the tenant's settings (insert or update). [`StoreError::NotFound`] for an
    /// unknown tenant, [`StoreError::Invalid`] for negative durations, a minimum reconnect
    /// delay above the maximum, or a concurrency limit of 0.
    pub async fn set_tenant_config(
        &self,
        tenant_id: &str,
        cfg: &TenantConfig,
    ) -> Result<(), StoreError> {
        validate_config(cfg)?;
        let row = TenantConfigRow {
            tenant_id: tenant_id.to_owned(),
            keep_alive_interval_ms: cfg.keep_alive_interval_ms,
            reconnect_min_delay_ms: cfg.reconnect_min_delay_ms,
            reconnect_max_delay_ms: cfg.reconnect_max_delay_ms,
            request_expiry_ms: cfg.request_expiry_ms,
            max_body_bytes: cfg.max_body_bytes,
            concurrency_limit: cfg.concurrency_limit.map(i64::from),
            ack_mode: cfg.ack_mode.map(|m| m.as_str().to_owned()),
            tracing: cfg.tracing,
            require_client_auth: cfg.require_client_auth,
            updated_at: now_ms(),
            max_tunnels: cfg.max_tunnels.map(i64::from),
        };
        let query = diesel::insert_into(tenant_configs::table)
            .values(&row)
            .on_conflict(tenant_configs::tenant_id)
            .do_update()
            .set(&row);
        with_conn!(self, |conn| query.execute(conn).await)?;
        Ok(())
    }
}
