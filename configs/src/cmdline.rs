//! A pod's guest kernel parameters, split as the guest will see them. Kata splits
//! `kernel_params` with Go's `strings.Fields`, on Unicode whitespace (U+0085, U+00A0, …);
//! the guest kernel splits on ASCII whitespace (vertical tab included) and strips double
//! quotes, so `"init=/bin/sh"` reaches it as `init=/bin/sh`. Rather than model every
//! reader, a pod's parameters may hold only printable ASCII other than quotes, separated
//! by ASCII whitespace: then every reader splits them alike, and the check sees what the
//! guest gets.

/// ASCII whitespace as Go's `unicode.IsSpace` and the kernel's `isspace` both read it.
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The parameters of a pod's `kernel_params`, or the first character that would make
/// Kata, the guest kernel and this check read them differently.
pub fn split_pod_kernel_params(value: &str) -> Result<Vec<&str>, char> {
    if let Some(bad) = value
        .chars()
        .find(|&c| !is_separator(c) && (!c.is_ascii_graphic() || c == '"' || c == '\''))
    {
        return Err(bad);
    }
    Ok(value
        .split(is_separator)
        .filter(|p| !p.is_empty())
        .collect())
}

/// A refused character, in words: `a double quote`, `U+00A0`.
pub fn describe(c: char) -> String {
    match c {
        '"' => "a double quote".to_owned(),
        '\'' => "a single quote".to_owned(),
        _ => format!("U+{:04X}", u32::from(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_every_reader_splits_alike_passes() {
        let table: [(&str, &[&str]); 4] = [
            ("quiet  agent.log=info", &["quiet", "agent.log=info"]),
            ("a\tb\nc\x0bd\x0ce\rf", &["a", "b", "c", "d", "e", "f"]),
            ("", &[]),
            (
                "agent.aa_kbc_params=cc_kbc::https://kbs.example:8080",
                &["agent.aa_kbc_params=cc_kbc::https://kbs.example:8080"],
            ),
        ];
        for (value, params) in table {
            assert_eq!(
                split_pod_kernel_params(value),
                Ok(params.to_vec()),
                "{value:?}"
            );
        }
    }

    #[test]
    fn what_readers_split_differently_is_refused() {
        let table = [
            ("\"init=/bin/sh\"", '"'),
            ("agent.log='debug'", '\''),
            ("quiet\u{a0}init=/bin/sh", '\u{a0}'),
            ("quiet\u{85}init=/bin/sh", '\u{85}'),
            ("quiet\u{2003}init=/bin/sh", '\u{2003}'),
            ("quiet\u{3000}console=ttyS0", '\u{3000}'),
            ("ınit=/bin/sh", 'ı'),
            ("quiet\0init=/bin/sh", '\0'),
            ("quiet\x1finit=/bin/sh", '\x1f'),
            ("quiet\x7finit=/bin/sh", '\x7f'),
        ];
        for (value, bad) in table {
            assert_eq!(split_pod_kernel_params(value), Err(bad), "{value:?}");
        }
        assert_eq!(describe('"'), "a double quote");
        assert_eq!(describe('\u{a0}'), "U+00A0");
    }
}
