//! Pure: the `.creds` file format (a user JWT and its nkey seed, as `nsc` writes it and every NATS client reads
//! it).

use nkeys::KeyPairType;

use crate::claims::{key_from_seed, MintError};

/// A user's credentials: its JWT and the seed of the key the JWT names.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    /// The user JWT.
    pub jwt: String,
    /// The user's nkey seed (`SU...`): a secret.
    pub seed: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("jwt", &self.jwt).field("seed", &"<secret>").finish()
    }
}

/// A `.creds` text that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    /// A `-----BEGIN ...-----` block is missing or empty.
    #[error("no {0} block")]
    Missing(&'static str),
    /// The seed is not a user seed.
    #[error(transparent)]
    Seed(#[from] MintError),
}

const JWT_BLOCK: &str = "NATS USER JWT";
const SEED_BLOCK: &str = "USER NKEY SEED";

impl Creds {
    /// The file's text, in the format `nsc` writes.
    pub fn render(&self) -> String {
        format!(
            "-----BEGIN {JWT_BLOCK}-----\n{}\n------END {JWT_BLOCK}------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN {SEED_BLOCK}-----\n{}\n------END {SEED_BLOCK}------\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }

    /// Reads a `.creds` text; the seed must be a user seed.
    pub fn parse(text: &str) -> Result<Self, CredsError> {
        let jwt = block(text, JWT_BLOCK).ok_or(CredsError::Missing(JWT_BLOCK))?;
        let seed = block(text, SEED_BLOCK).ok_or(CredsError::Missing(SEED_BLOCK))?;
        key_from_seed(seed, KeyPairType::User, "user seed")?;
        Ok(Self { jwt: jwt.to_owned(), seed: seed.to_owned() })
    }

    /// The user's public key (`U...`), which revocation names.
    pub fn public_key(&self) -> Result<String, CredsError> {
        Ok(key_from_seed(&self.seed, KeyPairType::User, "user seed")?.public_key())
    }
}

/// The one line between `---BEGIN <name>---` and `---END <name>---`.
fn block<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = text.lines().map(str::trim).skip_while(|l| !(l.starts_with("---") && l.contains(name)));
    lines.next()?;
    let value = lines.next().filter(|l| !l.is_empty() && !l.starts_with("---"))?;
    lines.next().filter(|l| l.starts_with("---") && l.contains("END") && l.contains(name))?;
    Some(value)
}

#[cfg(test)]
mod tests {
    use nkeys::KeyPair;

    use super::*;

    #[test]
    fn render_then_parse_round_trips() {
        let user = KeyPair::new_user();
        let creds = Creds { jwt: "a.b.c".into(), seed: user.seed().unwrap() };
        let text = creds.render();
        assert_eq!(Creds::parse(&text).unwrap(), creds);
        assert_eq!(creds.public_key().unwrap(), user.public_key());
        assert!(!format!("{creds:?}").contains(&creds.seed));
    }

    #[test]
    fn broken_files_are_refused() {
        assert_eq!(Creds::parse(""), Err(CredsError::Missing(JWT_BLOCK)));
        let creds = Creds { jwt: "a.b.c".into(), seed: KeyPair::new_account().seed().unwrap() };
        assert!(matches!(Creds::parse(&creds.render()), Err(CredsError::Seed(_))));
        let cut = creds.render().replace("------END USER NKEY SEED------", "");
        assert_eq!(Creds::parse(&cut), Err(CredsError::Missing(SEED_BLOCK)));
    }
}
