//! Merging what `up` sets into Docker's daemon.json (`bip`, and `mtu` when
//! the uplink's is below Ethernet's), keeping every other key.
use std::{fs, io::ErrorKind, path::Path};

use serde_json::{Map, Value};

use crate::error::{io_context, Error, Result};

/// Docker's default container MTU.
const ETHERNET_MTU: u32 = 1500;

/// What `up` wants in daemon.json.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerSettings {
    pub bip: String,
    /// Containers' MTU: the uplink's when below 1500, so containers never
    /// send what the uplink cannot carry and need no path MTU discovery.
    /// None leaves the key as it is.
    pub mtu: Option<u32>,
}

impl DockerSettings {
    pub fn new(bip: String, uplink_mtu: u32) -> Self {
        Self {
            bip,
            mtu: (uplink_mtu < ETHERNET_MTU).then_some(uplink_mtu),
        }
    }
}

/// What merging did to daemon.json.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DockerConfigChange {
    /// False when the file already held the settings.
    pub written: bool,
    /// Where the previous file was saved, if there was one and it changed.
    pub backup: Option<String>,
    /// The file's `"mtu"` after the merge, if it has one.
    pub mtu: Option<u64>,
}

/// The merged document and whether it differs from `current`, or an error
/// naming the file if it is not a JSON object. A smaller `"mtu"` already
/// there is kept: it still fits the uplink, and was set for a reason.
pub fn merged(
    path: &Path,
    current: Option<&str>,
    settings: &DockerSettings,
) -> Result<(Value, bool)> {
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
    let mut changed = obj.get("bip").and_then(Value::as_str) != Some(&settings.bip);
    obj.insert("bip".into(), Value::String(settings.bip.clone()));
    if let Some(mtu) = settings.mtu {
        let current = obj.get("mtu").and_then(Value::as_u64);
        if current.is_none_or(|m| m > u64::from(mtu)) {
            obj.insert("mtu".into(), Value::from(mtu));
            changed = true;
        }
    }
    Ok((doc, changed))
}

/// Merges `settings` into the file at `path`; a changed existing file is
/// first copied to `<path>.bak`. The new content replaces the file atomically.
pub fn merge(path: &Path, settings: &DockerSettings) -> Result<DockerConfigChange> {
    let current = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io_context(format!("reading {}", path.display()))(e)),
    };
    let (doc, changed) = merged(path, current.as_deref(), settings)?;
    let mtu = doc.get("mtu").and_then(Value::as_u64);
    if !changed {
        return Ok(DockerConfigChange {
            written: false,
            backup: None,
            mtu,
        });
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
    Ok(DockerConfigChange {
        written: true,
        backup,
        mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merges with the bip and an uplink MTU of `uplink_mtu`.
    fn merge_mtu(current: Option<&str>, uplink_mtu: u32) -> Result<(Value, bool)> {
        let settings = DockerSettings::new("10.0.128.1/24".into(), uplink_mtu);
        merged(Path::new("/etc/docker/daemon.json"), current, &settings)
    }

    /// Merges with the bip alone (an Ethernet-sized uplink).
    fn merge(current: Option<&str>) -> Result<(Value, bool)> {
        merge_mtu(current, 1500)
    }

    fn json(doc: &Value) -> String {
        serde_json::to_string(doc).unwrap()
    }

    #[test]
    fn keeps_other_keys_in_order() {
        let (doc, changed) = merge(Some(
            r#"{"log-driver":"journald","bip":"172.17.0.1/16","mtu":1450}"#,
        ))
        .unwrap();
        assert!(changed);
        assert_eq!(
            json(&doc),
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
            assert_eq!(json(&doc), r#"{"bip":"10.0.128.1/24"}"#);
        }
    }

    #[test]
    fn rejects_invalid_json_naming_the_file() {
        let e = merge(Some("{bip: }")).unwrap_err().to_string();
        assert_eq!(e, "/etc/docker/daemon.json");
        let e = merge(Some("[1]")).unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
    }

    #[test]
    fn uplink_mtu_at_or_above_ethernet_leaves_mtu_alone() {
        for uplink_mtu in [1500, 9000] {
            let (doc, changed) = merge_mtu(Some(r#"{"bip":"10.0.128.1/24"}"#), uplink_mtu).unwrap();
            assert!(!changed);
            assert_eq!(json(&doc), r#"{"bip":"10.0.128.1/24"}"#);
        }
    }

    #[test]
    fn smaller_uplink_mtu_is_set_keeping_other_keys() {
        let (doc, changed) = merge_mtu(
            Some(r#"{"log-driver":"journald","bip":"10.0.128.1/24"}"#),
            1400,
        )
        .unwrap();
        assert!(changed);
        assert_eq!(
            json(&doc),
            r#"{"log-driver":"journald","bip":"10.0.128.1/24","mtu":1400}"#
        );
        let (doc, changed) = merge_mtu(None, 1460).unwrap();
        assert!(changed);
        assert_eq!(json(&doc), r#"{"bip":"10.0.128.1/24","mtu":1460}"#);
    }

    #[test]
    fn larger_mtu_is_lowered_smaller_or_same_is_kept() {
        let (doc, changed) =
            merge_mtu(Some(r#"{"bip":"10.0.128.1/24","mtu":1500}"#), 1400).unwrap();
        assert!(changed);
        assert_eq!(json(&doc), r#"{"bip":"10.0.128.1/24","mtu":1400}"#);
        for kept in [1400, 1300] {
            let current = format!(r#"{{"bip":"10.0.128.1/24","mtu":{kept}}}"#);
            let (doc, changed) = merge_mtu(Some(&current), 1400).unwrap();
            assert!(!changed, "mtu {kept}");
            assert_eq!(json(&doc), current);
        }
    }
}
