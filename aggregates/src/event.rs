//! Helpers behind the `domain_events!` macro that generates each aggregate's event enum.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::UpcastError;

pub(crate) fn payload_to_value<P: Serialize>(payload: &P) -> Value {
    // Payload types are plain structs with string keys, validated strings, integers, decimals
    // (serialised as strings) and timestamps: serde_json has no failure path for them.
    serde_json::to_value(payload).expect("event payloads always serialise to JSON")
}

pub(crate) fn value_to_payload<P: DeserializeOwned>(
    event_type: &str,
    schema_version: u32,
    payload: Value,
) -> Result<P, UpcastError> {
    serde_json::from_value(payload).map_err(|e| UpcastError::InvalidPayload {
        event_type: event_type.to_owned(),
        schema_version,
        reason: e.to_string(),
    })
}

/// Declares an aggregate's event enum and implements [`crate::DomainEvent`] for it from one
/// table of `Variant(Payload) => "type.name" v N`, so type names and versions cannot drift
/// between serialisation and parsing.
macro_rules! domain_events {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($payload:ty) => $etype:literal v $ver:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(tag = "type", content = "payload")]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $etype)] $variant($payload), )+
        }

        impl $crate::DomainEvent for $name {
            const EVENT_TYPES: &'static [(&'static str, u32)] = &[$(($etype, $ver)),+];

            fn event_type(&self) -> &'static str {
                match self { $( Self::$variant(_) => $etype, )+ }
            }

            fn schema_version(&self) -> u32 {
                match self { $( Self::$variant(_) => $ver, )+ }
            }

            fn to_payload(&self) -> serde_json::Value {
                match self { $( Self::$variant(p) => $crate::event::payload_to_value(p), )+ }
            }

            fn from_stored(
                event_type: &str,
                schema_version: u32,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::UpcastError> {
                match event_type {
                    $( $etype => {
                        let payload = $crate::upcast::registry().upcast($etype, schema_version, $ver, payload)?;
                        $crate::event::value_to_payload::<$payload>($etype, $ver, payload).map(Self::$variant)
                    } )+
                    other => Err($crate::UpcastError::UnknownEventType { event_type: other.to_owned() }),
                }
            }
        }
    };
}
pub(crate) use domain_events;
