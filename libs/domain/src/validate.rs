//! Checks of single values, shared by the aggregates.
//!
//! Each takes the name of the field as the command calls it, so the error says which value is
//! wrong. Values that may hold secrets (locations, endpoints) are never echoed in errors.

use arca_events::{Retention, TargetKind, TargetSettings};

use crate::DomainError;

/// The longest name of anything (tenant, target, policy, …), in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The longest site label: it is a NATS subject token (`arca.job.<kind>.<site>`).
pub const MAX_SITE_CHARS: usize = 32;

/// A display name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control characters.
/// Returns the trimmed name, which is what events carry.
pub fn name(field: &'static str, raw: &str) -> Result<String, DomainError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(DomainError::invalid(field, format!("is {chars} characters long; at most {MAX_NAME_CHARS}")));
    }
    if name.chars().any(char::is_control) {
        return Err(DomainError::invalid(field, "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// Free text that must say something (a reason, an error, a host): not blank.
pub fn not_blank(field: &'static str, text: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// A site label: 1 to [`MAX_SITE_CHARS`] of `A-Z a-z 0-9 _ -`, so it is a single NATS subject token.
pub fn site(field: &'static str, label: &str) -> Result<(), DomainError> {
    if label.is_empty() || label.len() > MAX_SITE_CHARS {
        return Err(DomainError::invalid(field, format!("must be 1 to {MAX_SITE_CHARS} characters long")));
    }
    if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(DomainError::invalid(field, format!("`{label}` may hold only letters, digits, `_` and `-`")));
    }
    Ok(())
}

/// An absolute path on a host: starts with `/`, no `..` segment, no control characters.
pub fn absolute_path(field: &'static str, path: &str) -> Result<(), DomainError> {
    if !path.starts_with('/') {
        return Err(DomainError::invalid(field, format!("`{path}` is not an absolute path")));
    }
    relative_free_path(field, path)
}

/// A path or glob without `..` segments or control characters: it cannot climb out of where it is applied.
pub fn relative_free_path(field: &'static str, path: &str) -> Result<(), DomainError> {
    if path.chars().any(char::is_control) {
        return Err(DomainError::invalid(field, "must not contain control characters"));
    }
    if has_dot_dot_segment(path) {
        return Err(DomainError::invalid(field, format!("`{path}` must not contain `..`")));
    }
    Ok(())
}

/// A glob the backup engine can compile (`*`, `**`, `?`, `[…]`, `{a,b}`).
pub fn glob(field: &'static str, pattern: &str) -> Result<(), DomainError> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(drop)
        .map_err(|e| DomainError::invalid(field, format!("`{pattern}` is not a valid pattern: {}", e.kind())))
}

/// The longest PostgreSQL identifier, in bytes (`NAMEDATALEN - 1`): longer names are cut.
pub const MAX_DATABASE_NAME_BYTES: usize = 63;

/// The name of an existing PostgreSQL database (what a source dumps): 1 to
/// [`MAX_DATABASE_NAME_BYTES`] bytes, no `/` (it names a file in the snapshot), no control
/// characters. PostgreSQL allows almost anything in a quoted name, so this is all it asks.
pub fn database_name(field: &'static str, name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(DomainError::invalid(field, format!("`{name}` is not a database name")));
    }
    if name.len() > MAX_DATABASE_NAME_BYTES {
        return Err(DomainError::invalid(
            field,
            format!("`{name}` is {} bytes long; PostgreSQL names have at most {MAX_DATABASE_NAME_BYTES}", name.len()),
        ));
    }
    Ok(())
}

/// The name of a database a restore creates: 1 to [`MAX_DATABASE_NAME_BYTES`] of
/// `A-Z a-z 0-9 _ -`, starting with a letter or `_`, and not one of the databases every
/// cluster has (`postgres`, `template0`, `template1`). Stricter than PostgreSQL on purpose:
/// the name reaches `createdb` and `pg_restore` arguments, where it must never read as an
/// option or a connection string.
pub fn new_database_name(field: &'static str, name: &str) -> Result<(), DomainError> {
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(DomainError::invalid(
            field,
            format!("`{name}` must start with a letter or `_` and hold only letters, digits, `_` and `-`"),
        ));
    }
    if name.len() > MAX_DATABASE_NAME_BYTES {
        return Err(DomainError::invalid(
            field,
            format!("`{name}` is {} characters long; at most {MAX_DATABASE_NAME_BYTES}", name.len()),
        ));
    }
    if ["postgres", "template0", "template1"].contains(&name) {
        return Err(DomainError::invalid(
            field,
            format!("`{name}` exists in every cluster: restore into a new database"),
        ));
    }
    Ok(())
}

/// A hex SHA-256: exactly 64 lowercase hex digits.
pub fn sha256_hex(field: &'static str, hash: &str) -> Result<(), DomainError> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(DomainError::invalid(field, "must be 64 lowercase hex digits (a SHA-256)"));
    }
    Ok(())
}

