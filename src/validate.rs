//! Input rules shared by REST and WebSocket: each check names the field it failed on, and a request's
//! checks are gathered so one response lists every bad field.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::{ApiError, FieldError};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// Collects field errors; `finish` turns any into one `validation` error.
#[derive(Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.0.push(FieldError::new(field, message));
        }
        self
    }
    pub fn add(&mut self, result: Result<(), FieldError>) -> &mut Self {
        if let Err(e) = result {
            self.0.push(e);
        }
        self
    }
    /// Records a failed check, or hands back what a passed one produced (a normalized value).
    pub fn keep<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(std::mem::take(&mut self.0)))
        }
    }
}

pub fn username(name: &str) -> Result<(), FieldError> {
    let len = name.chars().count();
    let charset_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !(3..=32).contains(&len) || !charset_ok {
        return Err(FieldError::new("username", "must be 3-32 characters of letters, digits, '_', '.' or '-'"));
    }
    Ok(())
}

pub fn password(field: &str, pw: &str) -> Result<(), FieldError> {
    let len = pw.chars().count();
    if len < 8 {
        return Err(FieldError::new(field, "must be at least 8 characters"));
    }
    if pw.len() > 1024 {
        return Err(FieldError::new(field, "must be at most 1024 bytes"));
    }
    Ok(())
}

/// A room name as stored: NFC-normalized, 1-64 characters, no leading or trailing space, and nothing
/// invisible or direction-changing. Without these rules `General`, `General\u{200b}` and a name
/// spelled with a right-to-left override would be different rooms that look the same.
pub fn room_name(name: &str) -> Result<String, FieldError> {
    let normalized = icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(name);
    let trimmed = normalized.trim();
    let len = trimmed.chars().count();
    if len == 0 || len > 64 || trimmed.len() != normalized.len() {
        return Err(FieldError::new("name", "must be 1-64 characters, with no leading or trailing spaces"));
    }
    // Default_Ignorable_Code_Point: zero-width characters, joiners, bidi marks and overrides,
    // variation selectors, fillers and tags. Plus controls and the line/paragraph separators.
    let invisible = icu_properties::CodePointSetData::new::<icu_properties::props::DefaultIgnorableCodePoint>();
    if let Some(c) =
        normalized.chars().find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || invisible.contains(*c))
    {
        return Err(FieldError::new(
            "name",
            format!("must not contain control, zero-width or direction-changing characters (found U+{:04X})", c as u32),
        ));
    }
    Ok(normalized.into_owned())
}

/// Message content: not blank, at most `max_bytes` of UTF-8. Too long is its own error (413).
pub fn content(content: &str, max_bytes: usize) -> Result<(), ApiError> {
    if content.len() > max_bytes {
        return Err(ApiError::TooLarge(max_bytes));
    }
    if content.trim().is_empty() {
        return Err(ApiError::field("content", "must not be empty"));
    }
    if content.contains('\0') {
        // PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
        return Err(ApiError::field("content", "must not contain NUL characters"));
    }
    Ok(())
}

pub fn client_msg_id(id: Option<&str>) -> Result<(), FieldError> {
    match id {
        Some(id) if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) => {
            Err(FieldError::new("client_msg_id", "must be 1-64 printable characters"))
        }
        _ => Ok(()),
    }
}

pub fn seq(field: &str, value: Option<i64>) -> Result<(), FieldError> {
    match value {
        Some(v) if v < 0 => Err(FieldError::new(field, "must not be negative")),
        _ => Ok(()),
    }
}

/// `?limit=`: default 50, 1..=200.
pub fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field("limit", "must be between 1 and 200")),
    }
}

/// Cursors are opaque to clients: base64url of the last key of the previous page.
pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, ApiError> {
    cursor
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|key| !key.chars().any(char::is_control))
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this server issued"))
        })
        .transpose()
}

/// Given a page fetched with `limit + 1` rows: trims the extra row and returns the cursor for the
/// next page if it existed.
/// A cursor that carries a row id (keyset pagination by id).
pub fn decode_uuid_cursor(cursor: Option<&str>) -> Result<Option<uuid::Uuid>, ApiError> {
    decode_cursor(cursor)?
        .map(|c| c.parse().map_err(|_| ApiError::field("cursor", "is not a cursor this server issued")))
        .transpose()
}

pub fn next_cursor<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Option<String> {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|last| encode_cursor(&key(last)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("al").is_err());
        assert!(username("alice").is_ok());
        assert!(username("a.l-i_ce9").is_ok());
        assert!(username("alice!").is_err());
        assert!(username("élodie").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn content_limits() {
        assert!(matches!(content("  ", 10), Err(ApiError::Validation(_))));
        assert!(matches!(content("hello world!", 10), Err(ApiError::TooLarge(10))));
        assert!(content("hello", 10).is_ok());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor("bob|42");
        assert_eq!(decode_cursor(Some(&c)).ok().flatten().as_deref(), Some("bob|42"));
        assert!(decode_cursor(Some("***")).is_err());
        assert!(matches!(decode_cursor(None), Ok(None)));
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None).ok(), Some(50));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(201)).is_err());
        assert_eq!(limit(Some(200)).ok(), Some(200));
    }
}
