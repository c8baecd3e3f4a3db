//! The CRI `ImageService`: one file per RPC holds its validation; this file routes
//! each RPC through [`call`] to the image port.

mod image_fs_info;
mod image_status;
mod list_images;
mod pull_image;
mod remove_image;
mod stream_images;

use tonic::{Request, Response, Status, async_trait};

use crate::api::{self, image_service_server::ImageService};
use crate::ports::Ports;
use crate::stream_list::{ListStream, stream_of};
use crate::wrap::call;

/// The tonic `ImageService` backed by [`Ports::images`].
#[derive(Clone)]
pub struct ImageServer {
    ports: Ports,
}

impl ImageServer {
    /// A service that forwards validated requests to `ports.images`.
    pub fn new(ports: Ports) -> Self {
        ImageServer { ports }
    }
}

type Rpc<T> = Result<Response<T>, Status>;

#[async_trait]
impl ImageService for ImageServer {
    async fn list_images(
        &self,
        r: Request<api::ListImagesRequest>,
    ) -> Rpc<api::ListImagesResponse> {
        call(&self.ports.observer, r, |r| self.ports.images.list(r)).await
    }

    type StreamImagesStream = ListStream<api::StreamImagesResponse>;

    async fn stream_images(
        &self,
        r: Request<api::StreamImagesRequest>,
    ) -> Rpc<Self::StreamImagesStream> {
        call(&self.ports.observer, r, |r| async move {
            let list = self
                .ports
                .images
                .list(api::ListImagesRequest { filter: r.filter });
            Ok(stream_of(list.await?.images, |images| {
                api::StreamImagesResponse { images }
            }))
        })
        .await
    }
    async fn image_status(
        &self,
        r: Request<api::ImageStatusRequest>,
    ) -> Rpc<api::ImageStatusResponse> {
        call(&self.ports.observer, r, |r| self.ports.images.status(r)).await
    }
    async fn pull_image(&self, r: Request<api::PullImageRequest>) -> Rpc<api::PullImageResponse> {
        call(&self.ports.observer, r, |r| self.ports.images.pull(r)).await
    }
    async fn remove_image(
        &self,
        r: Request<api::RemoveImageRequest>,
    ) -> Rpc<api::RemoveImageResponse> {
        call(&self.ports.observer, r, |r| self.ports.images.remove(r)).await
    }
    async fn image_fs_info(
        &self,
        r: Request<api::ImageFsInfoRequest>,
    ) -> Rpc<api::ImageFsInfoResponse> {
        call(&self.ports.observer, r, |r| self.ports.images.fs_info(r)).await
    }
}
