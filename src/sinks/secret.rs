//! Credentials from mounted Kubernetes Secrets.
//!
//! The operator never hands secret values to the agent's configuration; it mounts the Secret an
//! ArchiveSink references as a directory (one file per key) and the configuration names that
//! directory. Sinks read the files when they start. Values are wrapped in [`SecretValue`], whose
//! `Debug` never shows the value, and errors name the file but never its content.

use std::fmt;
use std::path::{Path, PathBuf};

use super::SinkError;

/// A secret read from a file: the value is available through [`SecretValue::expose`] only and
/// never appears in `Debug` output, logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// The secret itself. Pass it straight to the client that needs it; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A value for unit tests of code that consumes secrets.
    #[cfg(test)]
    pub fn for_test(value: &str) -> Self {
        SecretValue(value.to_owned())
    }

    /// The raw bytes (for HMAC keys).
    pub fn expose_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Read one secret file. A single trailing newline (`\n` or `\r\n`, as editors and
/// `kubectl create secret --from-file` often leave) is removed; an empty value is refused.
pub fn read_secret_file(path: &Path) -> Result<SecretValue, SinkError> {
    let bytes = std::fs::read(path)
        .map_err(|e| SinkError::Misconfigured(format!("cannot read secret file {}: {e}", path.display())))?;
    let mut value = String::from_utf8(bytes)
        .map_err(|_| SinkError::Misconfigured(format!("secret file {} is not UTF-8", path.display())))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(SinkError::Misconfigured(format!(
            "secret file {} is empty",
            path.display()
        )));
    }
    Ok(SecretValue(value))
}

/// Read the file `key` of a mounted Secret directory.
pub fn read_secret_key(dir: &Path, key: &str) -> Result<SecretValue, SinkError> {
    read_secret_file(&dir.join(key))
}

/// Read an optional key: `Ok(None)` when the file does not exist.
pub fn read_optional_secret_key(dir: &Path, key: &str) -> Result<Option<SecretValue>, SinkError> {
    let path: PathBuf = dir.join(key);
    if !path.exists() {
        return Ok(None);
    }
    read_secret_file(&path).map(Some)
}

/// A username and password pair from a Secret directory with `username` and `password` keys
/// (the layout of a `kubernetes.io/basic-auth` Secret).
#[derive(Clone, Debug)]
pub struct BasicAuth {
    /// The `username` key.
    pub username: SecretValue,
    /// The `password` key.
    pub password: SecretValue,
}

impl BasicAuth {
    /// Read `username` and `password` from `dir`.
    pub fn read(dir: &Path) -> Result<Self, SinkError> {
        Ok(BasicAuth {
            username: read_secret_key(dir, "username")?,
            password: read_secret_key(dir, "password")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_one_trailing_newline_and_hides_the_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("password"), "s3cr3t \r\n").unwrap();
        std::fs::write(dir.path().join("username"), "journal\n\n").unwrap();
        let auth = BasicAuth::read(dir.path()).unwrap();
        assert_eq!(auth.password.expose(), "s3cr3t ");
        assert_eq!(auth.username.expose(), "journal\n", "only one newline is removed");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("journal"), "{shown}");
    }

    #[test]
    fn missing_and_empty_files_are_misconfigurations_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_secret_key(dir.path(), "password").unwrap_err();
        assert!(
            matches!(err, SinkError::Misconfigured(ref m) if m.contains("password")),
            "{err}"
        );
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        assert!(matches!(
            read_secret_key(dir.path(), "empty"),
            Err(SinkError::Misconfigured(_))
        ));
        assert!(read_optional_secret_key(dir.path(), "sessionToken").unwrap().is_none());
    }
}
