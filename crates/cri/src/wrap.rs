//! The one wrapper every CRI call goes through: span, timing, one log line, error mapping.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::error::{CriError, ErrorKind, to_status};
use crate::ports::CallObserver;
use crate::validate::Request;

/// Validate `req`, run `handler` on it inside a span, log the outcome once, map errors,
/// and tell `observer` (metrics).
pub(crate) async fn call<R, T, F, Fut>(
    observer: &Arc<dyn CallObserver>,
    req: tonic::Request<R>,
    handler: F,
) -> Result<tonic::Response<T>, tonic::Status>
where
    R: Request,
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = Result<T, CriError>>,
{
    let req = req.into_inner();
    let ids = req.ids();
    let span = tracing::info_span!(
        "cri",
        method = R::METHOD,
        pod_id = ids.pod.map(str::to_owned),
        container_id = ids.container.map(str::to_owned),
    );
    let start = Instant::now();
    let result = match req.validate() {
        Ok(()) => handler(req).instrument(span.clone()).await,
        Err(err) => Err(CriError::from(err)),
    };
    let elapsed = start.elapsed();
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let _entered = span.enter();
    match result {
        Ok(resp) => {
            if R::READ_ONLY {
                tracing::debug!(elapsed_us, outcome = "ok", "cri call");
            } else {
                tracing::info!(elapsed_us, outcome = "ok", "cri call");
            }
            observer.observe(R::METHOD, tonic::Code::Ok, elapsed);
            Ok(tonic::Response::new(resp))
        }
        Err(err) => {
            let status = to_status(&err);
            match err.kind() {
                ErrorKind::Internal => {
                    tracing::error!(elapsed_us, outcome = ?status.code(), error = %err, "cri call")
                }
                ErrorKind::NotFound | ErrorKind::Unimplemented if R::READ_ONLY => {
                    tracing::debug!(elapsed_us, outcome = ?status.code(), error = %err, "cri call")
                }
                _ => tracing::warn!(elapsed_us, outcome = ?status.code(), error = %err, "cri call"),
            }
            observer.observe(R::METHOD, status.code(), elapsed);
            Err(status)
        }
    }
}
