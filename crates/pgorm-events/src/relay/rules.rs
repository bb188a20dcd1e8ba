//! Relay rules: which event types go to the relay lane. Same pattern syntax
//! as [`Router`](crate::Router) (exact types, `*` for one segment, a final
//! `**` for one or more), restricted to segments a NATS subject can carry.
//! Each rule is stored as an anchored regular expression built here from the
//! validated pattern, never from raw user text.

use super::RelayError;

/// The characters a literal segment (and a segment matched by `*`) may hold:
/// safe in a NATS subject token and free of regex metacharacters.
fn is_subject_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The longest pattern accepted.
pub(crate) const MAX_PATTERN_LEN: usize = 200;

/// A validated relay rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub pattern: String,
    pub regex: String,
}

/// Validates `pattern` and builds its anchored regular expression.
pub(crate) fn rule(pattern: &str) -> Result<Rule, RelayError> {
    let bad = |reason: &str| RelayError::Setting {
        setting: "rule",
        reason: format!("pattern {pattern:?} {reason}"),
    };
    if pattern.is_empty() {
        return Err(bad("is empty"));
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(bad("is too long"));
    }
    let segments: Vec<&str> = pattern.split('.').collect();
    let mut parts = Vec::with_capacity(segments.len());
    for (position, segment) in segments.iter().enumerate() {
        let part = match *segment {
            "" => return Err(bad("has an empty segment")),
            "*" => "[A-Za-z0-9_-]+".to_owned(),
            "**" if position + 1 == segments.len() => {
                "[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*".to_owned()
            }
            "**" => return Err(bad("has `**` before its last segment")),
            literal if literal.chars().all(is_subject_char) => literal.to_owned(),
            _ => {
                return Err(bad(
                    "may hold only ASCII letters, digits, `_`, `-`, and `*`/`**` segments",
                ))
            }
        };
        parts.push(part);
    }
    Ok(Rule {
        pattern: pattern.to_owned(),
        regex: format!("^{}$", parts.join("\\.")),
    })
}

/// Validates a subject prefix: dot-separated tokens of subject characters.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), RelayError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PATTERN_LEN
        && prefix
            .split('.')
            .all(|token| !token.is_empty() && token.chars().all(is_subject_char));
    if ok {
        Ok(())
    } else {
        Err(RelayError::Setting {
            setting: "subject_prefix",
            reason: format!(
                "{prefix:?} must be dot-separated tokens of ASCII letters, digits, `_` and `-`"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_anchored_regexes() {
        assert_eq!(rule("order.created").unwrap().regex, "^order\\.created$");
        assert_eq!(rule("order.*").unwrap().regex, "^order\\.[A-Za-z0-9_-]+$");
        assert_eq!(
            rule("order.**").unwrap().regex,
            "^order\\.[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$"
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["", "a..b", "a.**.b", "a b", "a.>", "a.(x)", "é"] {
            assert!(rule(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_prefix("events.out").is_ok());
        assert!(validate_prefix("events.>").is_err());
        assert!(validate_prefix("").is_err());
    }
}