/// A retention policy: every rule that is set keeps at least one snapshot.
pub fn retention(field: &'static str, retention: &Retention) -> Result<(), DomainError> {
    let rules = [
        ("keep_last", retention.keep_last),
        ("keep_hourly", retention.keep_hourly),
        ("keep_daily", retention.keep_daily),
        ("keep_weekly", retention.keep_weekly),
        ("keep_monthly", retention.keep_monthly),
        ("keep_yearly", retention.keep_yearly),
    ];
    for (rule, keep) in rules {
        if keep == Some(0) {
            return Err(DomainError::invalid(
                field,
                format!("`{rule}` must be at least 1; leave it out to not use it"),
            ));
        }
    }
    Ok(())
}

/// A target's location for its kind: `fs:///absolute/path`, `s3://bucket[/prefix]` or
/// `azblob://container[/prefix]`; never with credentials in it, never with `..`.
pub fn target_location(kind: TargetKind, location: &str) -> Result<(), DomainError> {
    const FIELD: &str = "location";
    let scheme = kind.as_str();
    if location.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(DomainError::invalid(FIELD, "must not contain spaces or control characters"));
    }
    let Some(rest) = location.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://")) else {
        return Err(DomainError::invalid(FIELD, format!("an {scheme} target's location starts with `{scheme}://`")));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(DomainError::invalid(FIELD, "must not carry credentials; give them as `credentials`"));
    }
    if has_dot_dot_segment(path) {
        return Err(DomainError::invalid(FIELD, "must not contain `..`"));
    }
    if kind != TargetKind::Fs && (rest.contains('?') || rest.contains('#')) {
        return Err(DomainError::invalid(FIELD, "must not have a query or fragment; options go in `settings`"));
    }
    match kind {
        TargetKind::Fs if !authority.is_empty() || !rest.starts_with('/') => Err(DomainError::invalid(
            FIELD,
            "an fs location is `fs://` and an absolute path, as in `fs:///srv/backups`",
        )),
        TargetKind::Fs if path.trim_matches('/').is_empty() => {
            Err(DomainError::invalid(FIELD, "an fs location must name a folder below `/`"))
        }
        TargetKind::Fs => Ok(()),
        TargetKind::S3 => s3_bucket(authority).map_err(|reason| DomainError::invalid(FIELD, reason)),
        TargetKind::Azblob => azure_container(authority).map_err(|reason| DomainError::invalid(FIELD, reason)),
    }
}

/// A target's settings for its kind: only known keys (fs: none; s3: `endpoint`, `region`;
/// azblob: `endpoint`, `account_name`), each with a well-formed value.
pub fn target_settings(kind: TargetKind, settings: &TargetSettings) -> Result<(), DomainError> {
    const FIELD: &str = "settings";
    let allowed: &[&str] = match kind {
        TargetKind::Fs => &[],
        TargetKind::S3 => &["endpoint", "region"],
        TargetKind::Azblob => &["endpoint", "account_name"],
    };
    for (key, value) in settings {
        if !allowed.contains(&key.as_str()) {
            let known = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return Err(DomainError::invalid(
                FIELD,
                format!("`{key}` is not a setting of an {} target (known: {known})", kind.as_str()),
            ));
        }
        if value.trim().is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(DomainError::invalid(FIELD, format!("`{key}` must be a single word without spaces")));
        }
        let checked = match key.as_str() {
            "endpoint" => endpoint(value),
            "region" => region(value),
            "account_name" => azure_account_name(value),
            _ => Ok(()),
        };
        checked.map_err(|reason| DomainError::invalid(FIELD, format!("`{key}` {reason}")))?;
    }
    Ok(())
}

fn has_dot_dot_segment(path: &str) -> bool {
    path.split(['/', '\\']).any(|segment| segment == "..")
}

