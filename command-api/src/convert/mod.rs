//! Proto -> domain conversion ("parse, don't validate" at the edge).
//!
//! Every request is turned into a domain command before anything is loaded or written; the
//! first bad field ends the conversion with `INVALID_ARGUMENT` and its path in the request
//! (`task.title: must have at most 500 characters (got 501)`). The domain's value types hold
//! the rules (lengths, ranges, enums); this layer adds what only the wire knows: UUID and
//! decimal syntax, unset enums, list lengths before any item is parsed, JSON depth, and the
//! caller's actor as default owner.

pub(crate) mod agent_session;
pub(crate) mod governance;
pub(crate) mod problem;
pub(crate) mod task;

use std::str::FromStr;

use aggregates::DomainError;
use aggregates::values::{JsonObject, Money, Text, TextKind, UserRef, check_text};
use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::ApiError;
use schemas::v1 as pb;

/// Longest list accepted in any repeated request field.
pub const MAX_LIST_ITEMS: usize = aggregates::problem::MAX_LIST_ITEMS;
/// Deepest nesting accepted in a JSON (`google.protobuf.Struct`) field.
pub const MAX_JSON_DEPTH: usize = 16;
/// Most object keys plus list items in one JSON field, counted over every level.
pub const MAX_JSON_ENTRIES: usize = 1_000;
/// Longest object key of a JSON field, in characters.
pub const MAX_JSON_KEY_CHARS: usize = 256;
/// Largest JSON field once serialised, in bytes (what the event payload and `jsonb` hold).
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Largest count or size accepted (`tokens`, `file_size`, `sample_size`): the read models store
/// them as Postgres `BIGINT`.
pub const MAX_BIGINT: u64 = i64::MAX as u64;
/// Largest small count accepted (`estimated_hours`, `execution_time_secs`): the read models
/// store them as Postgres `INTEGER`.
pub const MAX_INTEGER: u32 = i32::MAX as u32;
/// Longest decimal string accepted.
const MAX_DECIMAL_CHARS: usize = 40;

/// The validated shared envelope of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Idempotency key.
    pub command_id: Uuid,
    /// The client's expected version of the target stream (0 = must not exist).
    pub expected_version: Option<u64>,
    /// Correlation id (defaults to the command id).
    pub correlation_id: Uuid,
    /// Causation id, if any.
    pub causation_id: Option<Uuid>,
}

/// Parses the envelope; `command_id` is required.
pub fn envelope(e: Option<&pb::CommandEnvelope>) -> Result<Envelope, ApiError> {
    let e = e.ok_or_else(|| ApiError::invalid("envelope", "is required"))?;
    let command_id = uuid("envelope.command_id", &e.command_id)?;
    let correlation_id = opt_uuid("envelope.correlation_id", &e.correlation_id)?;
    Ok(Envelope {
        command_id,
        expected_version: e.expected_version,
        correlation_id: correlation_id.unwrap_or(command_id),
        causation_id: opt_uuid("envelope.causation_id", &e.causation_id)?,
    })
}

/// Re-attributes a domain value error to `path`.
pub(crate) fn at<T>(path: &str, r: Result<T, DomainError>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::field(path, e))
}

/// A required, non-nil UUID.
pub(crate) fn uuid(path: &str, s: &str) -> Result<Uuid, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ApiError::invalid(path, "is required"));
    }
    let id = Uuid::parse_str(s).map_err(|_| ApiError::invalid(path, "must be a UUID"))?;
    if id.is_nil() {
        return Err(ApiError::invalid(path, "must not be the nil UUID"));
    }
    Ok(id)
}

/// An optional UUID: the empty string means absent.
pub(crate) fn opt_uuid(path: &str, s: &str) -> Result<Option<Uuid>, ApiError> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        uuid(path, s).map(Some)
    }
}

/// A required id of a domain id type.
pub(crate) fn id<T>(
    path: &str,
    s: &str,
    make: fn(Uuid) -> Result<T, DomainError>,
) -> Result<T, ApiError> {
    at(path, make(uuid(path, s)?))
}

/// An optional id of a domain id type (empty = absent).
pub(crate) fn opt_id<T>(
    path: &str,
    s: &str,
    make: fn(Uuid) -> Result<T, DomainError>,
) -> Result<Option<T>, ApiError> {
    opt_uuid(path, s)?.map(|u| at(path, make(u))).transpose()
}

