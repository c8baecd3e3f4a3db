//! The `Stream*` list RPCs of CRI 1.36 (KEP 5825, feature gate `CRIListStreaming`).
//!
//! Each is its `List*` twin delivered in pieces: the same port call, then the items cut
//! into responses of at least one item and at most [`CHUNK_BYTES`] encoded, every item
//! exactly once, then EOF. An empty list is a stream that ends at once.

use prost::Message;
use tokio_stream::Stream;

/// The most encoded item bytes one response carries (well under the kubelet's 16 MiB
/// message limit; a single item larger than this still goes out alone).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// A server-streaming response as tonic serves it.
pub(crate) type ListStream<T> =
    std::pin::Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Cut `items` into responses of at most `limit` encoded bytes (at least one item each).
pub(crate) fn chunk<I: Message>(items: Vec<I>, limit: usize) -> Vec<Vec<I>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let len = item.encoded_len();
        if !current.is_empty() && bytes + len > limit {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The stream of responses `wrap` makes of each chunk of `items`.
pub(crate) fn stream_of<I, T>(items: Vec<I>, wrap: fn(Vec<I>) -> T) -> ListStream<T>
where
    I: Message,
    T: Send + 'static,
{
    let responses: Vec<Result<T, tonic::Status>> = chunk(items, CHUNK_BYTES)
        .into_iter()
        .map(|c| Ok(wrap(c)))
        .collect();
    Box::pin(tokio_stream::iter(responses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PodSandbox;

    fn pod(id: &str) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_item_once_in_order_at_least_one_per_chunk() {
        let items: Vec<_> = (0..100).map(|i| pod(&format!("{i:064}"))).collect();
        let one = items[0].encoded_len();
        let chunks = chunk(items.clone(), one * 7 + 1);
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 7));
        let flat: Vec<_> = chunks.into_iter().flatten().collect();
        assert_eq!(flat, items);
    }

    #[test]
    fn empty_list_is_no_response_and_big_item_goes_alone() {
        assert!(chunk(Vec::<PodSandbox>::new(), 10).is_empty());
        let big = pod(&"x".repeat(100));
        let chunks = chunk(vec![pod("a"), big.clone(), pod("b")], 20);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1], vec![big]);
    }
}