/// S3 bucket naming rules: 3–63 of lowercase letters, digits, `-` and `.`, starting and
/// ending with a letter or digit, no `..`, not an IP address.
fn s3_bucket(bucket: &str) -> Result<(), String> {
    let valid_chars = bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let alphanumeric = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let looks_like_ip = bucket.split('.').count() == 4 && bucket.split('.').all(|part| part.parse::<u8>().is_ok());
    if !(3..=63).contains(&bucket.len())
        || !valid_chars
        || !alphanumeric(bucket.bytes().next())
        || !alphanumeric(bucket.bytes().last())
        || bucket.contains("..")
        || looks_like_ip
    {
        return Err(format!(
            "`{bucket}` is not a valid S3 bucket name (3 to 63 lowercase letters, digits, `-` and `.`, \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Azure container naming rules: 3–63 of lowercase letters, digits and `-`, starting and ending
/// with a letter or digit, no `--`.
fn azure_container(container: &str) -> Result<(), String> {
    let valid_chars = container.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(3..=63).contains(&container.len())
        || !valid_chars
        || container.starts_with('-')
        || container.ends_with('-')
        || container.contains("--")
    {
        return Err(format!(
            "`{container}` is not a valid Azure container name (3 to 63 lowercase letters, digits and single `-`, \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn endpoint(value: &str) -> Result<(), String> {
    let Some(rest) = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://")) else {
        return Err("must start with http:// or https://".to_owned());
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("must name a host after the scheme".to_owned());
    }
    if host.contains('@') {
        return Err("must not carry credentials; give them as `credentials`".to_owned());
    }
    Ok(())
}

fn region(value: &str) -> Result<(), String> {
    if value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("`{value}` is not a region name (letters, digits, `-` and `_`)"));
    }
    Ok(())
}

fn azure_account_name(value: &str) -> Result<(), String> {
    if !(3..=24).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(format!("`{value}` is not a storage account name (3 to 24 lowercase letters and digits)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location_error(kind: TargetKind, location: &str) -> Option<String> {
        match target_location(kind, location) {
            Ok(()) => None,
            Err(DomainError::Invalid { field: "location", reason }) => Some(reason),
            Err(other) => panic!("{location}: unexpected {other:?}"),
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("name", "  acme corp ").unwrap(), "acme corp");
        assert_eq!(name("name", &"é".repeat(100)).unwrap().chars().count(), 100);
        for bad in ["", "   ", &"x".repeat(101), "a\u{7}b", "line\nbreak"] {
            assert!(matches!(name("name", bad), Err(DomainError::Invalid { field: "name", .. })), "{bad:?}");
        }
    }

    #[test]
    fn site_labels_are_single_subject_tokens() {
        for good in ["a", "site-1", "Berlin_DC2", &"x".repeat(32)] {
            assert_eq!(site("site", good), Ok(()), "{good}");
        }
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(33), "münchen"] {
            assert!(site("site", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn good_locations_pass() {
        for (kind, location) in [
            (TargetKind::Fs, "fs:///srv/backups"),
            (TargetKind::Fs, "fs:///srv/backups/"),
            (TargetKind::Fs, "fs:///mnt/user@host/x"),
            (TargetKind::S3, "s3://my-bucket"),
            (TargetKind::S3, "s3://my.bucket-2/tenants/acme"),
            (TargetKind::S3, "s3://abc/"),
            (TargetKind::Azblob, "azblob://backups"),
            (TargetKind::Azblob, "azblob://backups-2/acme/daily"),
        ] {
            assert_eq!(location_error(kind, location), None, "{location}");
        }
    }

    #[test]
    fn bad_locations_say_why() {
        for (kind, location, why) in [
            (TargetKind::Fs, "/srv/backups", "starts with `fs://`"),
            (TargetKind::Fs, "s3:///srv", "starts with `fs://`"),
            (TargetKind::Fs, "fs://srv/backups", "absolute path"),
            (TargetKind::Fs, "fs://", "absolute path"),
            (TargetKind::Fs, "fs:///", "below `/`"),
            (TargetKind::Fs, "fs:///srv/../etc", "`..`"),
            (TargetKind::Fs, "fs:///srv/back ups", "spaces"),
            (TargetKind::S3, "fs:///srv", "starts with `s3://`"),
            (TargetKind::S3, "s3://ab", "bucket name"),
            (TargetKind::S3, "s3://My-Bucket", "bucket name"),
            (TargetKind::S3, "s3://-bucket", "bucket name"),
            (TargetKind::S3, "s3://bucket-", "bucket name"),
            (TargetKind::S3, "s3://my..bucket", "bucket name"),
            (TargetKind::S3, "s3://192.168.1.10", "bucket name"),
            (TargetKind::S3, &format!("s3://{}", "b".repeat(64)), "bucket name"),
            (TargetKind::S3, "s3://key:secret@bucket/x", "credentials"),
            (TargetKind::S3, "s3://bucket/a/../b", "`..`"),
            (TargetKind::S3, "s3://bucket/x?region=eu", "query"),
            (TargetKind::Azblob, "azblob://my_container", "container name"),
            (TargetKind::Azblob, "azblob://my.container", "container name"),
            (TargetKind::Azblob, "azblob://a--b", "container name"),
            (TargetKind::Azblob, "azblob://account:key@backups", "credentials"),
            (TargetKind::Azblob, "s3://backups", "starts with `azblob://`"),
        ] {
            let reason = location_error(kind, location).unwrap_or_else(|| panic!("{location} passed"));
            assert!(reason.contains(why), "{location}: {reason}");
        }
    }

    #[test]
    fn location_errors_never_echo_credentials() {
        let reason = location_error(TargetKind::S3, "s3://AKIA:topsecret@bucket").unwrap();
        assert!(!reason.contains("topsecret"), "{reason}");
    }

    #[test]
    fn settings_are_checked_per_kind() {
        let settings = |pairs: &[(&str, &str)]| -> TargetSettings {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let ok = [
            (TargetKind::Fs, settings(&[])),
            (TargetKind::S3, settings(&[("endpoint", "http://localhost:9000"), ("region", "eu-central-1")])),
            (
                TargetKind::Azblob,
                settings(&[("endpoint", "https://acct.blob.core.windows.net"), ("account_name", "acct")]),
            ),
        ];
        for (kind, settings) in ok {
            assert_eq!(target_settings(kind, &settings), Ok(()), "{settings:?}");
        }
        let bad = [
            (TargetKind::Fs, settings(&[("endpoint", "http://x")]), "not a setting of an fs target"),
            (TargetKind::S3, settings(&[("account_name", "acct")]), "not a setting of an s3 target"),
            (TargetKind::Azblob, settings(&[("region", "eu")]), "not a setting of an azblob target"),
            (TargetKind::S3, settings(&[("endpoint", "localhost:9000")]), "http:// or https://"),
            (TargetKind::S3, settings(&[("endpoint", "ftp://x")]), "http:// or https://"),
            (TargetKind::S3, settings(&[("endpoint", "https://")]), "host"),
            (TargetKind::S3, settings(&[("endpoint", "https://k:s@host")]), "credentials"),
            (TargetKind::S3, settings(&[("region", "")]), "single word"),
            (TargetKind::S3, settings(&[("region", "eu/1")]), "region name"),
            (TargetKind::Azblob, settings(&[("account_name", "Acct")]), "storage account"),
        ];
        for (kind, settings, why) in bad {
            match target_settings(kind, &settings) {
                Err(DomainError::Invalid { field: "settings", reason }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{settings:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn retention_rules_keep_at_least_one() {
        assert_eq!(retention("retention", &Retention::default()), Ok(()));
        assert_eq!(
            retention("retention", &Retention { keep_last: Some(1), keep_yearly: Some(10), ..Default::default() }),
            Ok(())
        );
        let error =
            retention("retention", &Retention { keep_daily: Some(7), keep_weekly: Some(0), ..Default::default() });
        assert!(
            matches!(error, Err(DomainError::Invalid { field: "retention", reason }) if reason.contains("keep_weekly"))
        );
    }

    #[test]
    fn hashes_are_lowercase_sha256_hex() {
        assert_eq!(sha256_hex("hash", &"0a".repeat(32)), Ok(()));
        for bad in ["".to_owned(), "0A".repeat(32), "0a".repeat(31), "g".repeat(64), "0a".repeat(33)] {
            assert!(sha256_hex("hash", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_names_follow_postgresql() {
        for good in ["app", "Billing", "my-db", "o'brien db", &"x".repeat(63)] {
            assert!(database_name("from", good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a/b", "a\nb", &"x".repeat(64)] {
            assert!(database_name("from", bad).is_err(), "{bad:?}");
        }
        for good in ["app_copy", "_restore-2", "App2", &"x".repeat(63)] {
            assert!(new_database_name("destination", good).is_ok(), "{good}");
        }
        for bad in ["", "2app", "-app", "app copy", "a;drop", "host=evil", "postgres", "template1", &"x".repeat(64)] {
            assert!(new_database_name("destination", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_cannot_climb_out() {
        assert_eq!(absolute_path("path", "/srv/restore"), Ok(()));
        assert_eq!(relative_free_path("paths", "home/*/docs"), Ok(()));
        assert_eq!(relative_free_path("paths", "/srv/..hidden"), Ok(()));
        assert!(absolute_path("path", "srv/restore").is_err());
        assert!(absolute_path("path", "/srv/../etc").is_err());
        assert!(relative_free_path("paths", "../etc").is_err());
        assert!(relative_free_path("paths", "a\\..\\b").is_err());
    }
}
