//! Multi-node relaying over the broker (DESIGN.md §3).
//!
//! Node A (the client's) publishes a [`RequestEnvelope`] to the tenant's request queue and
//! waits for the matching [`ResponseEnvelope`] on its own response queue. Every node holding
//! a tunnel of the tenant consumes that queue (competing consumers); the one that takes the
//! message runs it through a local tunnel and publishes the answer to A. Bodies up to
//! `inline_body_limit` travel inside the messages, larger ones through the shared body store.
//!
//! When B settles the delivery depends on the tenant's acknowledge mode (`ack`), which A
//! stamps into the envelope. B runs at most the tenant's concurrency limit of requests at once
//! whatever the mode; the broker's prefetch (the same limit) additionally bounds deliveries
//! not yet settled, which is what makes an unacknowledged `manual` request hold its slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use relay_bus::{Bus, BusError, RequestDelivery, RequestEnvelope, ResponseEnvelope};
use relay_proto::headers;
use relay_store::AckMode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::ack::{self, Acks};
use crate::bodystore::{BodyStore, StoreBodyError};
use crate::registry::TunnelBody;
use crate::relay::Mode;
use crate::responses::{Body, error};
use crate::tenants::TenantEntry;

/// The broker side of one node.
pub struct CrossNode {
    pub bus: Bus,
    pub bodies: BodyStore,
    inline_limit: usize,
    waiters: Mutex<HashMap<String, oneshot::Sender<ResponseEnvelope>>>,
    /// Tenants this node consumes requests for (it holds a tunnel of each).
    consumers: Mutex<HashMap<String, CancellationToken>>,
    /// Tenant queues known to be declared.
    declared: Mutex<std::collections::HashSet<String>>,
    /// When a consumer of a tenant's queue was last seen anywhere (cached broker answer).
    consumer_seen: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a seen consumer is trusted without asking the broker again.
const CONSUMER_CACHE: Duration = Duration::from_secs(1);

/// Removes a waiter when the waiting request ends, however it ends.
struct Waiter<'a> {
    node: &'a CrossNode,
    id: String,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.node.waiters.lock() {
            w.remove(&self.id);
        }
    }
}

