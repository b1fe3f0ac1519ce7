//! Page sizes and opaque keyset page tokens.
//!
//! A token is URL-safe base64 (no padding) of a small JSON struct: the RPC it belongs to and
//! the sort key of the last row returned, e.g. `{"r":"ListProblems","k":["2030-03-01T09:00:00Z",
//! "0190…"]}`. The next page continues strictly after that key in the RPC's deterministic order
//! (every order ends with a unique id), so rows inserted meanwhile never shift a page and every
//! row that existed throughout is returned exactly once. Keys are parsed into typed values here
//! before they are bound as SQL parameters; a token of another RPC or a malformed one is
//! `INVALID_ARGUMENT`. Tokens do not expire and carry no tenant: the tenant always comes from
//! the caller's token, so a token replayed by another tenant only selects that tenant's rows.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::QueryError;

/// Rows per page when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The page size to use: 0 means [`DEFAULT_PAGE_SIZE`]; above [`MAX_PAGE_SIZE`] is refused (not
/// clamped, so that a client never silently gets fewer rows than it believes it asked for).
pub fn page_size(requested: u32) -> Result<i64, QueryError> {
    match requested {
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        n if n > MAX_PAGE_SIZE => Err(QueryError::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE_SIZE} (got {n})"),
        )),
        n => Ok(i64::from(n)),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Token {
    r: String,
    k: Vec<String>,
}

/// A decoded page token: the sort key of the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    keys: Vec<String>,
}

fn bad(message: &str) -> QueryError {
    QueryError::invalid("page_token", message.to_owned())
}

impl Cursor {
    /// Decodes `token` of `rpc` whose key has `arity` parts; `None` for an empty token.
    pub fn decode(token: &str, rpc: &str, arity: usize) -> Result<Option<Cursor>, QueryError> {
        if token.is_empty() {
            return Ok(None);
        }
        if token.len() > 2048 {
            return Err(bad("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad("not a page token"))?;
        let parsed: Token = serde_json::from_slice(&bytes).map_err(|_| bad("not a page token"))?;
        if parsed.r != rpc {
            return Err(bad("belongs to another RPC"));
        }
        if parsed.k.len() != arity {
            return Err(bad("not a page token"));
        }
        Ok(Some(Cursor { keys: parsed.k }))
    }

    /// Encodes the sort key `keys` of a row of `rpc` as a token.
    pub fn encode(rpc: &str, keys: Vec<String>) -> String {
        let token = Token {
            r: rpc.to_owned(),
            k: keys,
        };
        // Serialising a struct of strings cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }

    fn key(&self, i: usize) -> Result<&str, QueryError> {
        self.keys
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| bad("not a page token"))
    }

    /// Key part `i` as text.
    pub fn text(&self, i: usize) -> Result<String, QueryError> {
        self.key(i).map(str::to_owned)
    }

    /// Key part `i` as an instant.
    pub fn time(&self, i: usize) -> Result<DateTime<Utc>, QueryError> {
        DateTime::parse_from_rfc3339(self.key(i)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| bad("not a page token"))
    }

    /// Key part `i` as a UUID.
    pub fn uuid(&self, i: usize) -> Result<Uuid, QueryError> {
        Uuid::parse_str(self.key(i)?).map_err(|_| bad("not a page token"))
    }

    /// Key part `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, QueryError> {
        self.key(i)?.parse().map_err(|_| bad("not a page token"))
    }

    /// Key part `i` as a date.
    pub fn date(&self, i: usize) -> Result<NaiveDate, QueryError> {
        self.key(i)?.parse().map_err(|_| bad("not a page token"))
    }
}

/// An instant as a key part (microseconds, like Postgres, so the round trip is exact).
pub fn time_key(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Cuts the `limit + 1` rows fetched for a page down to `limit` and makes the next token from
/// the last row kept (empty when there was no extra row, i.e. this is the last page).
pub fn paginate<T>(
    mut rows: Vec<T>,
    limit: i64,
    rpc: &str,
    key: impl Fn(&T) -> Vec<String>,
) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return (rows, String::new());
    }
    rows.truncate(limit);
    let next = rows
        .last()
        .map(|last| Cursor::encode(rpc, key(last)))
        .unwrap_or_default();
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_rpc() {
        let t = Utc::now();
        let id = Uuid::now_v7();
        let token = Cursor::encode("ListProblems", vec![time_key(&t), id.to_string()]);
        let c = Cursor::decode(&token, "ListProblems", 2).unwrap().unwrap();
        assert_eq!(c.time(0).unwrap().timestamp_micros(), t.timestamp_micros());
        assert_eq!(c.uuid(1).unwrap(), id);
        assert!(Cursor::decode(&token, "ListTasks", 2).is_err());
        assert!(Cursor::decode("garbage!", "ListProblems", 2).is_err());
        assert_eq!(Cursor::decode("", "ListProblems", 2).unwrap(), None);
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(500).unwrap(), 500);
        assert!(page_size(501).is_err());
    }

    #[test]
    fn paginate_emits_a_token_only_when_more_rows_exist() {
        let (rows, next) = paginate(vec![1, 2, 3], 2, "X", |r| vec![r.to_string()]);
        assert_eq!(rows, vec![1, 2]);
        let c = Cursor::decode(&next, "X", 1).unwrap().unwrap();
        assert_eq!(c.int(0).unwrap(), 2);
        let (_, next) = paginate(vec![1, 2], 2, "X", |r| vec![r.to_string()]);
        assert!(next.is_empty());
    }
}
