//! `-info`: containerd 2.x runs `<shim> -info` when it loads a runtime (runtime
//! introspection: CRI reads the OCI features from it) and logs an error when a shim does
//! not know the flag. The answer is a `RuntimeInfo` protobuf on stdout.
//!
//! The proxy asks the downstream first, since the OCI runtime's features are the
//! downstream's (runc's shim 2.x and Kata's 3.30 both answer), and answers under its own
//! name and version; a downstream that does not know the flag (runc's shim 1.7) leaves our
//! own answer, without features. containerd-shim-protos has no `RuntimeInfo`, so the
//! message is declared here:
//!
//! ```proto
//! message RuntimeInfo {
//!   string name = 1; RuntimeVersion version = 2; google.protobuf.Any options = 3;
//!   google.protobuf.Any features = 4; map<string, string> annotations = 5;
//! }
//! message RuntimeVersion { string version = 1; string revision = 2; }
//! ```

use std::collections::BTreeMap;

use containerd_shim_protos::protobuf::rt::skip_field_for_tag;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream, Message};

use crate::create::is_runtime_options;
use kata_gpu_plan::profile::Profile;
use kata_gpu_plan::settings::{DownstreamKind, Settings};

/// Annotation naming the downstream that answered, with its version.
pub const DOWNSTREAM_ANNOTATION: &str = "io.kata-gpu.downstream";

/// A shim's version, as containerd's `RuntimeVersion`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The release, e.g. `0.1.0`.
    pub version: String,
    /// The commit.
    pub revision: String,
}

/// containerd's `RuntimeInfo` (api/types/introspection.proto).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeInfo {
    /// The runtime type, e.g. `io.containerd.kata-qemu-nvidia-gpu-snp.v2`.
    pub name: String,
    /// The shim's version.
    pub version: Option<RuntimeVersion>,
    /// The runtime options containerd passed on stdin, as the shim read them.
    pub options: Option<Any>,
    /// The OCI runtime's features (runtime-spec `features.json`).
    pub features: Option<Any>,
    /// Free-form facts about the shim.
    pub annotations: BTreeMap<String, String>,
}

/// Bytes that are not a `RuntimeInfo`.
#[derive(Debug, thiserror::Error)]
#[error("not a RuntimeInfo: {0}")]
pub struct DecodeError(#[from] containerd_shim_protos::protobuf::Error);

fn strings(bytes: &[u8]) -> Result<(String, String), DecodeError> {
    let mut is = CodedInputStream::from_bytes(bytes);
    let (mut first, mut second) = (String::new(), String::new());
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            0x0a => first = is.read_string()?,
            0x12 => second = is.read_string()?,
            _ => skip_field_for_tag(tag, &mut is)?,
        }
    }
    Ok((first, second))
}

fn two_strings(a: &str, b: &str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut os = CodedOutputStream::vec(&mut out);
    if !a.is_empty() {
        os.write_string(1, a)?;
    }
    if !b.is_empty() {
        os.write_string(2, b)?;
    }
    os.flush()?;
    drop(os);
    Ok(out)
}

impl RuntimeInfo {
    /// Reads the protobuf a shim prints; unknown fields are skipped.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut info = Self::default();
        let mut is = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = is.read_raw_tag_or_eof()? {
            match tag {
                0x0a => info.name = is.read_string()?,
                0x12 => {
                    let (version, revision) = strings(&is.read_bytes()?)?;
                    info.version = Some(RuntimeVersion { version, revision });
                }
                0x1a => info.options = Some(Any::parse_from_bytes(&is.read_bytes()?)?),
                0x22 => info.features = Some(Any::parse_from_bytes(&is.read_bytes()?)?),
                0x2a => {
                    let (key, value) = strings(&is.read_bytes()?)?;
                    info.annotations.insert(key, value);
                }
                _ => skip_field_for_tag(tag, &mut is)?,
            }
        }
        Ok(info)
    }

    /// The protobuf to print.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        let mut os = CodedOutputStream::vec(&mut out);
        if !self.name.is_empty() {
            os.write_string(1, &self.name)?;
        }
        if let Some(v) = &self.version {
            os.write_bytes(2, &two_strings(&v.version, &v.revision)?)?;
        }
        if let Some(any) = &self.options {
            os.write_bytes(3, &any.write_to_bytes()?)?;
        }
        if let Some(any) = &self.features {
            os.write_bytes(4, &any.write_to_bytes()?)?;
        }
        for (key, value) in &self.annotations {
            os.write_bytes(5, &two_strings(key, value)?)?;
        }
        os.flush()?;
        drop(os);
        Ok(out)
    }
}

/// The runtime options containerd passed on stdin (an `Any`), if any.
fn options_of(stdin: &[u8]) -> Option<Any> {
    Any::parse_from_bytes(stdin)
        .ok()
        .filter(|any| !any.type_url.is_empty())
}

