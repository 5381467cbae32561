//! JSON read strictly: an object with the same key twice is refused at any
//! depth. serde_json keeps the last of duplicate keys in a map, so
//! `{"job_id":"x","job_id":"y"}` would read as `y` in one place and fail
//! in another; a payload that can be read two ways is not read at all.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Longest key quoted in a duplicate-key error.
const MAX_KEY_CHARS: usize = 64;

/// A JSON value whose objects have no duplicate keys.
pub struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// `bytes` as a JSON value, refusing duplicate keys.
pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// For `#[serde(deserialize_with)]`: an optional JSON object, refusing
/// duplicate keys in it at any depth.
pub fn opt_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    match Option::<Strict>::deserialize(d)? {
        None => Ok(None),
        Some(Strict(Value::Object(m))) => Ok(Some(m)),
        Some(_) => Err(de::Error::invalid_type(
            de::Unexpected::Other("a value that is not an object"),
            &"a map",
        )),
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                // The key's printable start only: it is a name, not data,
                // but it is still cut and cleaned before it is quoted.
                let shown: String = key
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_KEY_CHARS)
                    .collect();
                return Err(de::Error::custom(format!("duplicate key `{shown}`")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"job_id":"x","job_id":"g-1999"}"#,
            r#"{"metadata":{"a":1,"b":{"c":1,"c":2}}}"#,
            r#"[{"k":1,"k":1}]"#,
        ] {
            let e = from_slice(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("duplicate key"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_value_without_duplicates_reads_as_serde_json_reads_it() {
        let text = r#"{"a":[1,-2,3.5,"s",null,true],"b":{"c":{}},"d":18446744073709551615}"#;
        let strict = from_slice(text.as_bytes()).unwrap();
        let lenient: Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict, lenient);
    }
}
