//! Channel names: validated once, quoted as identifiers wherever they reach
//! SQL. A name is exact and case-sensitive; quotes, spaces or `;` in it are
//! just characters of the name.

use crate::error::ValidationError;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1). A longer name would be
/// truncated by the server, and notifications would then never match it.
pub const MAX_CHANNEL_LEN: usize = 63;

/// Checks that `name` can be a channel name, exactly as given.
///
/// # Errors
/// [`ValidationError::EmptyChannel`], [`ValidationError::NulInChannel`] or
/// [`ValidationError::ChannelTooLong`].
pub fn validate_channel(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::EmptyChannel);
    }
    if name.contains('\0') {
        return Err(ValidationError::NulInChannel {
            name: name.replace('\0', "\\0"),
        });
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ValidationError::ChannelTooLong {
            len: name.len(),
            max: MAX_CHANNEL_LEN,
        });
    }
    Ok(())
}

/// `name` as a quoted SQL identifier: `"name"`, with every `"` doubled.
pub(crate) fn quote_identifier(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for character in name.chars() {
        if character == '"' {
            quoted.push('"');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_and_keep_their_case() {
        assert_eq!(validate_channel("Orders"), Ok(()));
        assert_eq!(quote_identifier("Orders"), "\"Orders\"");
    }

    #[test]
    fn hostile_names_are_quoted_into_harmless_identifiers() {
        assert_eq!(
            quote_identifier("a\"; DROP TABLE users; --"),
            "\"a\"\"; DROP TABLE users; --\""
        );
        assert_eq!(quote_identifier("with space"), "\"with space\"");
        assert_eq!(quote_identifier("\"\""), "\"\"\"\"\"\"");
    }

    #[test]
    fn empty_nul_and_long_names_are_rejected() {
        assert_eq!(validate_channel(""), Err(ValidationError::EmptyChannel));
        assert!(matches!(
            validate_channel("a\0b"),
            Err(ValidationError::NulInChannel { .. })
        ));
        assert_eq!(validate_channel(&"x".repeat(63)), Ok(()));
        assert_eq!(
            validate_channel(&"x".repeat(64)),
            Err(ValidationError::ChannelTooLong { len: 64, max: 63 })
        );
    }

    #[test]
    fn the_limit_counts_bytes_not_characters() {
        // 31 two-byte characters are 62 bytes; 22 three-byte ones are 66.
        assert_eq!(validate_channel(&"é".repeat(31)), Ok(()));
        assert!(validate_channel(&"€".repeat(22)).is_err());
    }
}