/// Required free text (1–10,000 characters; tab and line breaks allowed).
pub(crate) fn text(path: &str, s: &str) -> Result<Text, ApiError> {
    at(path, Text::parse("text", s))
}

/// Required one-line text (1–10,000 characters, no control character).
pub(crate) fn line(path: &str, s: &str) -> Result<Text, ApiError> {
    at(path, Text::parse_line("text", s))
}

/// The one-line text rule on a string the domain keeps as it is (e.g. a destination).
pub(crate) fn check_line(path: &str, s: &str) -> Result<(), ApiError> {
    at(path, check_text("value", s, TextKind::Line))
}

/// A count or size stored as `BIGINT`: 2^63 and above are refused, never clamped.
pub(crate) fn bigint(path: &str, v: u64) -> Result<u64, ApiError> {
    if v > MAX_BIGINT {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_BIGINT} (got {v})"),
        ));
    }
    Ok(v)
}

/// An optional [`bigint`].
pub(crate) fn opt_bigint(path: &str, v: Option<u64>) -> Result<Option<u64>, ApiError> {
    v.map(|v| bigint(path, v)).transpose()
}

/// An optional small count stored as `INTEGER`.
pub(crate) fn opt_integer(path: &str, v: Option<u32>) -> Result<Option<u32>, ApiError> {
    match v {
        Some(v) if v > MAX_INTEGER => Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_INTEGER} (got {v})"),
        )),
        v => Ok(v),
    }
}

/// Optional free text: absent stays absent, present must be valid.
pub(crate) fn opt_text(path: &str, s: Option<&String>) -> Result<Option<Text>, ApiError> {
    s.map(|s| text(path, s)).transpose()
}

/// Fails when a repeated field is longer than `max`, before any item is parsed.
pub(crate) fn check_len<T>(path: &str, items: &[T], max: usize) -> Result<(), ApiError> {
    if items.len() > max {
        return Err(ApiError::invalid(
            path,
            format!("must have at most {max} items (got {})", items.len()),
        ));
    }
    Ok(())
}

/// A bounded list, each item converted with its own path `path[i]`.
pub(crate) fn list<T, U>(
    path: &str,
    items: &[T],
    mut convert: impl FnMut(&str, &T) -> Result<U, ApiError>,
) -> Result<Vec<U>, ApiError> {
    check_len(path, items, MAX_LIST_ITEMS)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| convert(&format!("{path}[{i}]"), item))
        .collect()
}

/// A bounded list of free texts.
pub(crate) fn texts(path: &str, items: &[String]) -> Result<Vec<Text>, ApiError> {
    list(path, items, |p, s| text(p, s))
}

/// A user reference; empty means the caller's own actor id.
pub(crate) fn user_or(path: &str, s: &str, actor: &str) -> Result<UserRef, ApiError> {
    let s = if s.trim().is_empty() { actor } else { s };
    at(path, UserRef::parse(s))
}

/// A decimal written as a string ("0.85"); floats never cross the wire.
///
/// The syntax is strict, `-?digits[.digits]`: `rust_decimal` alone also takes exponents
/// (`1e3`), digit separators (`1_000`) and surrounding spaces, none of which a client means
/// as an amount, and a retry spelled differently would then be a different request.
pub(crate) fn decimal(path: &str, s: &str) -> Result<Decimal, ApiError> {
    if s.is_empty() {
        return Err(ApiError::invalid(path, "is required"));
    }
    if s.len() > MAX_DECIMAL_CHARS {
        return Err(ApiError::invalid(
            path,
            format!("must be a decimal number of at most {MAX_DECIMAL_CHARS} characters"),
        ));
    }
    if !strict_decimal(s) {
        return Err(ApiError::invalid(
            path,
            "must be a decimal number such as \"12.50\" (digits, an optional sign and point; \
             no exponent, separator or space)",
        ));
    }
    Decimal::from_str(s).map_err(|_| {
        ApiError::invalid(
            path,
            "is out of range for a decimal (at most 28 significant digits)",
        )
    })
}

