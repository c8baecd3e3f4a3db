//! Reading the JSON/YAML config files crictl reads (pod sandbox and container configs)
//! into CRI messages.
//!
//! crictl's files leave out most fields (`"linux": {}`), while the generated CRI types
//! derive `Deserialize` without defaults. A small deserializer over `serde_json::Value`
//! supplies each missing or `null` field's zero value, as protobuf does, accepts both the
//! proto's `snake_case` names and protobuf-JSON `camelCase`, and ignores unknown keys as
//! Go's decoder does.

use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::{Map, Value};

/// A config file that cannot be read as the expected message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither JSON nor YAML, or the wrong shape.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Read a crictl-style JSON or YAML file as a CRI message.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|reason| ConfigFileError::Parse {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parse JSON or YAML text as a CRI message.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => serde_yaml_ng::from_str(text)
            .map_err(|yaml_err| format!("neither JSON ({json_err}) nor YAML ({yaml_err})"))?,
    };
    T::deserialize(Defaulting(value)).map_err(|e| e.to_string())
}

/// A `Value` deserializer that turns missing and null into zero values.
struct Defaulting(Value);

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

struct StructAccess {
    fields: std::vec::IntoIter<(&'static str, Value)>,
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for StructAccess {
    type Error = serde_json::Error;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.fields.next() {
            None => Ok(None),
            Some((name, value)) => {
                self.value = Some(value);
                seed.deserialize(name.into_deserializer()).map(Some)
            }
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(Defaulting(self.value.take().unwrap_or(Value::Null)))
    }
}

struct MapAccess {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for MapAccess {
    type Error = serde_json::Error;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Defaulting(Value::String(k))).map(Some)
            }
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(Defaulting(self.value.take().unwrap_or(Value::Null)))
    }
}

struct SeqAccess(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for SeqAccess {
    type Error = serde_json::Error;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Defaulting(v)))
            .transpose()
    }
}

fn type_error(expected: &str, got: &Value) -> serde_json::Error {
    de::Error::custom(format!("expected {expected}, found {got}"))
}

impl<'de> de::Deserializer<'de> for Defaulting {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Array(a) => visitor.visit_seq(SeqAccess(a.into_iter())),
            Value::Object(m) => visitor.visit_map(MapAccess {
                entries: m.into_iter(),
                value: None,
            }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let mut map = match self.0 {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => return Err(type_error("an object", &other)),
        };
        let picked: Vec<(&'static str, Value)> = fields
            .iter()
            .map(|f| {
                let v = map
                    .remove(*f)
                    .or_else(|| map.remove(&camel(f)))
                    .unwrap_or(Value::Null);
                (*f, v)
            })
            .collect();
        visitor.visit_map(StructAccess {
            fields: picked.into_iter(),
            value: None,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(Defaulting(v)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(a) => visitor.visit_seq(SeqAccess(a.into_iter())),
            Value::Null => visitor.visit_seq(SeqAccess(Vec::new().into_iter())),
            other => Err(type_error("a list", &other)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(MapAccess {
                entries: m.into_iter(),
                value: None,
            }),
            Value::Null => visitor.visit_map(MapAccess {
                entries: Map::new().into_iter(),
                value: None,
            }),
            other => Err(type_error("a map", &other)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_string(String::new()),
            Value::String(s) => visitor.visit_string(s),
            // YAML turns `attempt: 1` or `value: true` into non-strings; accept them as text.
            Value::Number(n) => visitor.visit_string(n.to_string()),
            Value::Bool(b) => visitor.visit_string(b.to_string()),
            other => Err(type_error("a string", &other)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_bool(false),
            Value::Bool(b) => visitor.visit_bool(b),
            other => Err(type_error("a boolean", &other)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_byte_buf(Vec::new()),
            Value::String(s) => visitor.visit_byte_buf(s.into_bytes()),
            other => other.deserialize_bytes(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        char unit_struct tuple tuple_struct identifier
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_i8(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_i16(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_i32(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_i64(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_u8(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_u16(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_u32(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_u64(v)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_f32(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.number().deserialize_f64(v)
    }
}

impl Defaulting {
    /// Numbers: null is 0; numeric strings (protobuf JSON writes int64 as strings) parse.
    fn number(self) -> Value {
        match self.0 {
            Value::Null => Value::from(0),
            Value::String(s) => s
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| s.parse::<u64>().map(Value::from))
                .or_else(|_| s.parse::<f64>().map(Value::from))
                .unwrap_or(Value::String(s)),
            v => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_cri::api;

    #[test]
    fn crictl_pod_config_json() {
        let pod: api::PodSandboxConfig = parse(
            r#"{
                "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83djaidwnduwk28bcsb"},
                "log_directory": "/tmp",
                "linux": {},
                "port_mappings": [{"container_port": 80, "host_port": 8080}],
                "dns_config": {"servers": ["10.0.0.10"]},
                "labels": {"app": "web"}
            }"#,
        )
        .unwrap();
        let md = pod.metadata.unwrap();
        assert_eq!((md.name.as_str(), md.attempt), ("nginx-sandbox", 1));
        assert_eq!(pod.log_directory, "/tmp");
        assert!(pod.linux.is_some());
        assert_eq!(pod.port_mappings[0].host_port, 8080);
        assert_eq!(pod.labels["app"], "web");
        assert!(pod.hostname.is_empty());
    }

    #[test]
    fn crictl_container_config_yaml_and_camel_case() {
        let c: api::ContainerConfig = parse(
            "metadata:\n  name: busybox\nimage:\n  image: busybox\ncommand: [top]\nlogPath: busybox.log\nlinux:\n  securityContext:\n    runAsUser:\n      value: 1000\nenvs:\n  - key: A\n    value: 1\n",
        )
        .unwrap();
        assert_eq!(c.metadata.unwrap().name, "busybox");
        assert_eq!(c.image.unwrap().image, "busybox");
        assert_eq!(c.command, vec!["top"]);
        assert_eq!(c.log_path, "busybox.log");
        let sc = c.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert_eq!(c.envs[0].value, b"1");
    }

    #[test]
    fn wrong_shapes_are_clear_errors() {
        let e = parse::<api::PodSandboxConfig>(r#"{"metadata": "oops"}"#).unwrap_err();
        assert!(e.contains("expected an object"), "{e}");
        assert!(parse::<api::PodSandboxConfig>("{{{").is_err());
    }
}
