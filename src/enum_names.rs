//! Unit enums in settings and tenant config (`QueueType`, `LogFormat`,
//! `SmtpSecurity`, provider kinds) read by name, with errors that list the
//! choices. A leaf: settings, broker and provider all use it.

use serde::Deserialize;

/// Read a unit enum (`QueueType`, `LogFormat`, `SmtpSecurity`) by its name
/// through serde's own string deserializer, so that a wrong name lists the
/// right ones ("unknown value `quorom`, expected `quorum` or `classic`"): the
/// `config` crate's own enum support says "enum QueueType does not have
/// variant constructor quorom" instead.
pub fn by_name<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let name = String::deserialize(d)?;
    parse_name(&name).map_err(serde::de::Error::custom)
}

pub fn parse_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        name.into_deserializer();
    T::deserialize(d).map_err(|e| {
        e.to_string()
            .replacen("unknown variant", "unknown value", 1)
    })
}