/// `-?[0-9]+(\.[0-9]+)?`.
fn strict_decimal(s: &str) -> bool {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

/// An optional decimal.
pub(crate) fn opt_decimal(path: &str, s: Option<&String>) -> Result<Option<Decimal>, ApiError> {
    s.map(|s| decimal(path, s)).transpose()
}

/// An amount of money (≥ 0, at most 4 decimal places). An amount too large even for a
/// decimal gets the same message as one above the bound: the range is what the client needs.
pub(crate) fn money(path: &str, s: &str) -> Result<Money, ApiError> {
    let out_of_range = || {
        ApiError::invalid(
            path,
            format!(
                "must be an amount between 0 and {} with at most 4 decimal places",
                Money::max_amount()
            ),
        )
    };
    let d = match decimal(path, s) {
        Ok(d) => d,
        // Syntactically a decimal, but beyond what a decimal holds: a range problem.
        Err(_) if strict_decimal(s) && s.len() <= MAX_DECIMAL_CHARS => {
            return Err(out_of_range());
        }
        Err(e) => return Err(e),
    };
    if d > Money::max_amount() {
        return Err(out_of_range());
    }
    at(path, Money::new(d))
}

/// An optional amount of money.
pub(crate) fn opt_money(path: &str, s: Option<&String>) -> Result<Option<Money>, ApiError> {
    s.map(|s| money(path, s)).transpose()
}

/// First second accepted in a timestamp: 0001-01-01T00:00:00Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Last second accepted in a timestamp: 9999-12-31T23:59:59Z.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A protobuf timestamp as UTC, within years 1–9999: the range of the protobuf `Timestamp`
/// itself, of RFC 3339 (how events store instants) and well inside Postgres `timestamptz`,
/// which cannot hold the years before 4713 BC that chrono would accept.
pub(crate) fn timestamp(path: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>, ApiError> {
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds) {
        return Err(ApiError::invalid(
            path,
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ));
    }
    u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| ApiError::invalid(path, "is not a valid timestamp"))
}

/// An optional protobuf timestamp.
pub(crate) fn opt_timestamp(
    path: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    t.map(|t| timestamp(path, t)).transpose()
}

/// A required message field.
pub(crate) fn required<'a, T>(path: &str, v: Option<&'a T>) -> Result<&'a T, ApiError> {
    v.ok_or_else(|| ApiError::invalid(path, "is required"))
}

/// A required proto enum: unknown numbers and `*_UNSPECIFIED` (0) are refused.
pub(crate) fn enum_value<E: TryFrom<i32>>(path: &str, v: i32) -> Result<E, ApiError> {
    if v == 0 {
        return Err(ApiError::invalid(path, "must be set"));
    }
    E::try_from(v).map_err(|_| ApiError::invalid(path, format!("unknown value {v}")))
}

/// An optional proto enum: 0 (`*_UNSPECIFIED`) means absent.
pub(crate) fn opt_enum_value<E: TryFrom<i32>>(path: &str, v: i32) -> Result<Option<E>, ApiError> {
    if v == 0 {
        Ok(None)
    } else {
        enum_value(path, v).map(Some)
    }
}

/// A `google.protobuf.Struct` as a JSON object (absent = empty).
///
/// Bounded in depth ([`MAX_JSON_DEPTH`]), entries over all levels ([`MAX_JSON_ENTRIES`]), key
/// length ([`MAX_JSON_KEY_CHARS`]) and serialised size ([`MAX_JSON_BYTES`]); keys follow the
/// one-line text rule and string values the free-text rule, so `jsonb` and the audit log can
/// hold every accepted value.
pub(crate) fn json_object(
    path: &str,
    s: Option<&prost_types::Struct>,
) -> Result<JsonObject, ApiError> {
    let Some(s) = s else {
        return Ok(JsonObject::new());
    };
    let mut entries = 0;
    let object = struct_to_json(s, 1, &mut entries).map_err(|m| ApiError::invalid(path, m))?;
    // Compact serialisation of a valid map cannot fail; an error would be refused anyway.
    let bytes = serde_json::to_vec(&object).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_JSON_BYTES {
        return Err(ApiError::invalid(
            path,
            format!("must be at most {MAX_JSON_BYTES} bytes as JSON (got {bytes})"),
        ));
    }
    Ok(object)
}

