//! The shim's command line and the `start` handshake with containerd and with the
//! downstream shim: which reply form the caller understands, and what the downstream said.
//!
//! containerd 1.6 reads a plain address; 1.7 also reads JSON; 2.0–2.2 pass
//! `MAX_SHIM_VERSION` and read JSON with the task API version; 2.3+ may send a protobuf
//! `BootstrapParams` on stdin and then read a protobuf `BootstrapResult` (ARCHITECTURE.md, "containerd and the shim").

use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::Message;
use serde::Deserialize;

/// The flags containerd passes to every shim invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `-namespace`.
    pub namespace: String,
    /// `-address`: containerd's gRPC socket.
    pub address: String,
    /// `-publish-binary`: the containerd binary, to publish events with.
    pub publish_binary: String,
    /// `-id`: the container (task) id.
    pub id: String,
    /// `-bundle`: given to `delete` by newer containerd; otherwise the cwd.
    pub bundle: Option<String>,
    /// `-debug`.
    pub debug: bool,
    /// `-v`: print the version and exit.
    pub version: bool,
    /// `-info`: print a `RuntimeInfo` and exit (containerd 2.x).
    pub info: bool,
    /// The action: containerd's `start` or `delete`, or `serve`, which our own `start` gives
    /// the proxy it spawns. None is refused: nothing runs a shim without one.
    pub action: Option<String>,
}

/// A command line containerd would not have written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// A flag that needs a value came last.
    #[error("flag {0} needs a value")]
    MissingValue(String),
    /// A flag no containerd passes.
    #[error("unknown flag {0}")]
    Unknown(String),
    /// Two actions.
    #[error("unexpected argument {0:?} after action {1:?}")]
    ExtraArgument(String, String),
}

/// Parses Go-style flags (`-name value`, `-name=value`, `--name value`) and the action.
pub fn parse_flags<S: AsRef<str>>(args: &[S]) -> Result<Flags, FlagError> {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if let Some(action) = &flags.action {
                return Err(FlagError::ExtraArgument(arg.to_owned(), action.clone()));
            }
            flags.action = Some(arg.to_owned());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        match name {
            "debug" => flags.debug = inline.as_deref() != Some("false"),
            "v" | "version" => flags.version = true,
            "info" => flags.info = true,
            "namespace" | "address" | "publish-binary" | "id" | "bundle" | "socket" => {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .ok_or_else(|| FlagError::MissingValue(arg.to_owned()))?;
                        i += 1;
                        v.as_ref().to_owned()
                    }
                };
                match name {
                    "namespace" => flags.namespace = value,
                    "address" => flags.address = value,
                    "publish-binary" => flags.publish_binary = value,
                    "id" => flags.id = value,
                    "bundle" => flags.bundle = Some(value),
                    _ => {}
                }
            }
            _ => return Err(FlagError::Unknown(arg.to_owned())),
        }
    }
    Ok(flags)
}

/// The reply form the calling containerd reads from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyForm {
    /// containerd 1.6/1.7 (no `MAX_SHIM_VERSION`): the bare address, task API v2.
    Plain,
    /// containerd 2.0–2.2: JSON with this task API version.
    Json(u32),
    /// containerd 2.3+: a protobuf `BootstrapResult`.
    Protobuf,
}

/// Decides the reply form from what containerd passed: the stdin payload and the
/// `MAX_SHIM_VERSION` environment variable.
pub fn reply_form(stdin: &[u8], flags: &Flags, max_shim_version: Option<&str>) -> ReplyForm {
    if let Ok(params) = BootstrapParams::parse_from_bytes(stdin) {
        // Runtime options (an `Any`) also decode as BootstrapParams, with the type URL in
        // field 1; only a message that names this very shim is a bootstrap.
        if !stdin.is_empty()
            && params.instance_id == flags.id
            && params.namespace == flags.namespace
        {
            return ReplyForm::Protobuf;
        }
    }
    match max_shim_version.and_then(|v| v.trim().parse::<u32>().ok()) {
        Some(v) if v >= 3 => ReplyForm::Json(3),
        Some(_) => ReplyForm::Json(2),
        None => ReplyForm::Plain,
    }
}

