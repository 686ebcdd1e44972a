//! The admin API's bearer tokens, each with a name: the name is who the audit log records for
//! what a caller of that token did (pause, resume, retry, cancel, exempt), so "who paused" has an
//! answer that the caller cannot make up. `JANITOR_ADMIN_TOKEN` is the token named `admin`;
//! `JANITOR_ADMIN_TOKENS` adds named ones as `name=token,name=token`.

use crate::ecs::sign::signatures_equal;
use crate::ecs::Secret;

/// The name the single `admin_token` setting's token goes by.
pub const DEFAULT_NAME: &str = "admin";

/// One token and the name it is recorded under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub name: String,
    pub secret: Secret,
}

/// Every token the admin API accepts; empty disables the mutating endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminTokens(Vec<NamedToken>);

impl AdminTokens {
    /// The tokens of `admin_token` (named [`DEFAULT_NAME`]) and of `admin_tokens`
    /// (`name=token,...`, already checked by [`parse`]).
    pub fn new(single: Option<Secret>, named: Vec<NamedToken>) -> AdminTokens {
        let mut all: Vec<NamedToken> = single
            .map(|secret| NamedToken {
                name: DEFAULT_NAME.into(),
                secret,
            })
            .into_iter()
            .collect();
        all.extend(named);
        AdminTokens(all)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the token `given` is, comparing every token in constant time.
    pub fn name_of(&self, given: &str) -> Option<&str> {
        if given.is_empty() {
            return None;
        }
        let mut found = None;
        for t in &self.0 {
            if signatures_equal(given, t.secret.expose()) && found.is_none() {
                found = Some(t.name.as_str());
            }
        }
        found
    }
}

/// The fewest characters an admin token may have.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Parses `name=token,name=token`: names of letters, digits, `.`, `_`, `-` and `@`, each once,
/// tokens of at least 16 characters (a guessable token guards nothing). The error names the entry
/// by position, never its token.
pub fn parse(text: &str) -> Result<Vec<NamedToken>, String> {
    let mut out: Vec<NamedToken> = Vec::new();
    for (i, entry) in text.split(',').map(str::trim).enumerate() {
        let n = i + 1;
        if entry.is_empty() {
            return Err(format!("entry {n} is empty: write `name=token,name=token`"));
        }
        let Some((name, token)) = entry.split_once('=') else {
            return Err(format!(
                "entry {n} has no `=`: write `name=token`, e.g. `deploy-bot=<token>`"
            ));
        };
        let name = name.trim();
        let token = token.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(format!(
                "entry {n}: its name (before `=`) must be letters, digits, `.`, `_`, `-` or `@`"
            ));
        }
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "entry {n}: the token (after `=`) is shorter than 16 characters; use e.g. `openssl rand -hex 32` (are name and token the wrong way round?)"
            ));
        }
        if name == DEFAULT_NAME || out.iter().any(|t| t.name == name) {
            return Err(format!(
                "entry {n}: its name is taken by an earlier entry, or is `{DEFAULT_NAME}` (JANITOR_ADMIN_TOKEN's)"
            ));
        }
        out.push(NamedToken {
            name: name.to_string(),
            secret: Secret::new(token),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tokens_and_finds_the_caller() {
        let named =
            parse("deploy-bot=0123456789abcdef0123, alice@ops = fedcba9876543210fedc").unwrap();
        let tokens = AdminTokens::new(Some(Secret::new("single-token-value")), named);
        assert_eq!(tokens.name_of("single-token-value"), Some("admin"));
        assert_eq!(tokens.name_of("0123456789abcdef0123"), Some("deploy-bot"));
        assert_eq!(tokens.name_of("fedcba9876543210fedc"), Some("alice@ops"));
        assert_eq!(tokens.name_of("fedcba9876543210fed"), None);
        assert_eq!(tokens.name_of(""), None);
        assert!(AdminTokens::default().is_empty());
    }

    #[test]
    fn bad_entries_say_which_and_never_echo_a_token() {
        for (text, want) in [
            ("bot", "entry 1 has no `=`"),
            ("a=0123456789abcdef,", "entry 2 is empty"),
            ("a b=0123456789abcdef", "entry 1: its name (before `=`)"),
            (
                "bot=short-secret",
                "entry 1: the token (after `=`) is shorter",
            ),
            ("admin=0123456789abcdef", "is taken"),
            (
                "x=0123456789abcdef,x=0123456789abcdeg",
                "entry 2: its name is taken",
            ),
            // Written the wrong way round: neither part is echoed.
            ("0123456789abcdef0123=carol", "the wrong way round"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(
                !e.contains("0123456789") && !e.contains("short-secret") && !e.contains("carol"),
                "{e}"
            );
        }
        let t = parse("bot=0123456789abcdef").unwrap();
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}