fn count_entry(entries: &mut usize) -> Result<(), String> {
    *entries += 1;
    if *entries > MAX_JSON_ENTRIES {
        return Err(format!(
            "must have at most {MAX_JSON_ENTRIES} keys and list items in all"
        ));
    }
    Ok(())
}

fn struct_to_json(
    s: &prost_types::Struct,
    depth: usize,
    entries: &mut usize,
) -> Result<JsonObject, String> {
    if depth > MAX_JSON_DEPTH {
        return Err(format!("is nested deeper than {MAX_JSON_DEPTH} levels"));
    }
    s.fields
        .iter()
        .map(|(k, v)| {
            count_entry(entries)?;
            json_text(k, TextKind::Line, "key")?;
            let n = k.chars().count();
            if n > MAX_JSON_KEY_CHARS {
                return Err(format!(
                    "has a key of {n} characters (at most {MAX_JSON_KEY_CHARS})"
                ));
            }
            Ok((k.clone(), value_to_json(v, depth, entries)?))
        })
        .collect()
}

/// The text rule inside JSON; the message names the offending key or value by kind only
/// (echoing it would echo the control character).
fn json_text(s: &str, kind: TextKind, what: &str) -> Result<(), String> {
    check_text("value", s, kind).map_err(|e| {
        let detail = e.message().strip_prefix("value ").unwrap_or(e.message());
        format!("has a {what} that {detail}")
    })
}

