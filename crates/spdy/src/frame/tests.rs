use super::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 7,
            slot: 0,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            headers: h(&[("streamtype", "error"), ("requestid", "0")]),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: Vec::new(),
        },
        Frame::SynReply {
            stream_id: 3,
            flags: FLAG_FIN,
            headers: h(&[("x", "1"), ("x", "2")]),
        },
        Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        },
        Frame::Settings {
            flags: 1,
            entries: vec![
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
            ],
        },
        Frame::Settings {
            flags: 0,
            entries: Vec::new(),
        },
        Frame::Ping { id: 7 },
        Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::PROTOCOL_ERROR,
        },
        Frame::Headers {
            stream_id: 11,
            flags: FLAG_FIN,
            headers: h(&[("a", "b")]),
        },
        Frame::WindowUpdate {
            stream_id: 13,
            delta: 1 << 20,
        },
        Frame::Data {
            stream_id: 15,
            flags: 0,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 0x7fff_ffff,
            flags: FLAG_FIN,
            data: Bytes::new(),
        },
        Frame::Unknown {
            frame_type: 10,
            flags: 0,
        },
    ]
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut enc = Encoder::new();
    let mut buf = BytesMut::new();
    for f in frames {
        enc.encode(f, &mut buf).unwrap();
    }
    buf
}

#[test]
fn every_frame_type_roundtrips_on_one_stream() {
    let frames = all_frames();
    let mut buf = encode_all(&frames);
    let mut dec = Decoder::new();
    for want in &frames {
        assert_eq!(&dec.decode(&mut buf).unwrap().unwrap(), want);
    }
    assert!(buf.is_empty());
    assert!(dec.decode(&mut buf).unwrap().is_none());
}

#[test]
fn wire_layout_matches_the_spec() {
    let mut buf = BytesMut::new();
    let mut enc = Encoder::new();
    enc.encode(&Frame::Ping { id: 1 }, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    buf.clear();
    enc.encode(
        &Frame::RstStream {
            stream_id: 3,
            status: 5,
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        &buf[..],
        &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5]
    );
    buf.clear();
    enc.encode(
        &Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"ab"),
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..], &[0, 0, 0, 3, 1, 0, 0, 2, b'a', b'b']);
    buf.clear();
    enc.encode(
        &Frame::GoAway {
            last_good_stream_id: 1,
            status: 0,
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        &buf[..],
        &[0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]
    );
    buf.clear();
    enc.encode(
        &Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: vec![],
        },
        &mut buf,
    )
    .unwrap();
    // zlib header with FDICT and the SPDY/3 dictionary id right after the fixed fields.
    assert_eq!(&buf[..4], &[0x80, 3, 0, 1]);
    assert_eq!(buf[18] & 0x0f, 8, "deflate");
    assert_ne!(buf[19] & 0x20, 0, "FDICT set");
    assert_eq!(buf[20..24], 0xe3c6_a7c2u32.to_be_bytes());
}

