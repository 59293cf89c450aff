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

#[cfg(test)]
mod tests {
    use super::rooted;
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
}
