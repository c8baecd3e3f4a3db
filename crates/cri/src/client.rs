//! A CRI client over a unix socket, as crictl and the kubelet connect.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::image_service_client::ImageServiceClient;
use crate::api::runtime_service_client::RuntimeServiceClient;
use crate::server::MAX_MESSAGE_BYTES;

/// A failure to reach a CRI endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a `unix://` URL or a path.
    #[error("unsupported CRI endpoint {0:?}: expected unix:///path/to/socket or a path")]
    Endpoint(String),
    /// Connecting failed.
    #[error("cannot connect to CRI endpoint {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Both CRI service clients sharing one connection.
#[derive(Debug, Clone)]
pub struct CriClient {
    /// The RuntimeService client.
    pub runtime: RuntimeServiceClient<Channel>,
    /// The ImageService client.
    pub images: ImageServiceClient<Channel>,
    /// The connection, for other services on the same socket.
    pub channel: Channel,
}

/// The socket path of an endpoint given as `unix:///path` or `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ClientError> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(PathBuf::from(path));
        }
    } else if endpoint.starts_with('/') {
        return Ok(PathBuf::from(endpoint));
    }
    Err(ClientError::Endpoint(endpoint.to_owned()))
}

impl CriClient {
    /// Connect to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<CriClient, ClientError> {
        let socket = path.to_path_buf();
        let channel = Endpoint::from_static("http://skiff.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            images: ImageServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            channel,
        })
    }

    /// Connect to an endpoint given as `unix:///path` or `/path`.
    pub async fn connect_endpoint(endpoint: &str) -> Result<CriClient, ClientError> {
        Self::connect(&socket_path(endpoint)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/skiff/skiff.sock").unwrap(),
            PathBuf::from("/run/skiff/skiff.sock")
        );
        assert_eq!(
            socket_path("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("unix://relative").is_err());
    }
}
