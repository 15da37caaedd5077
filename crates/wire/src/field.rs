//! Field-level validation errors and the decoder that names the field at fault.

use serde::de::{self, DeserializeOwned};
use serde_json::Value;

/// A field that failed validation: its JSON path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The JSON path of the field (`attestation.symmetricKey.primaryKey`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    /// A field error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

/// Decodes `value` as `T`; a wrong type, a missing or an unknown field is reported with its JSON path.
///
/// An array is never taken for an object: serde's derived `Deserialize` would read a struct from a sequence, its
/// fields in declaration order, so `["dev-1", null, null, null, {"type": "symmetricKey"}]` would be an enrollment.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(ObjectsOnly(value)).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(body)".to_owned() } else { path };
        FieldError::new(field, e.into_inner().to_string())
    })
}

/// `serde_json::Value` as a deserializer that refuses a sequence where a struct is expected, at any depth.
struct ObjectsOnly(Value);

impl<'de> de::Deserializer<'de> for ObjectsOnly {
    type Error = serde_json::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let len = items.len();
                let mut seq = Elements(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                match seq.0.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(len, &"fewer elements in array")),
                }
            }
            Value::Object(map) => {
                let len = map.len();
                let mut entries = Entries { entries: map.into_iter(), value: None };
                let value = visitor.visit_map(&mut entries)?;
                match entries.entries.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(len, &"fewer elements in map")),
                }
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(_) => Err(de::Error::invalid_type(de::Unexpected::Seq, &visitor)),
            other => ObjectsOnly(other).deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(ObjectsOnly(other)),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// The wire's enums are names (strings); `Value` reads them as it always did.
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq
        tuple tuple_struct map identifier ignored_any
    }
}

/// The elements of an array, each decoded with [`ObjectsOnly`].
struct Elements(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Elements {
    type Error = serde_json::Error;

    fn next_element_seed<S: de::DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, Self::Error> {
        self.0.next().map(|value| seed.deserialize(ObjectsOnly(value))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// The entries of an object, each value decoded with [`ObjectsOnly`].
struct Entries {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = serde_json::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(de::IntoDeserializer::<serde_json::Error>::into_deserializer(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: de::DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Self::Error> {
        let value = self.value.take().ok_or_else(|| de::Error::custom("a map value was asked for twice"))?;
        seed.deserialize(ObjectsOnly(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        weight: u32,
    }

    #[test]
    fn an_array_is_not_taken_for_an_object() {
        let err = decode::<Inner>(serde_json::json!([5])).unwrap_err();
        assert_eq!(err.field, "(body)");
        let err = decode::<Outer>(serde_json::json!({"inner": [5]})).unwrap_err();
        assert_eq!(err.field, "inner");
        let err = decode::<Vec<Outer>>(serde_json::json!([{"inner": {"weight": 1}}, [[1]]])).unwrap_err();
        assert_eq!(err.field, "[1]");
        let err = decode::<Option<Outer>>(serde_json::json!([[1]])).unwrap_err();
        assert_eq!(err.field, "(body)");
        assert_eq!(decode::<Vec<Inner>>(serde_json::json!([{"weight": 1}])).unwrap().len(), 1);
        let value = serde_json::json!({"a": [1, {"b": [null]}], "c": "d"});
        assert_eq!(decode::<Value>(value.clone()).unwrap(), value);
    }

    #[test]
    fn the_path_of_the_bad_field_is_reported() {
        let err = decode::<Outer>(serde_json::json!({"inner": {"weight": "heavy"}})).unwrap_err();
        assert_eq!(err.field, "inner.weight");
        let err = decode::<Outer>(serde_json::json!([])).unwrap_err();
        assert_eq!(err.field, "(body)");
    }
}
