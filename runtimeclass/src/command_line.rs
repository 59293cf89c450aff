//! The node library's formatter of printed `kata-gpu` command lines
//! ([`kata_gpu_node::command_line::rooted`]), told this parser's subcommands.

use std::path::Path;

/// `text` with every `kata-gpu` command in it rooted at `root` (see the library's).
pub fn rooted(text: &str, root: &Path) -> String {
    if root == Path::new("/") {
        return text.to_owned();
    }
    use clap::CommandFactory;
    let cli = crate::Cli::command();
    kata_gpu_node::command_line::rooted(text, root, |word| {
        cli.get_subcommands().any(|c| c.get_name() == word)
    })
}

/// An error and its causes in one line, `outer: cause: cause`, each said once
/// ([`cdi::one_line`]: the libraries' errors write their source into their message).
pub fn error_line(e: &anyhow::Error) -> String {
    cdi::one_line(e.as_ref())
}

#[cfg(test)]
mod tests {
    use super::{error_line, rooted};
    use std::path::Path;

    #[test]
    fn every_subcommand_of_the_parser_is_rooted() {
        use clap::CommandFactory;
        let root = Path::new("/sim");
        for c in crate::Cli::command().get_subcommands() {
            let name = c.get_name();
            assert_eq!(
                rooted(&format!("run kata-gpu {name} now"), root),
                format!("run kata-gpu --host-root /sim {name} now")
            );
        }
        assert_eq!(rooted("the kata-gpu shim", root), "the kata-gpu shim");
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        // A library error that writes its source in, under a context.
        let inner = kata_gpu_containerd_config::Error::Io {
            what: "cannot read",
            path: "/c".into(),
            source: io(),
        };
        let e = anyhow::Error::new(inner).context("cannot register");
        assert_eq!(error_line(&e), "cannot register: cannot read /c: gone");
        // A context over a bare cause keeps the cause.
        let e = anyhow::Error::new(io()).context("cannot read /c");
        assert_eq!(error_line(&e), "cannot read /c: gone");
    }
}
