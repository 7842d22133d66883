//! Text from peers shown to administrators: user names, token labels.

use std::borrow::Cow;

/// Tells whether `character` could break or disguise a log line or a
/// terminal: a control character (escape sequences start with one), a line
/// or paragraph separator, or an invisible format character such as a
/// right-to-left override or a zero-width space.
pub fn needs_escape(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Returns `text` with every character that [`needs_escape`] names written
/// as `\u{…}`, so that it cannot forge a log line or send an escape
/// sequence to a terminal.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if needs_escape(character) {
            escaped.extend(character.escape_unicode());
        } else {
            escaped.push(character);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_control_and_format_characters() {
        assert_eq!(printable("user carol\nFAKE: root"), "user carol\\u{a}FAKE: root");
        assert_eq!(printable("a\u{1b}[2Jb\0c\td"), "a\\u{1b}[2Jb\\u{0}c\\u{9}d");
        assert_eq!(printable("carol\u{2028}FAKE"), "carol\\u{2028}FAKE");
        assert_eq!(printable("gnp.exe\u{202e}"), "gnp.exe\\u{202e}");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("user jos\u{e9} \u{2014} ok"), "user jos\u{e9} \u{2014} ok");
    }
}
