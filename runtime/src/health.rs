//! The HTTP endpoint of a stage: `/metrics` (Prometheus text format of the
//! given registry), `/healthz` (the process runs) and `/readyz` (the stage
//! said it is ready: connected and assigned).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{Encoder, Registry, TextEncoder};
use tracing::{info, warn};

use crate::RuntimeError;

/// Readiness the stage sets and the endpoint reports.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the stage ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed)
    }

    /// Whether the stage is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves the endpoint on `addr` (e.g. `127.0.0.1:9108`; port 0 picks one)
/// from a background thread; returns the bound address.
pub fn serve(
    addr: &str,
    registry: Registry,
    ready: Readiness,
) -> Result<std::net::SocketAddr, RuntimeError> {
    let server = tiny_http::Server::http(addr).map_err(|e| RuntimeError::Listen {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| RuntimeError::Listen {
            addr: addr.to_owned(),
            reason: "not an IP address".into(),
        })?;
    info!(%bound, "serving /metrics, /healthz, /readyz");
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body) = match request.url() {
                    "/metrics" => {
                        let mut buf = Vec::new();
                        match TextEncoder::new().encode(&registry.gather(), &mut buf) {
                            Ok(()) => (200, buf),
                            Err(e) => (500, e.to_string().into_bytes()),
                        }
                    }
                    "/healthz" => (200, b"ok\n".to_vec()),
                    "/readyz" if ready.get() => (200, b"ready\n".to_vec()),
                    "/readyz" => (503, b"not ready\n".to_vec()),
                    _ => (
                        404,
                        b"not found: try /metrics, /healthz, /readyz\n".to_vec(),
                    ),
                };
                if let Err(e) =
                    request.respond(tiny_http::Response::from_data(body).with_status_code(status))
                {
                    warn!(error = %e, "health endpoint: response failed");
                }
            }
        })
        .map_err(|e| RuntimeError::Listen {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(bound)
}
