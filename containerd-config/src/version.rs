//! Config versions and where each keeps its runtime handlers (ARCHITECTURE.md, "containerd's
//! config").

use std::fmt;

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, Item, Value};

use crate::error::Error;

/// The CRI plugin that holds the runtimes in a version-2 config (containerd 1.x).
pub const CRI_PLUGIN_V2: &str = "io.containerd.grpc.v1.cri";
/// The CRI runtime plugin that holds the runtimes from version 3 on (containerd 2.x).
pub const CRI_PLUGIN_V3: &str = "io.containerd.cri.v1.runtime";

/// A containerd config version this tool edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum ConfigVersion {
    /// `version = 2`: containerd 1.x (also read by 2.x).
    V2,
    /// `version = 3`: containerd 2.0–2.2.
    V3,
    /// `version = 4`: containerd 2.3 and later.
    V4,
}

impl ConfigVersion {
    /// Every version, oldest first.
    pub const ALL: [ConfigVersion; 3] = [ConfigVersion::V2, ConfigVersion::V3, ConfigVersion::V4];

    /// The number written as `version = N`.
    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
            ConfigVersion::V4 => 4,
        }
    }

    /// The version a `version = N` stands for, if this tool edits it.
    pub fn from_number(n: i64) -> Option<Self> {
        ConfigVersion::ALL.into_iter().find(|v| v.number() == n)
    }

    /// The plugin whose `containerd.runtimes` table holds the handlers.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            ConfigVersion::V2 => CRI_PLUGIN_V2,
            ConfigVersion::V3 | ConfigVersion::V4 => CRI_PLUGIN_V3,
        }
    }

    /// The keys from the root to the `runtimes` table.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        ["plugins", self.cri_plugin(), "containerd", "runtimes"]
    }

    /// The version a containerd release writes, from `containerd --version` output such as
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 …` or
    /// `containerd github.com/containerd/containerd/v2 v2.1.0 …`.
    pub fn for_containerd(version_output: &str) -> Option<Self> {
        let (major, minor) = containerd_release(version_output)?;
        match (major, minor) {
            (1, _) => Some(ConfigVersion::V2),
            (2, 0..=2) => Some(ConfigVersion::V3),
            (2, _) => Some(ConfigVersion::V4),
            _ => None,
        }
    }
}

impl TryFrom<i64> for ConfigVersion {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, Self::Error> {
        ConfigVersion::from_number(n).ok_or_else(|| format!("unsupported config version {n}"))
    }
}

impl From<ConfigVersion> for i64 {
    fn from(v: ConfigVersion) -> i64 {
        v.number()
    }
}

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The `(major, minor)` release in `containerd --version` output.
pub fn containerd_release(version_output: &str) -> Option<(u32, u32)> {
    version_output.split_whitespace().skip(1).find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let mut parts = word.split(['.', '~', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    })
}

/// What a document says about its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declared {
    /// `version = N` with a version we edit.
    Version(ConfigVersion),
    /// No `version` key and no content at all: any version may be written into it.
    Empty,
    /// No `version` key but content: containerd reads it as version 1.
    Missing,
}

/// Reads the `version` key of a document.
pub(crate) fn declared(doc: &DocumentMut, file: &str) -> Result<Declared, Error> {
    match doc.get("version") {
        None if doc.is_empty() => Ok(Declared::Empty),
        None => Ok(Declared::Missing),
        Some(Item::Value(Value::Integer(n))) => match *n.value() {
            1 => Err(Error::Version1 {
                file: file.to_owned(),
            }),
            v => ConfigVersion::from_number(v)
                .map(Declared::Version)
                .ok_or_else(|| Error::UnsupportedVersion {
                    file: file.to_owned(),
                    found: v.to_string(),
                }),
        },
        Some(other) => Err(Error::UnsupportedVersion {
            file: file.to_owned(),
            found: other.to_string().trim().to_owned(),
        }),
    }
}

/// The version a config declares: `Some` for `version = 2..4`, `None` for an empty file or
/// a Go template without its own `version` (the caller must know it); a version-1 or
/// unknown config is an error, invalid TOML too.
pub fn config_version(text: &str, file: &str) -> Result<Option<ConfigVersion>, Error> {
    let source = crate::text::Source::split(text);
    let doc = source.parse(file)?;
    match declared(&doc, file)? {
        Declared::Version(v) => Ok(Some(v)),
        Declared::Empty => Ok(None),
        Declared::Missing if source.is_template() => Ok(None),
        Declared::Missing => Err(Error::Version1 {
            file: file.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_releases_map_to_the_version_they_write() {
        let table = [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                Some(ConfigVersion::V2),
            ),
            (
                "containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da",
                Some(ConfigVersion::V2),
            ),
            (
                "containerd github.com/containerd/containerd/v2 v2.0.0 207ad711eabd375a01713109a8a197d197ff6542",
                Some(ConfigVersion::V3),
            ),
            ("containerd github.com/containerd/containerd/v2 v2.2.1 x", Some(ConfigVersion::V3)),
            ("containerd github.com/containerd/containerd/v2 v2.3.0 x", Some(ConfigVersion::V4)),
            ("containerd github.com/containerd/containerd v0.2.3", None),
            ("something else", None),
            ("", None),
        ];
        for (output, want) in table {
            assert_eq!(ConfigVersion::for_containerd(output), want, "{output}");
        }
    }

    #[test]
    fn the_version_key_is_read_or_refused() {
        let table: [(&str, Result<Declared, &str>); 8] = [
            ("version = 2\n", Ok(Declared::Version(ConfigVersion::V2))),
            ("version = 3\n", Ok(Declared::Version(ConfigVersion::V3))),
            (
                "version = 4\n[x]\n",
                Ok(Declared::Version(ConfigVersion::V4)),
            ),
            ("", Ok(Declared::Empty)),
            ("# only a comment\n", Ok(Declared::Empty)),
            ("root = \"/var/lib/containerd\"\n", Ok(Declared::Missing)),
            ("version = 1\n", Err("version-1 containerd config")),
            (
                "version = \"2\"\n",
                Err("unsupported containerd config version \"2\""),
            ),
        ];
        for (text, want) in table {
            let doc: DocumentMut = text.parse().expect("valid");
            match (declared(&doc, "f.toml"), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        let doc: DocumentMut = "version = 7\n".parse().expect("valid");
        assert!(declared(&doc, "f").is_err());
        assert_eq!(
            config_version("version = 3\n", "f").ok(),
            Some(Some(ConfigVersion::V3))
        );
        assert_eq!(
            config_version("{{ template \"base\" . }}\n[a]\n", "f").ok(),
            Some(None)
        );
        assert!(config_version("[a]\n", "f").is_err());
    }

    #[test]
    fn layouts_per_version() {
        assert_eq!(
            ConfigVersion::V2.runtimes_path(),
            [
                "plugins",
                "io.containerd.grpc.v1.cri",
                "containerd",
                "runtimes"
            ]
        );
        assert_eq!(
            ConfigVersion::V3.cri_plugin(),
            "io.containerd.cri.v1.runtime"
        );
        assert_eq!(
            ConfigVersion::V4.cri_plugin(),
            "io.containerd.cri.v1.runtime"
        );
        let v: ConfigVersion = serde_json::from_str("3").expect("json");
        assert_eq!(v, ConfigVersion::V3);
        assert!(serde_json::from_str::<ConfigVersion>("1").is_err());
    }
}
