//! Errors of the patcher. Every message names the file it is about, so that a refusal can be
//! printed as it is.

use std::io;
use std::path::PathBuf;

/// Why a config could not be read, patched or written. Nothing is written when one is
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not valid TOML.
    #[error("{file}:{line}:{column}: invalid TOML: {message}; the file was not touched")]
    InvalidToml {
        /// The file, as named by the caller.
        file: String,
        /// 1-based line in the file (Go-template header lines counted).
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A version-1 config (no `version` key, but content).
    #[error(
        "{file}: this is a version-1 containerd config (it has no `version` key), which this \
         tool does not edit; migrate it first (containerd 2.x: `containerd config migrate`; \
         1.x: rewrite it as `version = 2`, plugin names in full such as \
         plugins.\"io.containerd.grpc.v1.cri\")"
    )]
    Version1 {
        /// The file.
        file: String,
    },
    /// A `version` this tool does not know.
    #[error("{file}: unsupported containerd config version {found}; supported are 2, 3 and 4")]
    UnsupportedVersion {
        /// The file.
        file: String,
        /// What the `version` key holds, as written.
        found: String,
    },
    /// The file gives no version (empty, missing or a template) and none was given.
    #[error(
        "{file}: cannot tell the containerd config version ({why}); pass it explicitly \
         (--config-version 2 for containerd 1.x, 3 for 2.0–2.2, 4 for 2.3 and later)"
    )]
    VersionUnknown {
        /// The file.
        file: String,
        /// Why it could not be told.
        why: String,
    },
    /// A key the handler needs holds something of another kind.
    #[error(
        "{file}: {path} is {found} where {expected} belongs; cannot register the runtime handler"
    )]
    WrongKind {
        /// The file.
        file: String,
        /// The dotted path of the offending key.
        path: String,
        /// What it is (e.g. "a string").
        found: &'static str,
        /// What it should be (e.g. "a table").
        expected: &'static str,
    },
    /// `imports` is not an array of strings.
    #[error("{file}: `imports` must be an array of strings, found {found}")]
    BadImports {
        /// The file.
        file: String,
        /// What it is.
        found: String,
    },
    /// A Go template (k3s/rke2) cannot get an `imports` entry: the base template owns it.
    #[error(
        "{file}: is a Go template (k3s/rke2) whose base owns `imports`; put the drop-in in \
         the directory its rendered config imports ({hint}), or register in place"
    )]
    TemplateImports {
        /// The file.
        file: String,
        /// Where the drop-in should go.
        hint: String,
    },
    /// A version-2 drop-in would replace the main file's whole CRI plugin section.
    #[error(
        "{file}: containerd 1.x replaces a plugin's whole section with the one of an imported \
         file (containerd issue 5837), so a drop-in would drop the {count} setting(s) this file \
         has under plugins.\"io.containerd.grpc.v1.cri\" (e.g. {example}); register in place \
         instead (leave out the drop-in directory)"
    )]
    DropInWouldReplaceCri {
        /// The main config.
        file: String,
        /// How many keys the CRI section of the main file holds.
        count: usize,
        /// One of them.
        example: String,
    },
    /// The edit would have changed bytes outside what it owns; refused.
    #[error(
        "{file}: the edit would change bytes outside the runtime handler ({why}); nothing was \
         written — please report this file's shape"
    )]
    NotSurgical {
        /// The file.
        file: String,
        /// What differed.
        why: String,
    },
    /// A saved value of the record could not be parsed back.
    #[error("{file}: the registration record is damaged: {why}")]
    BadRecord {
        /// The file.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// The handler would be removed while a key (`default_runtime_name`) still names it.
    #[error(
        "{file}:{line}: {key} = \"{handler}\" names the runtime handler being removed, and \
         containerd would then refuse to load its CRI plugin (no pod could start); point it at \
         another runtime (e.g. runc) first; nothing was written"
    )]
    HandlerInUse {
        /// The file.
        file: String,
        /// The key's line.
        line: usize,
        /// The key's dotted path.
        key: String,
        /// The handler.
        handler: String,
    },
    /// The file changed between our read and our write.
    #[error(
        "{path}: changed by someone else while it was being edited; nothing was written, run again"
    )]
    ChangedConcurrently {
        /// The file.
        path: PathBuf,
    },
    /// The file to write is a symlink. Writing through it would change a file that the link
    /// merely names (perhaps another tool's, or one outside a host root); replacing it would
    /// silently break whoever made the link. Either way the user should choose.
    #[error(
        "{}: is a symlink to {}; kata-gpu does not write through links (the file a link names \
         may belong to something else): name that file itself, or replace the link by a copy; \
         nothing was written",
        path.display(),
        target.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
        /// What it points to, as written in the link.
        target: PathBuf,
    },
    /// Another installer holds the lock.
    #[error("{path}: another installer holds this lock (waited {waited_ms} ms); try again when it is done")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited_ms: u128,
    },
    /// A file or process operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", …).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A command (systemctl, containerd) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and output.
        detail: String,
    },
    /// containerd could not be asked over CRI what it serves.
    #[error("cannot ask the running containerd what it serves ({}): {detail}", path.display())]
    Cri {
        /// The socket.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// containerd's socket did not answer in time.
    #[error("{path}: containerd did not answer within {waited_ms} ms ({last})")]
    NoAnswer {
        /// The socket.
        path: PathBuf,
        /// How long we waited.
        waited_ms: u128,
        /// The last failure.
        last: String,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// What kind of TOML item something is, for messages.
pub(crate) fn kind_of(item: &toml_edit::Item) -> &'static str {
    use toml_edit::{Item, Value};
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}
