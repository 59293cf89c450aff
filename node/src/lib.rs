//! What is true of a node, gathered once and returned as values, and what kata-gpu does to
//! a node, as functions with typed errors: the library under `kata-gpu`'s commands, which
//! parse flags into its values and print what it returns (this crate prints nothing).
//!
//! What is true of the node:
//! - [`host`]: what the host is, read once per command: its devices (PCI listed once), the
//!   CDI specs they call for and the installed ones, its processes.
//! - [`facts`]: the node's facts in one value that every view of a command reads: the host,
//!   a profile's status, the sandboxes.
//! - [`status`]: a profile's status on the node: installed, verified, registered, loaded by
//!   the running containerd, restart owed; what the shim probes answered.
//! - [`containerd`]: containerd on the node: its default config and socket, its processes,
//!   whether it has loaded a change, the PATH it finds shims on.
//! - [`shims`]: our shim where containerd finds it (and its `-v`), Kata's shim where the
//!   shim settings name it, the settings themselves (read once).
//! - [`coexist`]: other tools that set up the same things (another CDI spec of our kinds, a
//!   handler of our name that runs something else), and the refusal with its fix.
//! - [`sandboxes`]: the node's GPU sandboxes — the proxy's per-sandbox state, the processes
//!   that serve each (our proxy, Kata's shim, QEMU), and which GPU each holds, is free, or
//!   is held by a sandbox that no longer runs (a leak).
//! - [`processes`]: the host's processes, by their command lines (the host's `/proc` under
//!   `--host-root`).
//!
//! What kata-gpu does to it:
//! - [`install`] and [`uninstall`]: the node's set-up steps (artifacts, host CDI spec, boot
//!   unit, registration and restart, shim check, RuntimeClass manifest) and their reverse,
//!   with what uninstall leaves and why; each reports a [`steps::Step`].
//! - [`registration`]: a handler registered in containerd's config and unregistered
//!   again (planned, then applied under the node lock with the record kept), and the
//!   restart that makes containerd load it.
//! - [`shim_settings`]: the class's shim settings file that hands its sandboxes to Kata's
//!   Rust runtime, planned, written and removed as install and uninstall do it.
//! - [`binaries`]: what `binaries install` put on the node, and placing a shim where
//!   containerd finds it, never over a file that is not ours.
//! - [`boot_unit`]: the systemd unit that makes a node ready again after a reboot.
//!
//! Under both:
//! - [`record`]: what kata-gpu did to the node, per handler, and the node lock.
//! - [`paths`]: host paths under `--host-root`, and how they are named.
//! - [`command_line`]: the one formatter of the `kata-gpu` command lines kata-gpu prints,
//!   each rooted when `--host-root` is set.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod binaries;
pub mod boot_unit;
pub mod coexist;
pub mod command_line;
pub mod containerd;
pub mod facts;
pub mod host;
pub mod install;
pub mod paths;
pub mod processes;
pub mod record;
pub mod registration;
pub mod sandboxes;
pub mod shim_settings;
pub mod shims;
pub mod status;
pub mod steps;
pub mod uninstall;