#[test]
fn incremental_input_is_decoded_once_complete() {
    let frames = all_frames();
    let wire = encode_all(&frames);
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in wire.iter() {
        buf.extend_from_slice(&[*byte]);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

fn decode_err(bytes: &[u8]) -> FrameError {
    let mut buf = BytesMut::from(bytes);
    match Decoder::new().decode(&mut buf) {
        Err(e) => e,
        Ok(f) => panic!("decoded {f:?} from {bytes:?}"),
    }
}

#[test]
fn rejects_malformed_frames() {
    assert!(matches!(
        decode_err(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]),
        FrameError::UnsupportedVersion(2)
    ));
    // Oversized lengths fail from the header alone, before the payload arrives.
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff]),
        FrameError::FrameTooLarge { .. }
    ));
    // Fixed-size frames with the wrong length.
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 0]),
        FrameError::InvalidLength { .. }
    ));
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1]),
        FrameError::InvalidLength { .. }
    ));
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 1, 0, 0, 0, 9]),
        FrameError::InvalidLength { .. }
    ));
    // Zero stream ids and statuses.
    assert!(matches!(
        decode_err(&[0, 0, 0, 0, 0, 0, 0, 0]),
        FrameError::ZeroStreamId { .. }
    ));
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]),
        FrameError::ZeroRstStatus(1)
    ));
    // SETTINGS count disagreeing with the length, or absurd.
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 1]),
        FrameError::InvalidLength { .. }
    ));
    assert!(matches!(
        decode_err(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0, 0, 0]),
        FrameError::TooManySettings { .. }
    ));
    // SYN_STREAM whose header block is garbage / missing.
    let mut syn = vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    syn.extend_from_slice(b"junk");
    assert!(matches!(decode_err(&syn), FrameError::Decompress(_)));
    assert!(
        decode_err(&[0x80, 3, 0, 1, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
            .to_string()
            .contains("header")
    );
}

#[test]
fn truncated_frames_wait_for_more() {
    let wire = encode_all(&all_frames());
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut dec = Decoder::new();
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }
}

#[test]
fn header_blocks_with_bad_counts_are_rejected() {
    // A raw block claiming many pairs but holding none, compressed properly.
    let mut c = crate::headers::HeaderCompressor::new();
    let good = c.compress(&[]).unwrap();
    let mut buf = BytesMut::new();
    let len = u32::try_from(good.len() + 4).unwrap();
    buf.extend_from_slice(&[0x80, 3, 0, 2]);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0, 1]);
    buf.extend_from_slice(&good);
    assert!(Decoder::new().decode(&mut buf).unwrap().is_some());

    let mut raw_compress = flate2::Compress::new(flate2::Compression::default(), true);
    raw_compress
        .set_dictionary(&crate::dictionary::DICTIONARY)
        .unwrap();
    for raw in [
        &[0u8, 0, 1, 0][..],
        &[0, 0, 0, 2, 0, 0, 0, 1, b'a'],
        &[0, 0],
    ] {
        let mut out = Vec::with_capacity(256);
        raw_compress
            .compress_vec(raw, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x80, 3, 0, 8]);
        buf.extend_from_slice(&u32::try_from(out.len() + 4).unwrap().to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 1]);
        buf.extend_from_slice(&out);
        assert!(Decoder::new().decode(&mut buf).is_err(), "{raw:?}");
    }
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut buf = BytesMut::from(
        &[
            0x80, 3, 0, 10, 0, 0, 0, 3, 1, 2, 3, 0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2,
        ][..],
    );
    let mut dec = Decoder::new();
    assert_eq!(
        dec.decode(&mut buf).unwrap(),
        Some(Frame::Unknown {
            frame_type: 10,
            flags: 0
        })
    );
    assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Ping { id: 2 }));
}

/// Small deterministic PRNG (xorshift64*) so the property test needs no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// Feeds random bytes, truncations and bit flips of valid streams to the decoder: it must
/// return frames or errors, never panic, and never loop without consuming input.
#[test]
fn decoder_survives_random_and_mutated_input() {
    let valid = encode_all(&all_frames());
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for round in 0..20_000 {
        let mut input: Vec<u8> = match round % 3 {
            0 => (0..rng.below(64))
                .map(|_| rng.next().to_be_bytes()[0])
                .collect(),
            1 => valid[..rng.below(valid.len() + 1)].to_vec(),
            _ => {
                let mut v = valid.to_vec();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                v
            }
        };
        if round % 7 == 0 {
            // Make random control frames look like version 3 more often.
            input.splice(0..0, [0x80, 3, 0, u8::try_from(rng.below(11)).unwrap()]);
        }
        let mut buf = BytesMut::from(&input[..]);
        let mut dec = Decoder::new();
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before, "frame decoded without consuming input"),
                Ok(None) | Err(_) => break,
            }
        }
    }
}