impl CrossNode {
    pub fn new(bus: Bus, bodies: BodyStore, inline_limit: usize) -> Self {
        CrossNode {
            bus,
            bodies,
            inline_limit,
            waiters: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            consumer_seen: Mutex::new(HashMap::new()),
            declared: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Declares the tenant's request queue once per process (idempotent at the broker), so a
    /// request published before any connector arrived is kept, not lost.
    pub async fn ensure_declared(&self, tenant_id: &str) -> Result<(), BusError> {
        if self.declared.lock().is_ok_and(|d| d.contains(tenant_id)) {
            return Ok(());
        }
        self.bus.declare_tenant(tenant_id).await?;
        if let Ok(mut d) = self.declared.lock() {
            d.insert(tenant_id.to_owned());
        }
        Ok(())
    }

    /// A deleted tenant: stop consuming, forget it, and delete its request queue with what is
    /// still queued (its id is never reused, so nobody would ever consume it again).
    pub async fn forget_tenant(&self, tenant_id: &str) {
        self.tunnels_gone(tenant_id);
        if let Ok(mut d) = self.declared.lock() {
            d.remove(tenant_id);
        }
        if let Ok(mut seen) = self.consumer_seen.lock() {
            seen.remove(tenant_id);
        }
        match self.bus.delete_tenant(tenant_id).await {
            Ok(()) => {
                tracing::info!(
                    tenant_id,
                    "Deleted tenant's request queue removed from the broker."
                );
            }
            Err(e) => {
                tracing::warn!(tenant_id, error = %e, "Cannot delete a deleted tenant's request queue; its messages expire by their TTL.");
            }
        }
    }

    /// Whether some node consumes the tenant's queue (holds a tunnel), waiting up to `wait`
    /// for one to appear. A broker error counts as yes: the publish then tells the truth.
    pub async fn wait_for_consumer(&self, tenant_id: &str, wait: Duration) -> bool {
        if self
            .consumer_seen
            .lock()
            .ok()
            .and_then(|m| m.get(tenant_id).copied())
            .is_some_and(|at| at.elapsed() < CONSUMER_CACHE)
        {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.bus.consumer_count(tenant_id).await {
                Ok(0) => {}
                Ok(_) => {
                    if let Ok(mut seen) = self.consumer_seen.lock() {
                        seen.insert(tenant_id.to_owned(), std::time::Instant::now());
                    }
                    return true;
                }
                // The publish that follows reports broker trouble as such (503 broker-unavailable).
                Err(_) => return true,
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node A: relays `request` through the broker and answers the client.
    pub async fn relay(
        &self,
        tenant: &TenantEntry,
        request: Request<TunnelBody>,
        request_id: &str,
        mode: Mode,
        deadline: tokio::time::Instant,
    ) -> Response<Body> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(request_id.to_owned(), tx);
        }
        let _waiter = Waiter {
            node: self,
            id: request_id.to_owned(),
        };
        if let Err(response) = self
            .publish(tenant, request, request_id, mode, deadline)
            .await
        {
            return *response;
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            _ => return crate::relay::expired(tenant),
        };
        self.to_client(answer, mode, request_id).await
    }

    /// Node A, `queue` mode: `202` once the broker confirmed a persistent message.
    pub async fn enqueue(
        &self,
        tenant: &TenantEntry,
        request: Request<TunnelBody>,
        request_id: &str,
        deadline: tokio::time::Instant,
    ) -> Response<Body> {
        if let Err(e) = self.ensure_declared(&tenant.id).await {
            return publish_failed(&e);
        }
        if let Err(response) = self
            .publish(tenant, request, request_id, Mode::Queue, deadline)
            .await
        {
            return *response;
        }
        crate::spool::accepted(request_id)
    }

    /// Builds the envelope (storing a large body) and publishes it with the remaining time to
    /// live; `queue` mode messages are persistent.
    async fn publish(
        &self,
        tenant: &TenantEntry,
        request: Request<TunnelBody>,
        request_id: &str,
        mode: Mode,
        deadline: tokio::time::Instant,
    ) -> Result<(), Box<Response<Body>>> {
        let envelope = self
            .envelope(tenant, request, request_id, mode, deadline)
            .await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let persistent = mode == Mode::Queue;
        if let Err(e) = self
            .bus
            .publish_request(&tenant.id, &envelope, remaining, persistent)
            .await
        {
            self.bodies.remove(&envelope.body).await;
            return Err(Box::new(publish_failed(&e)));
        }
        Ok(())
    }

    async fn envelope(
        &self,
        tenant: &TenantEntry,
        request: Request<TunnelBody>,
        request_id: &str,
        mode: Mode,
        deadline: tokio::time::Instant,
    ) -> Result<RequestEnvelope, Box<Response<Body>>> {
        let (parts, body) = request.into_parts();
        let key = format!("{request_id}.req");
        let body = match self
            .bodies
            .inline_or_store(body, self.inline_limit, &key)
            .await
        {
            Ok(body) => body,
            Err(StoreBodyError::Source(e)) if e.is::<crate::body::TooLarge>() => {
                let limit = e.downcast_ref::<crate::body::TooLarge>().map_or(0, |t| t.0);
                return Err(Box::new(crate::relay::too_large(limit)));
            }
            Err(StoreBodyError::Source(_)) => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "body-incomplete",
                    "the request body ended early",
                )));
            }
            Err(StoreBodyError::Io(e)) => {
                tracing::error!(error = %e, "Cannot write to the body store.");
                return Err(Box::new(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "body-store",
                    "the request body could not be stored",
                )));
            }
        };
        let remaining_ms = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as i64;
        Ok(RequestEnvelope {
            request_id: request_id.to_owned(),
            origin: self.bus.origin().to_owned(),
            tenant: tenant.id.clone(),
            target: String::new(),
            method: parts.method.as_str().to_owned(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            headers: to_list(&parts.headers),
            body,
            expires_at_ms: relay_store::now_ms() + remaining_ms,
            mode: match mode {
                Mode::Relay => "relay",
                Mode::Queue => "queue",
                Mode::Trace => "trace",
            }
            .to_owned(),
            ack_mode: ack::wire(tenant.ack_mode).to_owned(),
        })
    }

    async fn to_client(
        &self,
        answer: ResponseEnvelope,
        mode: Mode,
        request_id: &str,
    ) -> Response<Body> {
        let body = match self.bodies.open(&answer.body, true).await {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(request_id = %request_id, error = %e, "Response body missing from the body store.");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "body-store",
                    "the response body is not available on this node",
                );
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let h = response.headers_mut();
        append_list(h, &answer.headers);
        if mode == Mode::Trace {
            let mut put = |name: HeaderName, value: Option<&str>| {
                if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                    h.insert(name, v);
                }
            };
            put(headers::REQUEST_ID, Some(request_id));
            put(
                headers::TRACE_CONNECTOR_MACHINE,
                answer.connector_machine.as_deref(),
            );
            put(
                headers::TRACE_CONNECTOR_VERSION,
                answer.connector_version.as_deref(),
            );
        } else {
            h.remove(headers::TARGET_DURATION);
        }
        response
    }

    /// Node A: delivers responses from the broker to the waiting requests.
    pub async fn run_responses(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut responses) = started(self.bus.consume_responses().await, "response") else {
            return;
        };
        while let Some(answer) = next_until(&mut responses, &shutdown).await {
            let waiter = self
                .waiters
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&answer.request_id));
            match waiter {
                Some(tx) => {
                    if let Err(answer) = tx.send(answer) {
                        self.bodies.remove(&answer.body).await;
                    }
                }
                // The client is gone (expired or disconnected): nobody will read the body.
                None => self.bodies.remove(&answer.body).await,
            }
        }
    }

    /// Node B: settles deliveries whose manual acknowledgement another node received.
    pub async fn run_acks(self: Arc<Self>, acks: Arc<Acks>, shutdown: CancellationToken) {
        let Some(mut incoming) = started(self.bus.consume_acks().await, "acknowledge") else {
            return;
        };
        while let Some(ack) = next_until(&mut incoming, &shutdown).await {
            if !acks.settle(&ack.request_id).await {
                tracing::debug!(request_id = %ack.request_id, "Acknowledgement for a request not held here (settled or expired).");
            }
        }
    }

    /// Node B: a tunnel of `tenant` is up here; consume its requests if not already.
    pub fn tunnel_up(self: &Arc<Self>, state: &Arc<AppState>, tenant: &Arc<TenantEntry>) {
        let token = {
            let Ok(mut consumers) = self.consumers.lock() else {
                return;
            };
            if consumers.contains_key(&tenant.id) {
                return;
            }
            let token = state.draining.child_token();
            consumers.insert(tenant.id.clone(), token.clone());
            token
        };
        let node = self.clone();
        let state = state.clone();
        let tenant = tenant.clone();
        state
            .tasks
            .clone()
            .spawn(async move { node.consume(state, tenant, token).await });
    }

    /// Node B: the last tunnel of `tenant` here is gone; stop taking its requests.
    pub fn tunnels_gone(&self, tenant_id: &str) {
        if let Ok(mut consumers) = self.consumers.lock()
            && let Some(token) = consumers.remove(tenant_id)
        {
            token.cancel();
        }
    }

    async fn consume(
        self: Arc<Self>,
        state: Arc<AppState>,
        tenant: Arc<TenantEntry>,
        stop: CancellationToken,
    ) {
        let prefetch = tenant.concurrency_limit;
        let mut requests = match self.bus.consume_requests(&tenant.id, prefetch).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(tenant = %tenant.key, error = %e, "Cannot consume the tenant's request queue.");
                self.tunnels_gone(&tenant.id);
                return;
            }
        };
        tracing::debug!(tenant = %tenant.key, prefetch, "Consuming the tenant's requests.");
        // Requests running here at once; with early acknowledge modes the prefetch alone
        // would not bound them.
        let running = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        loop {
            let permit = tokio::select! {
                p = running.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = stop.cancelled() => return self.hand_back_buffered(&mut requests).await,
            };
            let delivery = tokio::select! {
                d = requests.next() => match d {
                    Some(d) => d,
                    None => return,
                },
                () = stop.cancelled() => return self.hand_back_buffered(&mut requests).await,
            };
            let node = self.clone();
            let state = state.clone();
            let tenant = tenant.clone();
            tokio::spawn(async move { node.execute(&state, &tenant, delivery, permit).await });
        }
    }

    /// Deliveries buffered here never ran: hands them back as fresh messages so another node
    /// runs them (a broker requeue would flag them redelivered, and some acknowledge modes do
    /// not execute redelivered requests).
    async fn hand_back_buffered(&self, requests: &mut relay_bus::RequestConsumer) {
        while let Some(Some(d)) = futures_util::FutureExt::now_or_never(requests.next()) {
            self.hand_back(d).await;
        }
    }

    /// Node B: runs one delivered request through a local tunnel and answers its origin,
    /// settling the delivery when the envelope's acknowledge mode says so.
    async fn execute(
        &self,
        state: &Arc<AppState>,
        tenant: &TenantEntry,
        delivery: RequestDelivery,
        _running: OwnedSemaphorePermit,
    ) {
        let RequestDelivery {
            envelope,
            ack,
            redelivered,
        } = delivery;
        let mode = ack::from_wire(&envelope.ack_mode);
        // A redelivered message was taken by a consumer whose node or connection died: it may
        // have run already. Modes that promise at most once (disabled, connector-finished)
        // answer it as interrupted instead of running it again.
        if redelivered && !ack::reruns_redelivered(mode) {
            tracing::info!(request_id = %envelope.request_id, "Redelivered request not executed again.");
            let answer = relay_failure(
                &envelope,
                StatusCode::BAD_GATEWAY,
                "interrupted",
                "the request was interrupted on another relay node and is not retried",
            );
            self.finish(&envelope, answer).await;
            let _ = ack.ack().await;
            return;
        }
        let Some(tunnel) = state.registry.acquire(&tenant.id, Duration::ZERO).await else {
            // This node's tunnels are gone; another node may have one.
            self.hand_back(RequestDelivery {
                envelope,
                ack,
                redelivered,
            })
            .await;
            return;
        };
        let mut ack = Some(ack);
        let mut ack_url = None;
        match mode {
            AckMode::Disabled => settle(ack.take()).await,
            AckMode::Manual => {
                let url = state.acks.url(
                    state.config.public_url.as_deref(),
                    self.bus.origin(),
                    &envelope.request_id,
                );
                ack_url = Some(url);
                let remaining =
                    u64::try_from(envelope.expires_at_ms - relay_store::now_ms()).unwrap_or(0);
                state.acks.hold(
                    &envelope.request_id,
                    ack.take(),
                    Duration::from_millis(remaining),
                );
            }
            AckMode::ConnectorReceived | AckMode::ConnectorFinished => {}
        }
        let result = if mode == AckMode::ConnectorReceived {
            let (handed, mut received) = oneshot::channel();
            let call = self.call(&tunnel, &envelope, ack_url, Some(handed));
            tokio::pin!(call);
            tokio::select! {
                result = &mut call => result,
                Ok(()) = &mut received => {
                    settle(ack.take()).await;
                    call.await
                }
            }
        } else {
            self.call(&tunnel, &envelope, ack_url, None).await
        };
        let answer = match result {
            Ok(answer) => answer,
            Err(code) => {
                if mode == AckMode::Manual {
                    // The client gets an error and nobody will acknowledge: settle now rather
                    // than hold the delivery (and a prefetch slot) until it expires.
                    ack = state.acks.release(&envelope.request_id);
                }
                let mut answer = relay_failure(
                    &envelope,
                    StatusCode::BAD_GATEWAY,
                    code,
                    "the connector's tunnel failed during the request",
                );
                answer.connector_machine = Some(tunnel.machine.clone());
                answer.connector_version = Some(tunnel.version.clone());
                answer
            }
        };
        self.finish(&envelope, answer).await;
        settle(ack).await;
    }

    /// Republishes a request this node took but did not run (not flagged redelivered, same
    /// remaining time to live), then settles the original. Expired requests are dropped.
    async fn hand_back(&self, delivery: RequestDelivery) {
        let RequestDelivery { envelope, ack, .. } = delivery;
        let remaining = u64::try_from(envelope.expires_at_ms - relay_store::now_ms()).unwrap_or(0);
        if remaining > 0 {
            let persistent = envelope.mode == "queue";
            let ttl = Duration::from_millis(remaining);
            if let Err(e) = self
                .bus
                .publish_request(&envelope.tenant, &envelope, ttl, persistent)
                .await
            {
                tracing::warn!(request_id = %envelope.request_id, error = %e, "Cannot hand a request back to the queue; the broker will redeliver it.");
                let _ = ack.requeue().await;
                return;
            }
        } else {
            self.bodies.remove(&envelope.body).await;
        }
        let _ = ack.ack().await;
    }

    /// Deletes the request's stored body and sends the answer to the waiting node (`queue`
    /// mode has nobody waiting).
    async fn finish(&self, envelope: &RequestEnvelope, answer: ResponseEnvelope) {
        self.bodies.remove(&envelope.body).await;
        if envelope.mode == "queue" {
            self.bodies.remove(&answer.body).await;
            return;
        }
        if let Err(e) = self.bus.publish_response(&envelope.origin, &answer).await {
            tracing::info!(request_id = %envelope.request_id, error = %e, "Cannot return a response to its node.");
            self.bodies.remove(&answer.body).await;
        }
    }

    /// Sends the request into `tunnel` (with `ack_url` in manual mode) and collects the
    /// answer; `handed` fires once the request body went into the tunnel in full.
    async fn call(
        &self,
        tunnel: &Arc<crate::registry::Tunnel>,
        envelope: &RequestEnvelope,
        ack_url: Option<HeaderValue>,
        handed: Option<oneshot::Sender<()>>,
    ) -> Result<ResponseEnvelope, &'static str> {
        let body = self
            .bodies
            .open(&envelope.body, false)
            .await
            .map_err(|_| "body-store")?;
        let body = match handed {
            Some(handed) => crate::body::report_end(body, handed),
            None => body,
        };
        let uri: Uri = format!("http://tunnel{}", envelope.path_and_query)
            .parse()
            .map_err(|_| "path-invalid")?;
        let mut request = Request::builder()
            .method(envelope.method.as_str())
            .uri(uri)
            .version(http::Version::HTTP_2)
            .body(body)
            .map_err(|_| "request-invalid")?;
        append_list(request.headers_mut(), &envelope.headers);
        if let Some(url) = ack_url {
            request.headers_mut().insert(headers::ACKNOWLEDGE_URL, url);
        }
        let _inflight = tunnel.begin();
        let mut sender = tunnel.sender.clone();
        let remaining = u64::try_from(envelope.expires_at_ms - relay_store::now_ms()).unwrap_or(0);
        let response = tokio::time::timeout(
            Duration::from_millis(remaining),
            sender.send_request(request),
        )
        .await
        .map_err(|_| "request-expired")?
        .map_err(|_| "connector-lost")?;
        let (parts, body) = response.into_parts();
        let key = format!("{}.res", envelope.request_id);
        let body = self
            .bodies
            .inline_or_store(body, self.inline_limit, &key)
            .await
            .map_err(|_| "connector-lost")?;
        Ok(ResponseEnvelope {
            request_id: envelope.request_id.clone(),
            status: parts.status.as_u16(),
            headers: to_list(&parts.headers),
            body,
            error: None,
            connector_machine: Some(tunnel.machine.clone()),
            connector_version: Some(tunnel.version.clone()),
        })
    }
}

