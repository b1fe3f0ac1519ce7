//! Small conversions between request/response fields and SQL values.

use chrono::{DateTime, NaiveDate, Utc};
use prost_types::Timestamp;
use uuid::Uuid;

use crate::error::QueryError;

/// A request's `min_position`: 0 means "no wait", positions are never negative, so a
/// negative value is a client bug refused rather than read as 0.
pub fn min_position(v: i64) -> Result<i64, QueryError> {
    if v < 0 {
        return Err(QueryError::invalid(
            "min_position",
            format!("must not be negative (got {v})"),
        ));
    }
    Ok(v)
}

/// An instant as a protobuf timestamp.
pub fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // Always in 0..1e9, so it fits.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// An optional instant as an optional protobuf timestamp.
pub fn ts_opt(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(ts)
}

/// A request timestamp as an instant; absent stays `None`.
pub fn time(
    field: &'static str,
    t: Option<&Timestamp>,
) -> Result<Option<DateTime<Utc>>, QueryError> {
    let Some(t) = t else {
        return Ok(None);
    };
    let nanos = u32::try_from(t.nanos)
        .map_err(|_| QueryError::invalid(field, "nanos must not be negative"))?;
    DateTime::from_timestamp(t.seconds, nanos)
        .map(Some)
        .ok_or_else(|| QueryError::invalid(field, "out of range"))
}

/// An empty string as `None` ("no filter"); other strings are bounded in length.
pub fn filter(field: &'static str, s: &str) -> Result<Option<String>, QueryError> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > 500 {
        return Err(QueryError::invalid(
            field,
            "must have at most 500 characters",
        ));
    }
    // No stored value holds a control character (the command API refuses them), and Postgres
    // cannot take NUL as a parameter at all: refuse rather than fail the query.
    if s.chars().any(char::is_control) {
        return Err(QueryError::invalid(
            field,
            "must not contain a NUL or other control character",
        ));
    }
    Ok(Some(s.to_owned()))
}

/// A filter restricted to a vocabulary (stored snake_case spellings).
pub fn vocab(field: &'static str, s: &str, allowed: &[&str]) -> Result<Option<String>, QueryError> {
    if s.is_empty() {
        return Ok(None);
    }
    if allowed.contains(&s) {
        Ok(Some(s.to_owned()))
    } else {
        Err(QueryError::invalid(
            field,
            format!("unknown value {s:?}; one of {}", allowed.join(", ")),
        ))
    }
}

/// A required UUID field.
pub fn uuid(field: &'static str, s: &str) -> Result<Uuid, QueryError> {
    if s.is_empty() {
        return Err(QueryError::invalid(field, "is required"));
    }
    Uuid::parse_str(s).map_err(|_| QueryError::invalid(field, "must be a UUID"))
}

/// An optional UUID filter (empty = none).
pub fn uuid_opt(field: &'static str, s: &str) -> Result<Option<Uuid>, QueryError> {
    if s.is_empty() {
        return Ok(None);
    }
    uuid(field, s).map(Some)
}

/// An optional `YYYY-MM-DD` filter.
pub fn day(field: &'static str, s: &str) -> Result<Option<NaiveDate>, QueryError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| QueryError::invalid(field, "must be a date YYYY-MM-DD"))
}

/// `None` as the empty string (proto3 strings have no null).
pub fn s(v: Option<String>) -> String {
    v.unwrap_or_default()
}

/// An optional UUID as a string.
pub fn id(v: Option<Uuid>) -> String {
    v.map(|u| u.to_string()).unwrap_or_default()
}

/// A non-negative database integer as unsigned (negative values cannot occur; 0 if they did).
pub fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A non-negative database integer as `u32`.
pub fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// The stored spellings of a domain vocabulary (the aggregates' `ALL` lists, so they never drift).
macro_rules! spellings {
    ($t:ty) => {
        <$t>::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<&'static str>>()
    };
}
pub(crate) use spellings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_position_and_filters_refuse_what_no_row_can_match() {
        assert!(min_position(0).is_ok());
        assert_eq!(
            min_position(-5).unwrap_err().to_string(),
            "min_position: must not be negative (got -5)"
        );
        assert!(filter("owner", "a\0b").is_err());
        assert!(filter("owner", "\u{1b}[31m").is_err());
        assert_eq!(filter("owner", "dana").unwrap().as_deref(), Some("dana"));
    }
}
