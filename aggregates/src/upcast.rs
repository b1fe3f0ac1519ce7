//! Upcasting: turning an older schema version of a stored payload into the current one.
//!
//! Events are immutable, so a schema change never rewrites the store; instead each change ships
//! a pure step `v(n) -> v(n+1)` on the raw JSON, registered here. Readers chain the steps up to
//! the current version before deserialising, so `evolve` and projections only ever see the
//! newest shape.
//!
//! | event type | step | change |
//! |---|---|---|
//! | `task.created` | v1 → v2 | add `tags: []` (tags did not exist in v1) |

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::error::UpcastError;

/// One upcasting step from version `n` to `n + 1`; the `String` error becomes
/// [`UpcastError::InvalidPayload`].
pub type UpcastStep = fn(Value) -> Result<Value, String>;

/// Upcasting steps keyed by `(event type, from version)`.
#[derive(Debug, Clone, Default)]
pub struct UpcasterRegistry {
    steps: BTreeMap<(String, u32), UpcastStep>,
}

impl UpcasterRegistry {
    /// A registry with no steps.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry holding every upcaster this crate ships.
    pub fn with_domain_upcasters() -> Self {
        let mut r = Self::empty();
        crate::task::register_upcasters(&mut r);
        r
    }

    /// Registers the step that turns `event_type` payloads of `from_version` into `from_version + 1`.
    pub fn register(&mut self, event_type: &str, from_version: u32, step: UpcastStep) -> &mut Self {
        self.steps
            .insert((event_type.to_owned(), from_version), step);
        self
    }

    /// Applies steps until the payload reaches `current_version`.
    pub fn upcast(
        &self,
        event_type: &str,
        stored_version: u32,
        current_version: u32,
        mut payload: Value,
    ) -> Result<Value, UpcastError> {
        if stored_version > current_version {
            return Err(UpcastError::FutureVersion {
                event_type: event_type.to_owned(),
                found: stored_version,
                current: current_version,
            });
        }
        let mut v = stored_version;
        while v < current_version {
            let step = self.steps.get(&(event_type.to_owned(), v)).ok_or_else(|| {
                UpcastError::MissingUpcaster {
                    event_type: event_type.to_owned(),
                    from_version: v,
                }
            })?;
            payload = step(payload).map_err(|reason| UpcastError::InvalidPayload {
                event_type: event_type.to_owned(),
                schema_version: v,
                reason,
            })?;
            v += 1;
        }
        Ok(payload)
    }
}

/// The process-wide registry with the domain's upcasters, used by every `from_stored`.
pub fn registry() -> &'static UpcasterRegistry {
    static REGISTRY: LazyLock<UpcasterRegistry> =
        LazyLock::new(UpcasterRegistry::with_domain_upcasters);
    &REGISTRY
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chains_steps_and_reports_gaps() {
        let mut r = UpcasterRegistry::empty();
        r.register("x.happened", 1, |mut v| {
            v["a"] = json!(1);
            Ok(v)
        });
        r.register("x.happened", 2, |mut v| {
            v["b"] = json!(2);
            Ok(v)
        });
        assert_eq!(
            r.upcast("x.happened", 1, 3, json!({})).unwrap(),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(r.upcast("x.happened", 3, 3, json!({})).unwrap(), json!({}));
        assert!(matches!(
            r.upcast("x.happened", 4, 3, json!({})),
            Err(UpcastError::FutureVersion { found: 4, .. })
        ));
        assert!(matches!(
            r.upcast("y.happened", 1, 2, json!({})),
            Err(UpcastError::MissingUpcaster {
                from_version: 1,
                ..
            })
        ));
    }
}