/// The subscription to one of this node's own queues, or `None` after logging why not.
fn started<T>(
    subscribed: Result<relay_bus::Subscription<T>, BusError>,
    queue: &str,
) -> Option<relay_bus::Subscription<T>> {
    subscribed
        .inspect_err(|e| tracing::error!(error = %e, queue, "Cannot consume this node's queue."))
        .ok()
}

/// The next item, or `None` once the subscription ends or `shutdown` fires.
async fn next_until<T>(
    subscription: &mut relay_bus::Subscription<T>,
    shutdown: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        item = subscription.next() => item,
        () = shutdown.cancelled() => None,
    }
}

/// Acknowledges a delivery not settled yet; a lost channel means the broker redelivers it.
async fn settle(ack: Option<relay_bus::AckHandle>) {
    if let Some(ack) = ack {
        let _ = ack.ack().await;
    }
}

/// Headers as the bus carries them: names and raw value bytes.
fn to_list(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Appends bus-carried headers; entries that are not valid HTTP headers are skipped.
fn append_list(headers: &mut http::HeaderMap, list: &[(String, Vec<u8>)]) {
    for (name, value) in list {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
}

/// A response the relay makes itself for a request it could not run.
fn relay_failure(
    envelope: &RequestEnvelope,
    status: StatusCode,
    code: &str,
    message: &str,
) -> ResponseEnvelope {
    ResponseEnvelope {
        request_id: envelope.request_id.clone(),
        status: status.as_u16(),
        headers: vec![
            ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
            (
                headers::RELAY_ERROR.as_str().into(),
                code.as_bytes().to_vec(),
            ),
        ],
        body: relay_bus::BodyRef::Inline(bytes::Bytes::from(format!("{message}\n"))),
        error: Some(code.to_owned()),
        connector_machine: None,
        connector_version: None,
    }
}

fn publish_failed(e: &BusError) -> Response<Body> {
    match e {
        BusError::Unroutable { .. } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-connector",
            "no connector of this tenant is connected",
        ),
        _ => {
            tracing::warn!(error = %e, "Cannot publish a request to the broker.");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker-unavailable",
                "the message broker is unavailable; retry later",
            )
        }
    }
}