/// Our reply to containerd's `start`, exactly the bytes to print.
pub fn encode_reply(address: &str, form: ReplyForm) -> Vec<u8> {
    match form {
        ReplyForm::Plain => address.as_bytes().to_vec(),
        ReplyForm::Json(version) => serde_json::json!({
            "version": version,
            "address": address,
            "protocol": "ttrpc",
        })
        .to_string()
        .into_bytes(),
        ReplyForm::Protobuf => BootstrapResult {
            version: 3,
            address: address.to_owned(),
            protocol: "ttrpc".to_owned(),
            ..BootstrapResult::default()
        }
        .write_to_bytes()
        .unwrap_or_default(),
    }
}

/// Where a shim said it listens, and which task API it serves there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimAddress {
    /// `unix:///…` (or another scheme the shim chose).
    pub address: String,
    /// 2 or 3.
    pub version: u32,
}

/// A `start` reply that is none of the forms a shim may give.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Nothing was printed.
    #[error("the downstream shim's start printed nothing")]
    Empty,
    /// JSON without the fields a reply has.
    #[error("the downstream shim's start printed JSON that is not a shim address: {0}")]
    BadJson(String),
    /// Something else.
    #[error("the downstream shim's start printed {0:?}, which is not an address, JSON or a BootstrapResult")]
    Unrecognized(String),
    /// A protocol other than ttrpc.
    #[error("the downstream shim speaks {0}, not ttrpc")]
    Protocol(String),
}

#[derive(Deserialize)]
struct JsonReply {
    version: u32,
    address: String,
    #[serde(default)]
    protocol: Option<String>,
}

fn check_protocol(protocol: Option<&str>) -> Result<(), ReplyError> {
    match protocol {
        None | Some("") | Some("ttrpc") => Ok(()),
        Some(other) => Err(ReplyError::Protocol(other.to_owned())),
    }
}

/// Whether text is a shim address: an absolute socket path or `scheme://…`, with no
/// whitespace or control characters.
fn is_address(text: &str) -> bool {
    let scheme_ok = |scheme: &str| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
    };
    !text.chars().any(|c| c.is_whitespace() || c.is_control())
        && (text.starts_with('/') || text.split_once("://").is_some_and(|(s, _)| scheme_ok(s)))
}

