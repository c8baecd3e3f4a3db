//! Serving the CRI services on a unix socket.

use std::future::Future;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::image_service_server::ImageServiceServer;
use crate::api::runtime_service_server::RuntimeServiceServer;
use crate::image::ImageServer;
use crate::ports::Ports;
use crate::runtime::RuntimeServer;

/// The largest CRI message skiff sends or accepts (the kubelet's own limit).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Serve RuntimeService and ImageService (and the services in `extra`) on `listener`
/// until `shutdown` resolves.
///
/// A connection that speaks garbage is closed on its own; the server keeps serving
/// every other connection.
pub async fn serve(
    listener: UnixListener,
    ports: Ports,
    extra: tonic::service::Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let runtime = RuntimeServiceServer::new(RuntimeServer::new(ports.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let images = ImageServiceServer::new(ImageServer::new(ports))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_routes(extra.add_service(runtime).add_service(images))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}
