//! JSON forms of CRI fields whose serde default does not match cri-api's Go JSON.

/// `KeyValue.value` is `bytes` on the wire since CRI 1.34 but a plain string in JSON
/// (cri-api's `api_json.go`), which is what crictl's config files and verbose
/// outputs hold. Bytes that are not UTF-8 serialize with U+FFFD, as Go's encoder does.
pub(crate) mod text_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::api::KeyValue;

    #[test]
    fn key_value_is_plain_text_in_json() {
        let kv = KeyValue {
            key: "A".into(),
            value: b"x y".to_vec(),
        };
        let text = serde_json::to_string(&kv).unwrap();
        assert_eq!(text, r#"{"key":"A","value":"x y"}"#);
        assert_eq!(serde_json::from_str::<KeyValue>(&text).unwrap(), kv);
    }
}
