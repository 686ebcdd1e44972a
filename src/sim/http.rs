//! The simulator on the wire: the axum router and server, [`respond`] (one raw ECS RPC request
//! in, one HTTP answer out, as ECS shapes it), the `/__sim/*` endpoints tests use, and
//! [`SimHandle`].

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::dispatch::Outcome;
use super::{auth, imds, ScriptStep, Simulator};

/// A tag to set on an instance (`POST /__sim/tag`).
#[derive(Debug, Clone, serde::Deserialize)]
struct TagRequest {
    instance_id: String,
    key: String,
    value: String,
}

impl Simulator {
    /// The axum router (for embedding).
    pub fn router(&self) -> Router {
        let cfg = self.config();
        let creds = crate::ecs::Credentials::new(cfg.access_key_id, cfg.access_key_secret);
        Router::new()
            .route("/", get(handle).post(handle))
            .route("/__sim/state", get(state_handler))
            .route("/__sim/script", axum::routing::post(script_handler))
            .route("/__sim/tag", axum::routing::post(tag_handler))
            .with_state(self.clone())
            .merge(imds::metadata_router(imds::DEFAULT_ROLE, creds, cfg.clock))
    }

    /// Serves on `addr` (use port 0 for any) until the returned handle is shut down or dropped.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await;
        });
        Ok(SimHandle {
            addr,
            sim: self.clone(),
            cancel,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Simulator,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://ADDR/`, the endpoint to give the client.
    pub fn endpoint(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("a socket address forms a URL")
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn handle(
    State(sim): State<Simulator>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    respond(&sim, &method, &headers, query.as_deref(), &body).await
}

/// Answers one ECS RPC request from its raw parts, exactly as the endpoint `/` does: parameters
/// come from the query and, for a form (or any non-empty POST) body, from the body. Public so
/// the whole request path (parsing, signature check, dispatch) can be fuzzed without a socket.
pub async fn respond(
    sim: &Simulator,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let query: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let is_form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form || (*method == Method::POST && !body.is_empty()) {
        form_urlencoded::parse(body).into_owned().collect()
    } else {
        Vec::new()
    };
    let req = auth::Incoming {
        method: method.as_str(),
        headers,
        query,
        form,
        body,
    };
    let (result, request_id, retry_after) = sim.process(&req);
    let latency = sim.config().faults.latency;
    if !latency.is_zero() {
        let _answering = sim.answering();
        tokio::time::sleep(latency).await;
    }
    match result {
        Ok(Outcome::Ok(mut v)) => {
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "RequestId".into(),
                    json!(o.get("RequestId").cloned().unwrap_or(json!(request_id))),
                );
            }
            (StatusCode::OK, Json(v)).into_response()
        }
        Ok(Outcome::Text(text)) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            with_request_id(&text, &request_id),
        )
            .into_response(),
        Ok(Outcome::Html503) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/html")],
            "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>",
        )
            .into_response(),
        Ok(Outcome::Dropped) => {
            // Headers go out, then the body fails: the connection is cut before the answer.
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("simulated lost answer"))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Err(e) => {
            let body = json!({
                "RequestId": request_id,
                "HostId": "ecs.aliyuncs.com",
                "Code": &e.code,
                "Message": &e.message,
                "Recommend": format!(
                    "https://api.aliyun.com/troubleshoot?q={}&product=Ecs&requestId={request_id}",
                    e.code
                ),
            });
            let mut resp = (e.status, Json(body)).into_response();
            if let Some(d) = retry_after {
                if let Ok(v) =
                    format!("Limit:10,Remain:0,TimeLeft:{},Reset:0", d.as_millis()).parse()
                {
                    resp.headers_mut().insert("x-ratelimit-user-api", v);
                }
            }
            resp
        }
    }
}

/// `answer` (a JSON object's text) with `"RequestId"` first, as every ECS answer carries it.
fn with_request_id(answer: &str, request_id: &str) -> String {
    let id = serde_json::to_string(request_id).unwrap_or_else(|_| "\"\"".into());
    match answer.trim_start().strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"RequestId\":{id}}}"),
        Some(rest) => format!("{{\"RequestId\":{id},{rest}"),
        // Not an object: never made by the actions; answered as it is.
        None => answer.to_string(),
    }
}

async fn state_handler(State(sim): State<Simulator>) -> Response {
    let instances: Vec<_> = sim.instances().iter().map(|i| i.to_wire()).collect();
    Json(json!({
        "instances": instances,
        "releases": sim.releases(),
    }))
    .into_response()
}

async fn script_handler(State(sim): State<Simulator>, Json(step): Json<ScriptStep>) -> Response {
    sim.script(step);
    Json(json!({"scripted": true})).into_response()
}

async fn tag_handler(State(sim): State<Simulator>, Json(t): Json<TagRequest>) -> Response {
    if sim.tag(&t.instance_id, &t.key, &t.value) {
        Json(json!({"tagged": t.instance_id})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no instance {}", t.instance_id)})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::with_request_id;

    #[test]
    fn a_serialised_answer_gets_its_request_id() {
        let v: serde_json::Value =
            serde_json::from_str(&with_request_id(r#"{"TotalCount":2,"A":{"B":[]}}"#, "R-1"))
                .unwrap();
        assert_eq!(v["RequestId"], "R-1");
        assert_eq!(v["TotalCount"], 2);
        let v: serde_json::Value = serde_json::from_str(&with_request_id("{ }", "R-2")).unwrap();
        assert_eq!(v, serde_json::json!({"RequestId": "R-2"}));
    }
}
