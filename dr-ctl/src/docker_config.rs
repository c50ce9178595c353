//! Merging Docker's `bip` into daemon.json, keeping every other key.
use std::{fs, io::ErrorKind, path::Path};

use serde_json::{Map, Value};

use crate::error::{io_context, Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BipChange {
    Unchanged,
    /// Written; the previous file, if any, was saved next to it.
    Written {
        backup: Option<String>,
    },
}

/// The merged document, or an error naming the file if it is not a JSON object.
pub fn merged(path: &Path, current: Option<&str>, bip: &str) -> Result<(Value, bool)> {
    let mut doc = match current {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str(text).map_err(|source| Error::Json {
                path: path.to_owned(),
                source,
            })?
        }
        _ => Value::Object(Map::new()),
    };
    let Value::Object(obj) = &mut doc else {
        return Err(Error::Invalid(format!(
            "{}: expected a JSON object at the top level",
            path.display()
        )));
    };
    let changed = obj.get("bip").and_then(Value::as_str) != Some(bip);
    obj.insert("bip".into(), Value::String(bip.into()));
    Ok((doc, changed))
}

/// Sets `"bip"` in the file at `path`; a changed existing file is first copied
/// to `<path>.bak`. The new content replaces the file atomically.
pub fn merge_bip(path: &Path, bip: &str) -> Result<BipChange> {
    let current = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io_context(format!("reading {}", path.display()))(e)),
    };
    let (doc, changed) = merged(path, current.as_deref(), bip)?;
    if !changed {
        return Ok(BipChange::Unchanged);
    }
    let backup = match &current {
        Some(text) => {
            let backup = format!("{}.bak", path.display());
            fs::write(&backup, text).map_err(io_context(format!("writing {backup}")))?;
            Some(backup)
        }
        None => None,
    };
    let tmp = path.with_extension("json.dr-tmp");
    let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
    text.push('\n');
    fs::write(&tmp, text).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_context(format!("replacing {}", path.display())))?;
    Ok(BipChange::Written { backup })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(current: Option<&str>) -> Result<(Value, bool)> {
        merged(
            Path::new("/etc/docker/daemon.json"),
            current,
            "10.0.128.1/24",
        )
    }

    #[test]
    fn keeps_other_keys_in_order() {
        let (doc, changed) = merge(Some(
            r#"{"log-driver":"journald","bip":"172.17.0.1/16","mtu":1450}"#,
        ))
        .unwrap();
        assert!(changed);
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"log-driver":"journald","bip":"10.0.128.1/24","mtu":1450}"#
        );
    }

    #[test]
    fn same_bip_is_unchanged() {
        let (_, changed) = merge(Some(r#"{"bip":"10.0.128.1/24"}"#)).unwrap();
        assert!(!changed);
    }

    #[test]
    fn missing_or_empty_file_starts_empty() {
        for current in [None, Some(""), Some("  \n")] {
            let (doc, changed) = merge(current).unwrap();
            assert!(changed);
            assert_eq!(
                serde_json::to_string(&doc).unwrap(),
                r#"{"bip":"10.0.128.1/24"}"#
            );
        }
    }

    #[test]
    fn rejects_invalid_json_naming_the_file() {
        let e = merge(Some("{bip: }")).unwrap_err().to_string();
        assert_eq!(e, "/etc/docker/daemon.json");
        let e = merge(Some("[1]")).unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
    }
}
