//! Errors of the `cdi` crate. Each names the file, and the device where one is concerned,
//! so that a user reading one line knows what to open and what to fix.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::annotations::AnnotationError;
use crate::name::NameError;
use crate::version::{SpecVersion, UnsupportedVersion};

/// Why a path in a spec was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// The path is empty.
    Empty,
    /// The path is relative.
    NotAbsolute,
    /// The path holds a `.` or `..` component.
    DotComponent,
    /// A device node outside `/dev`.
    OutsideDev,
    /// The path holds a NUL byte.
    Nul,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "the path is empty",
            PathProblem::NotAbsolute => "the path must be absolute",
            PathProblem::DotComponent => "the path must not contain '.' or '..' components",
            PathProblem::OutsideDev => "device nodes must be under /dev",
            PathProblem::Nul => "the path contains a NUL byte",
        })
    }
}

/// A rule of the CDI specification (or of ours, where stricter) that a spec breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `cdiVersion` is not a supported version.
    #[error(transparent)]
    Version(#[from] UnsupportedVersion),
    /// The declared version is older than a feature the spec uses.
    #[error("cdiVersion {declared} is too low: {feature}, which needs {required} or later")]
    VersionTooLow {
        /// What the spec declares.
        declared: SpecVersion,
        /// What its features need.
        required: SpecVersion,
        /// The feature, in words.
        feature: String,
    },
    /// A field that the declared version no longer accepts.
    #[error("{field} is not valid from cdiVersion 1.1.0 on (declared {declared})")]
    RetiredField {
        /// The field.
        field: &'static str,
        /// What the spec declares.
        declared: SpecVersion,
    },
    /// The kind is not a valid `vendor/class`.
    #[error("{}", kind_message(.kind, .problem))]
    Kind {
        /// The kind as written.
        kind: String,
        /// What is wrong with it.
        problem: Box<NameError>,
    },
    /// A device name breaks the naming rules.
    #[error(transparent)]
    DeviceName(NameError),
    /// The spec has no devices.
    #[error("the spec defines no devices")]
    NoDevices,
    /// Two devices of one spec share a name.
    #[error("the name is defined more than once in this spec")]
    DuplicateDevice,
    /// A device has nothing to apply.
    #[error("the device has no containerEdits")]
    EmptyEdits,
    /// An env entry that is not `KEY=VALUE`.
    #[error("env entry {0:?} is not KEY=VALUE with a non-empty KEY")]
    Env(String),
    /// A hook env entry that is not `KEY=VALUE`.
    #[error("hook {hook}: env entry {entry:?} is not KEY=VALUE with a non-empty KEY")]
    HookEnv {
        /// The hook point.
        hook: String,
        /// The entry.
        entry: String,
    },
    /// A negative device number, which runc would read as a wildcard.
    #[error("device node {path:?}: {field} {value} is negative; device numbers are 0 or more")]
    DeviceNumber {
        /// The node's path.
        path: String,
        /// `major` or `minor`.
        field: &'static str,
        /// The number given.
        value: i64,
    },
    /// A device node's path or hostPath is unsafe or malformed.
    #[error("device node {field} {path:?}: {problem}")]
    DeviceNodePath {
        /// `path` or `hostPath`.
        field: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        problem: PathProblem,
    },
    /// A device node type other than `c`, `b`, `u`, `p`.
    #[error("device node {path:?}: type {device_type:?} is not one of c, b, u, p")]
    DeviceNodeType {
        /// The node's path.
        path: String,
        /// The type given.
        device_type: String,
    },
    /// Cgroup permissions other than a combination of `r`, `w`, `m`.
    #[error(
        "device node {path:?}: permissions {permissions:?} must be a combination of r, w and m"
    )]
    Permissions {
        /// The node's path.
        path: String,
        /// The permissions given.
        permissions: String,
    },
    /// A file mode with bits beyond the permission, setuid/setgid and sticky bits.
    #[error("device node {path:?}: fileMode {mode:#o} has bits other than permissions")]
    FileMode {
        /// The node's path.
        path: String,
        /// The mode given.
        mode: u32,
    },
    /// A hook point that OCI does not have.
    #[error("hook name {0:?} is not one of prestart, createRuntime, createContainer, startContainer, poststart, poststop")]
    HookName(String),
    /// A hook whose executable path is empty or relative.
    #[error("hook {hook}: path {path:?}: {problem}")]
    HookPath {
        /// The hook point.
        hook: String,
        /// The path.
        path: String,
        /// What is wrong.
        problem: PathProblem,
    },
    /// A hook timeout of zero or less.
    #[error("hook {hook}: timeout {timeout} must be greater than zero")]
    HookTimeout {
        /// The hook point.
        hook: String,
        /// The timeout given.
        timeout: i64,
    },
    /// A mount without a host path.
    #[error("mount {container_path:?}: hostPath is empty")]
    MountHostPath {
        /// The mount's destination.
        container_path: String,
    },
    /// A mount whose destination is unsafe or malformed.
    #[error("mount containerPath {path:?}: {problem}")]
    MountContainerPath {
        /// The destination.
        path: String,
        /// What is wrong.
        problem: PathProblem,
    },
    /// An Intel RDT class of service that could escape the resctrl directory.
    #[error("intelRdt.closID {0:?} must not be \".\" or \"..\", contain '/' or a newline, or be 4096 bytes or longer")]
    ClosId(String),
    /// A malformed network device.
    #[error("netDevices: {0}")]
    NetDevice(String),
    /// An annotation breaks the Kubernetes rules.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
}