fn value_to_json(
    v: &prost_types::Value,
    depth: usize,
    entries: &mut usize,
) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StringValue(s)) => {
            json_text(s, TextKind::Free, "string value")?;
            J::String(s.clone())
        }
        Some(Kind::NumberValue(n)) => {
            // Whole numbers stay integers in the stored JSON (Struct only knows doubles).
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if n.fract() == 0.0 && n.abs() < EXACT {
                #[allow(clippy::cast_possible_truncation)]
                J::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(J::Number)
                    .ok_or("contains a number that is not finite")?
            }
        }
        Some(Kind::StructValue(s)) => J::Object(struct_to_json(s, depth + 1, entries)?),
        Some(Kind::ListValue(l)) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(format!("is nested deeper than {MAX_JSON_DEPTH} levels"));
            }
            J::Array(
                l.values
                    .iter()
                    .map(|v| {
                        count_entry(entries)?;
                        value_to_json(v, depth + 1, entries)
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

/// Patch semantics of optional fields with a `clear_*` flag.
pub(crate) fn patch<T>(
    path: &str,
    value: Option<T>,
    clear: bool,
) -> Result<aggregates::values::Patch<T>, ApiError> {
    use aggregates::values::Patch;
    match (value, clear) {
        (Some(_), true) => Err(ApiError::invalid(
            path,
            "cannot be set and cleared in the same update",
        )),
        (Some(v), false) => Ok(Patch::Set(v)),
        (None, true) => Ok(Patch::Clear),
        (None, false) => Ok(Patch::Keep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_needs_a_command_id_and_defaults_correlation() {
        assert!(envelope(None).is_err());
        let id = Uuid::now_v7();
        let e = envelope(Some(&pb::CommandEnvelope {
            command_id: id.to_string(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(e.correlation_id, id);
        let err = envelope(Some(&pb::CommandEnvelope {
            command_id: "nope".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(err.to_string(), "envelope.command_id: must be a UUID");
    }

    #[test]
    fn json_keeps_integers_and_bounds_depth() {
        let mut s = prost_types::Struct::default();
        s.fields.insert(
            "n".into(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(3.0)),
            },
        );
        let j = json_object("m", Some(&s)).unwrap();
        assert_eq!(serde_json::Value::Object(j).to_string(), r#"{"n":3}"#);
        let mut deep = prost_types::Struct::default();
        for _ in 0..MAX_JSON_DEPTH + 1 {
            let mut outer = prost_types::Struct::default();
            outer.fields.insert(
                "x".into(),
                prost_types::Value {
                    kind: Some(Kind::StructValue(deep)),
                },
            );
            deep = outer;
        }
        assert!(json_object("m", Some(&deep)).is_err());
    }

    #[test]
    fn decimals_are_strings() {
        assert_eq!(decimal("x", "0.25").unwrap(), Decimal::new(25, 2));
        assert!(decimal("x", "1e999").is_err());
        assert!(decimal("x", "").is_err());
    }
}

/// The edge's one rule, field by field: every kind of string, number and JSON value a command
/// carries is refused when a read model, the audit log or an export could not hold it.
#[cfg(test)]
mod edge_tests {
    use super::*;

    const NUL: &str = "a\0b";

    /// Asserts that `r` was refused as invalid at exactly `path`.
    #[track_caller]
    fn refused_at<T: std::fmt::Debug>(r: Result<T, ApiError>, path: &str) -> String {
        match r {
            Err(ApiError::Invalid { field, message }) => {
                assert_eq!(field, path, "{message}");
                message
            }
            other => panic!("expected {path} to be refused, got {other:?}"),
        }
    }

    fn nul_struct(in_key: bool) -> prost_types::Struct {
        let mut s = prost_types::Struct::default();
        let (k, v) = if in_key { (NUL, "v") } else { ("k", NUL) };
        s.fields.insert(
            k.into(),
            prost_types::Value {
                kind: Some(Kind::StringValue(v.into())),
            },
        );
        s
    }

    fn task() -> pb::CreateTaskRequest {
        pb::CreateTaskRequest {
            task_id: Uuid::now_v7().to_string(),
            title: "t".into(),
            ..Default::default()
        }
    }

    fn problem() -> pb::SubmitProblemRequest {
        pb::SubmitProblemRequest {
            problem_id: Uuid::now_v7().to_string(),
            raw_text: "r".into(),
            ..Default::default()
        }
    }

    fn session() -> pb::CreateSessionRequest {
        pb::CreateSessionRequest {
            session_id: Uuid::now_v7().to_string(),
            agent_type: "research".into(),
            ..Default::default()
        }
    }

    fn decision() -> pb::RecordDecisionRequest {
        pb::RecordDecisionRequest {
            decision_id: Uuid::now_v7().to_string(),
            session_id: Uuid::now_v7().to_string(),
            event_type: pb::GovernanceEventType::PreAgentSpawn as i32,
            framework_type: "policy".into(),
            ..Default::default()
        }
    }

    #[test]
    fn nul_in_every_kind_of_string_field_is_refused_with_its_path() {
        let t = |f: fn(&mut pb::CreateTaskRequest)| {
            let mut r = task();
            f(&mut r);
            task::create(&r, "alice")
        };
        refused_at(t(|r| r.title = NUL.into()), "task.title");
        refused_at(t(|r| r.description = Some(NUL.into())), "task.description");
        refused_at(t(|r| r.tags = vec![NUL.into()]), "task.tags");
        refused_at(t(|r| r.owner = NUL.into()), "task.owner");
        refused_at(
            t(|r| r.task_id = format!("{}\0", Uuid::now_v7())),
            "task.task_id",
        );
        refused_at(
            task::reminder_failure(&pb::RecordReminderFailureRequest {
                task_id: Uuid::now_v7().to_string(),
                reminder_id: Uuid::now_v7().to_string(),
                error: NUL.into(),
                ..Default::default()
            }),
            "task.error",
        );
        refused_at(
            task::schedule_reminder(&pb::ScheduleReminderRequest {
                task_id: Uuid::now_v7().to_string(),
                reminder_id: Uuid::now_v7().to_string(),
                delivery_method: pb::DeliveryMethod::Push as i32,
                destination: NUL.into(),
                trigger_time: Some(prost_types::Timestamp::default()),
                ..Default::default()
            }),
            "task.destination",
        );

        let p = |f: fn(&mut pb::SubmitProblemRequest)| {
            let mut r = problem();
            f(&mut r);
            problem::submit(&r, "alice")
        };
        refused_at(p(|r| r.raw_text = NUL.into()), "problem.raw_text");
        refused_at(p(|r| r.title = Some(NUL.into())), "problem.title");
        refused_at(p(|r| r.submitter = NUL.into()), "problem.submitter");
        let key = refused_at(
            p(|r| r.metadata = Some(nul_struct(true))),
            "problem.metadata",
        );
        assert!(key.contains("key") && key.contains("NUL"), "{key}");
        let value = refused_at(
            p(|r| r.metadata = Some(nul_struct(false))),
            "problem.metadata",
        );
        assert!(
            value.contains("string value") && value.contains("NUL"),
            "{value}"
        );
        refused_at(
            problem::add_tree_node(&pb::AddTreeNodeRequest {
                problem_id: Uuid::now_v7().to_string(),
                node: Some(pb::TreeNode {
                    node_id: Uuid::now_v7().to_string(),
                    title: "ok".into(),
                    hypotheses: vec!["fine".into(), NUL.into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "problem.node.hypotheses[1]",
        );
        refused_at(
            problem::add_deliverable(&pb::AddDeliverableRequest {
                problem_id: Uuid::now_v7().to_string(),
                deliverable: Some(pb::Deliverable {
                    deliverable_id: Uuid::now_v7().to_string(),
                    deliverable_type: pb::DeliverableType::Pdf as i32,
                    file_path: "a.pdf".into(),
                    mime_type: Some(NUL.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "problem.deliverable.mime_type",
        );

        let s = |f: fn(&mut pb::CreateSessionRequest)| {
            let mut r = session();
            f(&mut r);
            agent_session::create(&r, "alice")
        };
        refused_at(s(|r| r.agent_type = NUL.into()), "session.agent_type");
        refused_at(s(|r| r.user = NUL.into()), "session.user");
        refused_at(
            s(|r| r.agent_config = Some(nul_struct(false))),
            "session.agent_config",
        );
        refused_at(
            agent_session::activate_persona(&pb::ActivatePersonaRequest {
                session_id: Uuid::now_v7().to_string(),
                persona_id: NUL.into(),
                trigger: "t".into(),
                ..Default::default()
            }),
            "session.persona_id",
        );

        let d = |f: fn(&mut pb::RecordDecisionRequest)| {
            let mut r = decision();
            f(&mut r);
            governance::record(&r, Uuid::now_v7())
        };
        refused_at(d(|r| r.reason = Some(NUL.into())), "decision.reason");
        refused_at(
            d(|r| r.framework_type = NUL.into()),
            "decision.framework_type",
        );
        refused_at(
            d(|r| r.decision_details = Some(nul_struct(true))),
            "decision.decision_details",
        );
    }

    #[test]
    fn ansi_escapes_are_refused_in_titles_and_kept_out_of_free_text() {
        let mut r = task();
        r.title = "\x1b[31mred\x1b[0m".into();
        let m = refused_at(task::create(&r, "alice"), "task.title");
        assert!(
            m.contains("control character") && m.contains("U+001B"),
            "{m}"
        );
        let mut r = task();
        r.description = Some("\x1b]0;pwned\x07".into());
        refused_at(task::create(&r, "alice"), "task.description");
        // Free text keeps line breaks and tabs.
        let mut r = task();
        r.description = Some("line 1\n\tline 2".into());
        assert!(task::create(&r, "alice").is_ok());
    }

    #[test]
    fn counts_beyond_bigint_are_refused_never_clamped() {
        let cost = |tokens| {
            agent_session::token_cost(&pb::RecordTokenCostRequest {
                session_id: Uuid::now_v7().to_string(),
                amount: "1".into(),
                tokens: Some(tokens),
                ..Default::default()
            })
        };
        let m = refused_at(cost(1 << 63), "session.tokens");
        assert_eq!(
            m,
            "must be at most 9223372036854775807 (got 9223372036854775808)"
        );
        assert!(cost(i64::MAX as u64).is_ok());
        let deliverable = |size| {
            problem::add_deliverable(&pb::AddDeliverableRequest {
                problem_id: Uuid::now_v7().to_string(),
                deliverable: Some(pb::Deliverable {
                    deliverable_id: Uuid::now_v7().to_string(),
                    deliverable_type: pb::DeliverableType::Pdf as i32,
                    file_path: "a.pdf".into(),
                    file_size: Some(size),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        refused_at(deliverable(u64::MAX), "problem.deliverable.file_size");
        assert!(deliverable(i64::MAX as u64).is_ok());
        let hours = problem::prioritize(&pb::PrioritizeNodeRequest {
            problem_id: Uuid::now_v7().to_string(),
            priority: Some(pb::NodePriority {
                node_id: Uuid::now_v7().to_string(),
                impact: 5,
                feasibility: 5,
                estimated_hours: Some(u32::MAX),
                ..Default::default()
            }),
            ..Default::default()
        });
        refused_at(hours, "problem.priority.estimated_hours");
    }

    #[test]
    fn amounts_have_a_strict_syntax_and_say_their_range() {
        for bad in [
            "1e3", "1_000", " 1.0", "1.0 ", "+1", ".5", "5.", "1,5", "0x10", "NaN", "--1",
        ] {
            let m = refused_at(money("session.amount", bad), "session.amount");
            assert!(m.starts_with("must be a decimal number"), "{bad:?}: {m}");
        }
        for big in [
            "1000000",
            "99999999999999999999999999999999",
            "999999.99991",
        ] {
            let m = refused_at(money("session.amount", big), "session.amount");
            assert!(m.contains("between 0 and 999999.9999"), "{big:?}: {m}");
        }
        assert_eq!(
            money("a", "999999.9999").unwrap().get().to_string(),
            "999999.9999"
        );
        assert_eq!(money("a", "0012.50").unwrap().get(), Decimal::new(125, 1));
        assert!(decimal("x", "-3.25").is_ok());
    }

    #[test]
    fn json_is_bounded_in_keys_key_length_depth_and_bytes() {
        let value = |s: &str| prost_types::Value {
            kind: Some(Kind::StringValue(s.into())),
        };
        let mut wide = prost_types::Struct::default();
        for i in 0..20_000 {
            wide.fields.insert(format!("k{i}"), value("v"));
        }
        let m = refused_at(
            json_object("problem.metadata", Some(&wide)),
            "problem.metadata",
        );
        assert!(m.contains("at most 1000 keys"), "{m}");

        let mut long_key = prost_types::Struct::default();
        long_key.fields.insert("k".repeat(257), value("v"));
        refused_at(json_object("m", Some(&long_key)), "m");

        let mut big = prost_types::Struct::default();
        for i in 0..10 {
            big.fields
                .insert(format!("k{i}"), value(&"x".repeat(10_000)));
        }
        let m = refused_at(json_object("m", Some(&big)), "m");
        assert!(m.contains("bytes"), "{m}");

        let mut deep = prost_types::Struct::default();
        for _ in 0..60 {
            let mut outer = prost_types::Struct::default();
            outer.fields.insert(
                "x".into(),
                prost_types::Value {
                    kind: Some(Kind::StructValue(deep)),
                },
            );
            deep = outer;
        }
        let m = refused_at(json_object("m", Some(&deep)), "m");
        assert!(m.contains("nested deeper"), "{m}");

        let mut ctl = prost_types::Struct::default();
        ctl.fields.insert("k\n".into(), value("v"));
        refused_at(json_object("m", Some(&ctl)), "m");
        let mut ok = prost_types::Struct::default();
        ok.fields.insert("k".into(), value("multi\nline 😀"));
        assert!(json_object("m", Some(&ok)).is_ok());
    }

    #[test]
    fn timestamps_stay_within_years_1_to_9999() {
        let at = |seconds, nanos| timestamp("t", &prost_types::Timestamp { seconds, nanos });
        assert!(at(MIN_TIMESTAMP_SECONDS, 0).is_ok());
        assert!(at(MAX_TIMESTAMP_SECONDS, 999_999_999).is_ok());
        refused_at(at(MAX_TIMESTAMP_SECONDS + 1, 0), "t");
        refused_at(at(MIN_TIMESTAMP_SECONDS - 1, 0), "t");
        refused_at(at(i64::MIN, 0), "t");
        refused_at(at(0, -1), "t");
        refused_at(at(0, 1_000_000_000), "t");
        assert_eq!(
            at(MAX_TIMESTAMP_SECONDS, 0).unwrap().to_rfc3339(),
            "9999-12-31T23:59:59+00:00"
        );
    }

    #[test]
    fn ids_are_canonical_whatever_their_spelling() {
        let id = Uuid::now_v7();
        let canonical = id.to_string();
        for spelling in [
            canonical.to_uppercase(),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            id.simple().to_string(),
        ] {
            assert_eq!(uuid("x", &spelling).unwrap().to_string(), canonical);
        }
    }
}
