//! The README's own commands, for the tests that run them: the `sh` blocks of one section
//! as the lines a reader types, walked in order, so that a test runs what the README says
//! and fails the day the two part.

use std::collections::VecDeque;
use std::path::Path;

/// The command lines of one README section, in the order a reader meets them.
pub struct Walkthrough {
    heading: String,
    lines: VecDeque<String>,
}

impl Walkthrough {
    /// The command lines of the ```` ```sh ```` blocks under `heading` (a whole line of the
    /// README, e.g. `## Run it on a node`) up to the next heading: comments and blank lines
    /// left out, lines continued with `\` joined.
    #[track_caller]
    pub fn of(heading: &str) -> Self {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let text = std::fs::read_to_string(&readme).expect("README.md");
        Walkthrough {
            heading: heading.to_owned(),
            lines: commands(&text, heading)
                .unwrap_or_else(|| panic!("README.md has no section {heading:?}"))
                .into(),
        }
    }

    /// The next command line, which must be `want` exactly: a test names each command it
    /// runs, and fails when the README changes under it.
    #[track_caller]
    pub fn next(&mut self, want: &str) -> String {
        let got = self.lines.pop_front();
        assert_eq!(
            got.as_deref(),
            Some(want),
            "README.md's {:?} and its test part here",
            self.heading
        );
        want.to_owned()
    }

    /// The first command line that starts with `start`, for a test that runs one command
    /// of a section.
    pub fn find(&self, start: &str) -> Option<String> {
        self.lines.iter().find(|l| l.starts_with(start)).cloned()
    }

    /// Asserts that the test walked every command of the section.
    #[track_caller]
    pub fn done(self) {
        assert!(
            self.lines.is_empty(),
            "README.md's {:?} has commands its test does not run: {:?}",
            self.heading,
            self.lines
        );
    }
}

/// A command line's words (no quoting: the README's lines that a test splits have none).
pub fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// The command lines of the `sh` blocks of the section `heading` in `text`.
fn commands(text: &str, heading: &str) -> Option<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| *l != heading);
    lines.next()?;
    let (mut out, mut fence, mut pending) = (Vec::new(), None::<bool>, String::new());
    for line in lines {
        if let Some(rest) = line.strip_prefix("```") {
            fence = match fence {
                None => Some(rest == "sh"),
                Some(_) => None,
            };
            continue;
        }
        match fence {
            None if line.starts_with('#') => break,
            Some(true) => {}
            _ => continue,
        }
        let code = match line.find(" #") {
            Some(at) => &line[..at],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        }
        .trim();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let whole = std::mem::take(&mut pending);
        if !whole.trim().is_empty() {
            out.push(whole.trim().to_owned());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::commands;

    #[test]
    fn a_sections_sh_lines_without_comments_up_to_the_next_heading() {
        let text = "# t\n## A\nsay\n```sh\nrun one   # why\n# only a comment\n\nrun two \\\n    --flag\n```\n```text\nnot a command\n```\n```sh\nrun three\n```\n### B\n```sh\nnot A's\n```\n";
        assert_eq!(
            commands(text, "## A"),
            Some(vec![
                "run one".to_owned(),
                "run two --flag".to_owned(),
                "run three".to_owned()
            ])
        );
        assert_eq!(commands(text, "## C"), None);
    }
}