/// A spec that parsed but breaks a rule: where, and which rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The spec file, when the spec came from one.
    pub file: Option<PathBuf>,
    /// The device concerned, when the rule is about one.
    pub device: Option<String>,
    /// The rule.
    pub problem: Problem,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(device) = &self.device {
            write!(f, "device {device:?}: ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// The spec format, chosen by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.json`
    Json,
    /// `.yaml`
    Yaml,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        })
    }
}

/// Everything that can go wrong reading, checking or writing CDI specs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not JSON/YAML, or does not match the spec's shape.
    #[error("{path}{}: invalid {format}: {message}", location(*.line, *.column))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// JSON or YAML.
        format: Format,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// The parser's words, without the position.
        message: String,
    },
    /// A file that is neither `.json` nor `.yaml`.
    #[error("{0}: a CDI spec file must end in .json or .yaml")]
    Extension(PathBuf),
    /// A file too large to be a spec.
    #[error("{path}: {size} bytes is more than the {max} a spec file may have")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The spec breaks a rule.
    #[error(transparent)]
    Invalid(Box<SpecError>),
    /// Writing a spec failed; nothing was replaced.
    #[error("cannot write {path}")]
    Write {
        /// The file that was to be written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::Invalid(Box::new(e))
    }
}

fn kind_message(kind: &str, problem: &NameError) -> String {
    match problem {
        NameError::NotAKind(_) => format!("kind: {problem}"),
        _ => format!("kind {kind:?}: {problem}"),
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Joins an error and its sources into one line, `outer: inner: innermost`, each said
/// once: a source whose text the line already ends with (an error that writes its source
/// into its own message) is not said again.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// An error that writes its source into its message, as thiserror's `{source}` does.
    #[derive(Debug)]
    struct Says(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Says {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match &self.1 {
                Some(e) => write!(f, "{}: {e}", self.0),
                None => f.write_str(self.0),
            }
        }
    }

    impl std::error::Error for Says {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn each_source_is_said_once() {
        let gone = || Some(std::io::Error::other("gone"));
        assert_eq!(
            one_line(&Says("cannot read /c", gone())),
            "cannot read /c: gone"
        );
        let bare = std::io::Error::other(Says("inner", None));
        assert_eq!(one_line(&bare), "inner");
        let wrapped = crate::Error::Read {
            path: "/c".into(),
            source: std::io::Error::other("gone"),
        };
        assert_eq!(one_line(&wrapped), "cannot read /c: gone");
    }
}
