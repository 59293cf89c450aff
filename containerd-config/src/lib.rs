//! Registering a runtime handler in containerd's config, surgically, reversibly and
//! atomically (ARCHITECTURE.md, "containerd's config").
//!
//! The core is pure, text in and text out:
//! - [`register`] adds the handler table of a [`HandlerSpec`] at the layout of the config's
//!   version (2: `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<h>`; 3 and 4:
//!   `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.<h>`), or updates an
//!   existing one of the same name, and returns a [`Registration`] record;
//! - [`unregister`] undoes it with that record, back to the same bytes;
//! - [`add_import`] / [`remove_import`] edit the root `imports` list for drop-in mode, and
//!   [`dropin`] builds the drop-in file and refuses drop-ins containerd 1.x would merge
//!   destructively.
//!
//! Everything but the handler is kept byte for byte: comments, key order, quoting, blank
//! lines, CRLF line endings, a missing final newline and a Go-template header line (k3s,
//! rke2). Each edit is checked by undoing it before it is returned, and refused with
//! [`Error::NotSurgical`] if the round trip does not give back the input.
//!
//! The edges: [`fsio`] (atomic writes that keep mode and owner, a backup, a lock) and
//! [`daemon`] (systemd restart, waiting for the socket, `containerd config dump`) and
//! [`cri`] (what the running containerd serves, asked over CRI).

mod build;
pub mod cri;
pub mod daemon;
mod default_runtime;
pub mod diff;
pub mod dropin;
mod error;
mod found;
pub mod fsio;
mod imports;
mod in_use;
mod node;
mod record;
mod register;
mod spec;
mod text;
mod unregister;
mod version;

pub use default_runtime::DEFAULT_RUNTIME;
pub use error::Error;
pub use found::{find_handler, FoundHandler};
pub use imports::{add_import, covers, imports, remove_import, ImportChange, ImportEdit};
pub use in_use::{keys_naming, refuse_dangling_name, NamingKey};
pub use register::{
    register, HandlerChange, KeyChange, Registered, Registration, SavedValue, Target,
};
pub use spec::{HandlerSpec, DEFAULT_POD_ANNOTATIONS};
pub use text::is_template_line;
pub use unregister::{unregister, Unregistered};
pub use version::{
    config_version, containerd_release, ConfigVersion, CRI_PLUGIN_V2, CRI_PLUGIN_V3,
};

#[cfg(test)]
mod register_tests;
