//! Validated value types shared by the aggregates ("parse, don't validate").
//!
//! Every type here has private fields and is only built through a constructor that checks the
//! rule, and its `Deserialize` goes through the same constructor (`serde(try_from)`), so a payload
//! read back from the store cannot smuggle in an invalid value either.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::error::DomainError;

/// Free-form JSON object (seed `metadata`, `agent_config`, `validation_context`, …).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $code:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "Uuid", into = "Uuid")]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID; the nil UUID is rejected because it is what a forgotten field decodes to.
            pub fn new(id: Uuid) -> Result<Self, DomainError> {
                if id.is_nil() {
                    return Err(DomainError::invalid($code, $field, concat!($field, " must not be the nil UUID")));
                }
                Ok($name(id))
            }

            /// Parses the textual UUID form.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                let id = Uuid::parse_str(s.trim()).map_err(|e| {
                    DomainError::invalid($code, $field, format!(concat!($field, " is not a UUID: {}"), e))
                })?;
                Self::new(id)
            }

            /// A deterministic UUID v5 id for `name` (never nil: v5 sets version bits).
            #[allow(dead_code)]
            pub(crate) fn derived(name: &str) -> Self {
                $name(derived_uuid(name))
            }

            /// The underlying UUID (also the event-store stream id where this is an aggregate id).
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl TryFrom<Uuid> for $name {
            type Error = DomainError;
            fn try_from(id: Uuid) -> Result<Self, DomainError> {
                Self::new(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identity of a problem (stream id of the `problem` stream).
    ProblemId, "problem_id", "problem.invalid_id"
);
uuid_id!(
    /// Identity of a task (stream id of the `task` stream).
    TaskId, "task_id", "task.invalid_id"
);
uuid_id!(
    /// Identity of an agent session (stream id of the `agent_session` stream).
    AgentSessionId, "agent_session_id", "agent_session.invalid_id"
);
uuid_id!(
    /// Identity of a governance decision (stream id of the `governance_decision` stream).
    GovernanceDecisionId, "decision_id", "governance.invalid_id"
);
uuid_id!(
    /// Identity of an issue-tree node inside a problem.
    NodeId, "node_id", "problem.invalid_node_id"
);
uuid_id!(
    /// Identity of an analysis plan inside a problem.
    PlanId, "plan_id", "problem.invalid_plan_id"
);
uuid_id!(
    /// Identity of an analysis result inside a problem.
    ResultId, "result_id", "problem.invalid_result_id"
);
uuid_id!(
    /// Identity of an analysis artifact inside a result.
    ArtifactId, "artifact_id", "problem.invalid_artifact_id"
);
uuid_id!(
    /// Identity of a recommendation inside a problem.
    RecommendationId, "recommendation_id", "problem.invalid_recommendation_id"
);
uuid_id!(
    /// Identity of a deliverable inside a problem.
    DeliverableId, "deliverable_id", "problem.invalid_deliverable_id"
);
uuid_id!(
    /// Identity of a task's reminder.
    ReminderId, "reminder_id", "task.invalid_reminder_id"
);
uuid_id!(
    /// Identity of an organization (owner of problems).
    OrganizationId, "organization_id", "problem.invalid_organization_id"
);

/// Namespace for deterministic (UUID v5) ids derived by the domain, so that a redelivered
/// trigger derives the same id and a duplicate create is refused instead of doubling work.
pub const ANNALS_NAMESPACE: Uuid = Uuid::from_u128(0x6a1b_0c2e_5f3d_4e8a_9b7c_1d2e_3f4a_5b6c);

pub(crate) fn derived_uuid(name: &str) -> Uuid {
    Uuid::new_v5(&ANNALS_NAMESPACE, name.as_bytes())
}

/// Which characters a text field may hold besides printable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A name, title, tag or reference: one line, no control character at all.
    Line,
    /// Free text (descriptions, raw text, reasons): tab, line feed and carriage return allowed.
    Free,
}

/// The one text rule of the edge: a value is accepted only if every read model, the audit log
/// and an export can store it as given. NUL is refused everywhere (Postgres `text` and `jsonb`
/// cannot hold it); other control characters (ANSI escapes, backspace, C1 controls) are refused
/// because they are never content and rewrite terminals and logs that print them; free text may
/// keep tab and line breaks.
pub fn check_text(field: &'static str, s: &str, kind: TextKind) -> Result<(), DomainError> {
    let Some((i, c)) = s.chars().enumerate().find(|(_, c)| match kind {
        TextKind::Line => c.is_control(),
        TextKind::Free => c.is_control() && !matches!(c, '\t' | '\n' | '\r'),
    }) else {
        return Ok(());
    };
    let (code, what) = if c == '\0' {
        ("value.nul_character", "a NUL character")
    } else {
        ("value.control_character", "a control character")
    };
    Err(DomainError::invalid(
        code,
        field,
        format!(
            "{field} must not contain {what} (U+{:04X} at character {i})",
            u32::from(c)
        ),
    ))
}

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $field:literal, $kind:expr, $min:expr, $max:expr, $code_empty:literal, $code_long:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Smallest accepted length in characters (after trimming).
            pub const MIN_CHARS: usize = $min;
            /// Largest accepted length in characters (after trimming).
            pub const MAX_CHARS: usize = $max;

            /// Trims surrounding whitespace, checks the length in characters (not bytes) and
            /// the text rule ([`check_text`]).
            pub fn parse(s: impl AsRef<str>) -> Result<Self, DomainError> {
                let v = Self::stored(s)?;
                check_text($field, &v.0, $kind)?;
                Ok(v)
            }

            /// The length rule only: how a payload read back from the store is checked.
            /// Events written before the text rule may hold characters it now refuses;
            /// refusing them on load would make their aggregate unreadable for good.
            fn stored(s: impl AsRef<str>) -> Result<Self, DomainError> {
                let t = s.as_ref().trim();
                let n = t.chars().count();
                if n < Self::MIN_CHARS {
                    return Err(DomainError::invalid(
                        $code_empty,
                        $field,
                        format!(concat!($field, " must have at least {} character(s)"), Self::MIN_CHARS),
                    ));
                }
                if n > Self::MAX_CHARS {
                    return Err(DomainError::invalid(
                        $code_long,
                        $field,
                        format!(concat!($field, " must have at most {} characters (got {})"), Self::MAX_CHARS, n),
                    ));
                }
                Ok($name(t.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, DomainError> {
                Self::stored(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_text!(
    /// Problem title: 1–255 characters (seed `VARCHAR(255)`).
    ProblemTitle, "title", TextKind::Line, 1, 255, "problem.title_empty", "problem.title_too_long"
);
bounded_text!(
    /// The problem statement as submitted: 1–100,000 characters.
    RawText, "raw_text", TextKind::Free, 1, 100_000, "problem.raw_text_empty", "problem.raw_text_too_long"
);
bounded_text!(
    /// Task title: 1–500 characters.
    TaskTitle, "title", TextKind::Line, 1, 500, "task.title_empty", "task.title_too_long"
);
bounded_text!(
    /// A reference to a user or service (submitter, owner, created_by): 1–255 characters.
    UserRef, "user", TextKind::Line, 1, 255, "value.user_empty", "value.user_too_long"
);
bounded_text!(
    /// A task tag: 1–50 characters.
    Tag, "tags", TextKind::Line, 1, 50, "task.tag_empty", "task.tag_too_long"
);
bounded_text!(
    /// Persona identifier (seed `persona_id VARCHAR(100)`).
    PersonaId, "persona_id", TextKind::Line, 1, 100, "agent_session.persona_id_empty", "agent_session.persona_id_too_long"
);
bounded_text!(
    /// Kind of agent (seed `agent_type VARCHAR(100)`).
    AgentType, "agent_type", TextKind::Line, 1, 100, "agent_session.agent_type_empty", "agent_session.agent_type_too_long"
);
bounded_text!(
    /// A file path or object key (seed `file_path VARCHAR(500)`).
    FilePath, "file_path", TextKind::Line, 1, 500, "value.file_path_empty", "value.file_path_too_long"
);
bounded_text!(
    /// A MIME type (seed `mime_type VARCHAR(100)`).
    MimeType, "mime_type", TextKind::Line, 1, 100, "value.mime_type_empty", "value.mime_type_too_long"
);

/// General non-empty text (goals, summaries, reasons, list items): 1–10,000 characters.
///
/// One type serves many fields, so the field name is passed to the constructor and reported in
/// the error (`DomainError::field`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    /// Largest accepted length in characters.
    pub const MAX_CHARS: usize = 10_000;

    /// Trims and checks 1..=10,000 characters and the free-text rule ([`check_text`]),
    /// reporting `field` on failure.
    pub fn parse(field: &'static str, s: impl AsRef<str>) -> Result<Self, DomainError> {
        let v = Self::stored(field, s)?;
        check_text(field, &v.0, TextKind::Free)?;
        Ok(v)
    }

    /// Like [`Text::parse`] for a one-line value (a node title, a name): no control
    /// character at all.
    pub fn parse_line(field: &'static str, s: impl AsRef<str>) -> Result<Self, DomainError> {
        let v = Self::stored(field, s)?;
        check_text(field, &v.0, TextKind::Line)?;
        Ok(v)
    }

    /// The length rule only, for payloads read back from the store (see `bounded_text`).
    fn stored(field: &'static str, s: impl AsRef<str>) -> Result<Self, DomainError> {
        let t = s.as_ref().trim();
        let n = t.chars().count();
        if n == 0 {
            return Err(DomainError::invalid(
                "value.text_empty",
                field,
                format!("{field} must not be empty"),
            ));
        }
        if n > Self::MAX_CHARS {
            return Err(DomainError::invalid(
                "value.text_too_long",
                field,
                format!(
                    "{field} must have at most {} characters (got {n})",
                    Self::MAX_CHARS
                ),
            ));
        }
        Ok(Text(t.to_owned()))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Text {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::stored("text", s)
    }
}

impl From<Text> for String {
    fn from(v: Text) -> String {
        v.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a list of texts, bounding its length so one command cannot carry unbounded data.
pub fn text_list<S: AsRef<str>>(
    field: &'static str,
    items: impl IntoIterator<Item = S>,
    max_items: usize,
) -> Result<Vec<Text>, DomainError> {
    let out = items
        .into_iter()
        .map(|s| Text::parse(field, s))
        .collect::<Result<Vec<_>, _>>()?;
    check_len(field, &out, max_items)?;
    Ok(out)
}

/// Fails with `value.too_many_items` when `items` is longer than `max_items`.
pub fn check_len<T>(field: &'static str, items: &[T], max_items: usize) -> Result<(), DomainError> {
    if items.len() > max_items {
        return Err(DomainError::invalid(
            "value.too_many_items",
            field,
            format!(
                "{field} may have at most {max_items} items (got {})",
                items.len()
            ),
        ));
    }
    Ok(())
}

macro_rules! bounded_int {
    ($(#[$doc:meta])* $name:ident($int:ty = $intname:literal), $field:literal, $min:expr, $max:expr, $code:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = $intname, into = $intname)]
        pub struct $name($int);

        impl $name {
            /// Smallest accepted value.
            pub const MIN: $int = $min;
            /// Largest accepted value.
            pub const MAX: $int = $max;

            /// Checks the inclusive range.
            pub fn new(v: $int) -> Result<Self, DomainError> {
                if !(Self::MIN..=Self::MAX).contains(&v) {
                    return Err(DomainError::invalid(
                        $code,
                        $field,
                        format!(concat!($field, " must be between {} and {} (got {})"), Self::MIN, Self::MAX, v),
                    ));
                }
                Ok($name(v))
            }

            /// The validated number.
            pub fn get(self) -> $int {
                self.0
            }
        }

        impl TryFrom<$int> for $name {
            type Error = DomainError;
            fn try_from(v: $int) -> Result<Self, DomainError> {
                Self::new(v)
            }
        }

        impl From<$name> for $int {
            fn from(v: $name) -> $int {
                v.0
            }
        }
    };
}

bounded_int!(
    /// Impact score of an issue-tree node: 1–10.
    Impact(u8 = "u8"), "impact", 1, 10, "problem.impact_out_of_range"
);
bounded_int!(
    /// Feasibility score of an issue-tree node: 1–10.
    Feasibility(u8 = "u8"), "feasibility", 1, 10, "problem.feasibility_out_of_range"
);
bounded_int!(
    /// Feedback rating: 1–5.
    Rating(u8 = "u8"), "rating", 1, 5, "problem.rating_out_of_range"
);
bounded_int!(
    /// Recommendation priority: 1 (highest) – 3.
    RecommendationPriority(u8 = "u8"), "priority", 1, 3, "problem.recommendation_priority_out_of_range"
);
bounded_int!(
    /// Recurrence interval: every 1–365 units of the pattern.
    RecurrenceInterval(u32 = "u32"), "recurrence.interval", 1, 365, "task.recurrence_interval_out_of_range"
);
bounded_int!(
    /// Reminder lead time before the due date, in minutes: 1 minute – 30 days.
    LeadTimeMinutes(u32 = "u32"), "reminder.lead_time_minutes", 1, 43_200, "task.reminder_lead_time_out_of_range"
);

/// A confidence between 0 and 1 inclusive, kept as an exact decimal with at most 2 places
/// (seed `DECIMAL(3,2)`), so it compares and round-trips exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Confidence(Decimal);

impl Confidence {
    /// Checks `0 <= v <= 1` with at most two decimal places.
    pub fn new(v: Decimal) -> Result<Self, DomainError> {
        if v < Decimal::ZERO || v > Decimal::ONE {
            return Err(DomainError::invalid(
                "value.confidence_out_of_range",
                "confidence",
                format!("confidence must be between 0 and 1 (got {v})"),
            ));
        }
        if v.normalize().scale() > 2 {
            return Err(DomainError::invalid(
                "value.confidence_too_precise",
                "confidence",
                format!("confidence may have at most 2 decimal places (got {v})"),
            ));
        }
        Ok(Confidence(v.normalize()))
    }

    /// The validated decimal.
    pub fn get(self) -> Decimal {
        self.0
    }
}

impl TryFrom<Decimal> for Confidence {
    type Error = DomainError;
    fn try_from(v: Decimal) -> Result<Self, DomainError> {
        Self::new(v)
    }
}

impl From<Confidence> for Decimal {
    fn from(v: Confidence) -> Decimal {
        v.0
    }
}

/// A non-negative amount of money with at most 4 decimal places (seed `DECIMAL(10,4)`), never
/// a float, so sums of recorded costs are exact.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Money(Decimal);

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Largest single amount accepted (fits the seed's `DECIMAL(10,4)`).
    pub fn max_amount() -> Decimal {
        Decimal::new(9_999_999_999, 4)
    }

    /// Checks `0 <= v <= 999999.9999` with at most 4 decimal places.
    pub fn new(v: Decimal) -> Result<Self, DomainError> {
        if v < Decimal::ZERO {
            return Err(DomainError::invalid(
                "value.money_negative",
                "amount",
                format!("amount must not be negative (got {v})"),
            ));
        }
        if v.normalize().scale() > 4 {
            return Err(DomainError::invalid(
                "value.money_too_precise",
                "amount",
                format!("amount may have at most 4 decimal places (got {v})"),
            ));
        }
        if v > Self::max_amount() {
            return Err(DomainError::invalid(
                "value.money_too_large",
                "amount",
                format!("amount must be at most {} (got {v})", Self::max_amount()),
            ));
        }
        Ok(Money(v.normalize()))
    }

    /// The validated decimal.
    pub fn get(self) -> Decimal {
        self.0
    }

    /// Exact sum; totals are allowed to exceed the single-amount bound.
    pub fn plus(self, other: Money) -> Money {
        Money(self.0 + other.0)
    }
}

impl TryFrom<Decimal> for Money {
    type Error = DomainError;
    fn try_from(v: Decimal) -> Result<Self, DomainError> {
        // A stored running total may exceed the single-amount bound; only sign and scale matter.
        if v < Decimal::ZERO || v.normalize().scale() > 4 {
            return Self::new(v);
        }
        Ok(Money(v.normalize()))
    }
}

impl From<Money> for Decimal {
    fn from(v: Money) -> Decimal {
        v.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partial update of one field: keep the current value, set a new one, or clear it.
///
/// Absent in JSON means `Keep`, so update events stay small and old payloads stay readable when
/// a new updatable field is added.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Patch<T> {
    /// Leave the field unchanged.
    #[default]
    Keep,
    /// Replace the field's value.
    Set(T),
    /// Remove the field's value.
    Clear,
}

impl<T> Patch<T> {
    /// True for [`Patch::Keep`] (used to omit it when serialising).
    pub fn is_keep(&self) -> bool {
        matches!(self, Patch::Keep)
    }

    /// Applies the patch to an optional field.
    pub fn apply(&self, current: Option<T>) -> Option<T>
    where
        T: Clone,
    {
        match self {
            Patch::Keep => current,
            Patch::Set(v) => Some(v.clone()),
            Patch::Clear => None,
        }
    }
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $field:literal, $code:literal { $( $(#[$vdoc:meta])* $variant:ident = $s:literal ),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vdoc])* #[serde(rename = $s)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable wire/database spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)+ }
            }

            /// Parses the wire spelling; the error lists the accepted values.
            pub fn parse(s: &str) -> Result<Self, $crate::error::DomainError> {
                match s.trim() {
                    $($s => Ok($name::$variant),)+
                    other => Err($crate::error::DomainError::invalid(
                        $code,
                        $field,
                        format!(concat!($field, " must be one of [", $($s, " "),+ , "] (got {:?})"), other),
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// A coarse low/medium/high level (frame confidence, priority hints, risk probability/impact).
    Level, "level", "value.invalid_level" {
        /// Low.
        Low = "low",
        /// Medium.
        Medium = "medium",
        /// High.
        High = "high",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_count_characters_and_trim() {
        assert!(TaskTitle::parse("é".repeat(500)).is_ok());
        let e = TaskTitle::parse("x".repeat(501)).unwrap_err();
        assert_eq!(e.code(), "task.title_too_long");
        assert_eq!(e.field(), Some("title"));
        assert_eq!(
            TaskTitle::parse("   ").unwrap_err().code(),
            "task.title_empty"
        );
        assert_eq!(TaskTitle::parse("  a ").unwrap().as_str(), "a");
        assert_eq!(
            ProblemTitle::parse("x".repeat(256)).unwrap_err().code(),
            "problem.title_too_long"
        );
    }

    #[test]
    fn text_rule_refuses_nul_and_controls() {
        for bad in ["a\0b", "\x1b[31mred", "a\u{7f}", "a\u{85}b", "a\nb", "a\tb"] {
            let e = TaskTitle::parse(bad).unwrap_err();
            assert!(
                e.code() == "value.nul_character" || e.code() == "value.control_character",
                "{bad:?}: {e:?}"
            );
        }
        assert_eq!(Tag::parse("x\0").unwrap_err().code(), "value.nul_character");
        assert_eq!(
            Text::parse("description", "a\0").unwrap_err().code(),
            "value.nul_character"
        );
        assert_eq!(
            Text::parse("description", "\x1b[2J").unwrap_err().code(),
            "value.control_character"
        );
        // Free text keeps tab and line breaks; astral characters are text like any other.
        assert!(Text::parse("description", "line 1\r\n\tline 2 \u{1F600}").is_ok());
        assert!(RawText::parse("a\nb").is_ok());
        assert!(Text::parse_line("title", "a\nb").is_err());
        let e = UserRef::parse("bob\u{1b}").unwrap_err();
        assert_eq!(e.field(), Some("user"));
        assert!(e.message().contains("U+001B"), "{}", e.message());
    }

    #[test]
    fn stored_payloads_keep_the_length_rule_only() {
        // An event written before the text rule must still load.
        let t: TaskTitle = serde_json::from_str("\"a\\u001bb\"").unwrap();
        assert_eq!(t.as_str(), "a\u{1b}b");
        assert!(serde_json::from_str::<TaskTitle>("\"  \"").is_err());
    }

    #[test]
    fn deserialising_goes_through_validation() {
        let r: Result<TaskTitle, _> = serde_json::from_str("\"\"");
        assert!(r.is_err());
        let r: Result<Impact, _> = serde_json::from_str("11");
        assert!(r.is_err());
        let r: Result<Impact, _> = serde_json::from_str("10");
        assert_eq!(r.unwrap().get(), 10);
        let r: Result<TaskId, _> = serde_json::from_str("\"00000000-0000-0000-0000-000000000000\"");
        assert!(r.is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(
            Impact::new(0).unwrap_err().code(),
            "problem.impact_out_of_range"
        );
        assert_eq!(
            Feasibility::new(11).unwrap_err().code(),
            "problem.feasibility_out_of_range"
        );
        assert_eq!(
            Rating::new(6).unwrap_err().code(),
            "problem.rating_out_of_range"
        );
        assert!(Rating::new(1).is_ok());
        assert_eq!(
            RecommendationPriority::new(4).unwrap_err().code(),
            "problem.recommendation_priority_out_of_range"
        );
        assert_eq!(
            Confidence::new(Decimal::new(101, 2)).unwrap_err().code(),
            "value.confidence_out_of_range"
        );
        assert_eq!(
            Confidence::new(Decimal::new(-1, 2)).unwrap_err().code(),
            "value.confidence_out_of_range"
        );
        assert_eq!(
            Confidence::new(Decimal::new(555, 3)).unwrap_err().code(),
            "value.confidence_too_precise"
        );
        assert!(Confidence::new(Decimal::ONE).is_ok());
    }

    #[test]
    fn money_is_exact_and_bounded() {
        let a = Money::new(Decimal::new(1, 1)).unwrap();
        let b = Money::new(Decimal::new(2, 1)).unwrap();
        assert_eq!(a.plus(b).get(), Decimal::new(3, 1));
        assert_eq!(
            Money::new(Decimal::new(-1, 0)).unwrap_err().code(),
            "value.money_negative"
        );
        assert_eq!(
            Money::new(Decimal::new(1, 5)).unwrap_err().code(),
            "value.money_too_precise"
        );
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"0.1\"");
    }

    #[test]
    fn enums_parse_their_wire_names() {
        assert_eq!(Level::parse("high").unwrap(), Level::High);
        let e = Level::parse("extreme").unwrap_err();
        assert_eq!(e.code(), "value.invalid_level");
        assert!(e.message().contains("low"));
    }

    #[test]
    fn patch_roundtrips() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct P {
            #[serde(default, skip_serializing_if = "Patch::is_keep")]
            x: Patch<u8>,
        }
        for p in [Patch::Keep, Patch::Set(3), Patch::Clear] {
            let v = P { x: p };
            let s = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<P>(&s).unwrap(), v);
        }
    }
}