/// Reads a downstream shim's `start` reply in any of its forms.
pub fn parse_reply(bytes: &[u8]) -> Result<ShimAddress, ReplyError> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ReplyError::Empty);
    }
    if trimmed.starts_with('{') {
        let reply: JsonReply =
            serde_json::from_str(trimmed).map_err(|e| ReplyError::BadJson(e.to_string()))?;
        check_protocol(reply.protocol.as_deref())?;
        if !is_address(&reply.address) || !(2..=3).contains(&reply.version) {
            return Err(ReplyError::BadJson(trimmed.to_owned()));
        }
        return Ok(ShimAddress {
            address: reply.address,
            version: reply.version,
        });
    }
    let looks_like_address = std::str::from_utf8(bytes).is_ok() && is_address(trimmed);
    if looks_like_address {
        return Ok(ShimAddress {
            address: trimmed.to_owned(),
            version: 2,
        });
    }
    match BootstrapResult::parse_from_bytes(bytes) {
        Ok(result) if is_address(&result.address) => {
            check_protocol(Some(result.protocol.as_str()))?;
            Ok(ShimAddress {
                address: result.address,
                version: if result.version >= 3 { 3 } else { 2 },
            })
        }
        _ => Err(ReplyError::Unrecognized(
            trimmed.chars().take(200).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_containerd_passes_them() {
        let f = parse_flags(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ])
        .expect("parses");
        assert_eq!(
            (
                f.namespace.as_str(),
                f.id.as_str(),
                f.debug,
                f.action.as_deref()
            ),
            ("k8s.io", "abc", true, Some("start"))
        );
        let f = parse_flags(&["--namespace=default", "-id=x", "-bundle", "/b", "delete"])
            .expect("parses");
        assert_eq!(
            (
                f.namespace.as_str(),
                f.bundle.as_deref(),
                f.action.as_deref()
            ),
            ("default", Some("/b"), Some("delete"))
        );
        assert!(parse_flags(&["-v"]).expect("parses").version);
        assert!(parse_flags(&["-info"]).expect("parses").info);
        assert_eq!(
            parse_flags(&["-id"]),
            Err(FlagError::MissingValue("-id".into()))
        );
        assert_eq!(
            parse_flags(&["-frob"]),
            Err(FlagError::Unknown("-frob".into()))
        );
        assert!(matches!(
            parse_flags(&["start", "delete"]),
            Err(FlagError::ExtraArgument(..))
        ));
    }

    fn flags() -> Flags {
        Flags {
            namespace: "k8s.io".into(),
            id: "abc".into(),
            ..Flags::default()
        }
    }

    #[test]
    fn the_reply_form_follows_the_caller() {
        assert_eq!(reply_form(b"", &flags(), None), ReplyForm::Plain);
        assert_eq!(reply_form(b"", &flags(), Some("2")), ReplyForm::Json(2));
        assert_eq!(reply_form(b"", &flags(), Some("3")), ReplyForm::Json(3));
        assert_eq!(reply_form(b"", &flags(), Some("junk")), ReplyForm::Plain);
        let params = BootstrapParams {
            instance_id: "abc".into(),
            namespace: "k8s.io".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            ..BootstrapParams::default()
        };
        let bytes = params.write_to_bytes().expect("encodes");
        assert_eq!(reply_form(&bytes, &flags(), Some("3")), ReplyForm::Protobuf);
        // Runtime options on stdin (an Any) are not a bootstrap.
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 0x02, b'/', b'x'],
            ..Default::default()
        };
        let bytes = any.write_to_bytes().expect("encodes");
        assert_eq!(reply_form(&bytes, &flags(), None), ReplyForm::Plain);
    }

    #[test]
    fn replies_encode_and_parse_back_in_every_form() {
        let addr = "unix:///run/kata-gpu/s/0123";
        for (form, version) in [
            (ReplyForm::Plain, 2),
            (ReplyForm::Json(2), 2),
            (ReplyForm::Json(3), 3),
            (ReplyForm::Protobuf, 3),
        ] {
            let bytes = encode_reply(addr, form);
            assert_eq!(
                parse_reply(&bytes),
                Ok(ShimAddress {
                    address: addr.into(),
                    version
                }),
                "{form:?}"
            );
        }
        assert_eq!(encode_reply(addr, ReplyForm::Plain), addr.as_bytes());
        assert_eq!(
            String::from_utf8(encode_reply(addr, ReplyForm::Json(3))).expect("utf-8"),
            format!("{{\"address\":\"{addr}\",\"protocol\":\"ttrpc\",\"version\":3}}")
        );
    }

    #[test]
    fn odd_replies_are_refused_with_what_was_printed() {
        assert_eq!(parse_reply(b"  \n"), Err(ReplyError::Empty));
        assert!(matches!(
            parse_reply(br#"{"version":3,"address":"un/:xi//x","protocol":"ttrpc"}"#),
            Err(ReplyError::BadJson(_))
        ));
        assert!(matches!(
            parse_reply(b"{\"address\":\"\"}"),
            Err(ReplyError::BadJson(_))
        ));
        assert!(matches!(
            parse_reply(b"{\"version\":2,\"address\":\"unix:///x\",\"protocol\":\"grpc\"}"),
            Err(ReplyError::Protocol(_))
        ));
        assert!(matches!(
            parse_reply(b"panic: something broke"),
            Err(ReplyError::Unrecognized(_))
        ));
        assert_eq!(
            parse_reply(b"unix:///run/containerd/s/abc\n").map(|a| a.version),
            Ok(2)
        );
    }
}