/// What the downstream gets on stdin: the options as given, except that runc's shim reads
/// only its own options type and fails on Kata's.
pub fn downstream_stdin(kind: DownstreamKind, stdin: &[u8]) -> &[u8] {
    match (kind, options_of(stdin)) {
        (DownstreamKind::Runc, Some(any)) if is_runtime_options(&any) => &[],
        _ => stdin,
    }
}

/// Our answer for `profile`, given containerd's stdin and what the downstream printed
/// (`None` when it failed, e.g. did not know the flag).
pub fn answer(profile: Profile, stdin: &[u8], downstream: Option<&[u8]>) -> RuntimeInfo {
    let theirs = downstream.and_then(|bytes| RuntimeInfo::decode(bytes).ok());
    let mut annotations = BTreeMap::new();
    let mut features = None;
    if let Some(theirs) = theirs {
        let version = theirs.version.map(|v| v.version).unwrap_or_default();
        annotations = theirs.annotations;
        annotations.insert(
            DOWNSTREAM_ANNOTATION.to_owned(),
            format!("{} {version}", theirs.name).trim().to_owned(),
        );
        features = theirs.features;
    }
    RuntimeInfo {
        name: profile.runtime_type(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: env!("KATA_GPU_COMMIT").to_owned(),
        }),
        options: options_of(stdin),
        features,
        annotations,
    }
}

/// `-info`: asks the downstream named in the settings, then answers for `profile`.
pub fn info(profile: Profile, stdin: &[u8]) -> Result<Vec<u8>, crate::actions::ShimError> {
    let (settings, settings_path): (Settings, _) = Settings::load(profile)?;
    let input = downstream_stdin(settings.downstream_kind, stdin);
    let args = ["-info".to_owned()];
    let theirs =
        crate::actions::run_downstream(&settings, &settings_path, &args, input, "-info", &[], None)
            .ok();
    let reply = answer(profile, stdin, theirs.as_deref());
    reply.encode().map_err(|e| crate::actions::ShimError::Io {
        what: "cannot encode the RuntimeInfo".to_owned(),
        source: std::io::Error::other(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{runtime_options, RUNTIME_OPTIONS};

    fn kata_options() -> Vec<u8> {
        Any {
            type_url: RUNTIME_OPTIONS.to_owned(),
            value: runtime_options("/etc/kata/x.toml").expect("encode"),
            ..Any::default()
        }
        .write_to_bytes()
        .expect("encodes")
    }

    #[test]
    fn runtime_info_encodes_and_decodes_back() {
        let info = RuntimeInfo {
            name: "io.containerd.x.v2".into(),
            version: Some(RuntimeVersion {
                version: "1.0".into(),
                revision: "abc".into(),
            }),
            options: options_of(&kata_options()),
            features: Some(Any {
                type_url: "types.containerd.io/features".into(),
                value: b"{}".to_vec(),
                ..Any::default()
            }),
            annotations: [("a".to_owned(), "b".to_owned())].into(),
        };
        let bytes = info.encode().expect("encodes");
        assert_eq!(RuntimeInfo::decode(&bytes).expect("decodes"), info);
        assert!(RuntimeInfo::decode(b"\x0a\x05ab").is_err());
    }

    #[test]
    fn the_answer_is_ours_with_the_downstreams_features() {
        let theirs = RuntimeInfo {
            name: "io.containerd.runc.v2".into(),
            version: Some(RuntimeVersion {
                version: "v2.3.4".into(),
                revision: "x".into(),
            }),
            features: Some(Any {
                type_url: "features".into(),
                value: b"{\"ociVersionMin\":\"1.0.0\"}".to_vec(),
                ..Any::default()
            }),
            ..RuntimeInfo::default()
        }
        .encode()
        .expect("encodes");
        let info = answer(Profile::Snp, &kata_options(), Some(&theirs));
        assert_eq!(info.name, "io.containerd.kata-qemu-nvidia-gpu-snp.v2");
        assert_eq!(
            info.version.as_ref().map(|v| v.version.as_str()),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            info.features.as_ref().map(|f| f.type_url.as_str()),
            Some("features")
        );
        assert_eq!(
            info.options.as_ref().map(|o| o.type_url.as_str()),
            Some(RUNTIME_OPTIONS)
        );
        assert_eq!(
            info.annotations
                .get(DOWNSTREAM_ANNOTATION)
                .map(String::as_str),
            Some("io.containerd.runc.v2 v2.3.4")
        );
        // A downstream that failed or printed something else: our own answer.
        for downstream in [None, Some(&b"flag provided but not defined: -info"[..])] {
            let info = answer(Profile::Gpu, b"", downstream);
            assert_eq!(info.name, "io.containerd.kata-qemu-nvidia-gpu.v2");
            assert_eq!((info.features, info.options), (None, None));
            assert!(info.annotations.is_empty());
        }
    }

    #[test]
    fn runc_never_gets_katas_options() {
        let ours = kata_options();
        assert!(downstream_stdin(DownstreamKind::Runc, &ours).is_empty());
        assert_eq!(downstream_stdin(DownstreamKind::Kata, &ours), &ours[..]);
        assert_eq!(downstream_stdin(DownstreamKind::Runc, b""), b"");
    }
}
