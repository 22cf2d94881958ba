//! [`CommandKey`]: a command-signing key of one test's own, so every test runs with signed commands: its seed file
//! is the server's `MUSTER_COMMAND_KEY`, its public key the agents' `MUSTER_TRUSTED_KEYS`. A test that forges or
//! replays commands signs with [`CommandKey::signer`] (or another key) itself.

use std::path::{Path, PathBuf};

use muster_security::command::CommandSigner;

/// `MUSTER_COMMAND_KEY`: the server's command-signing seed file.
pub const SERVER_ENV: &str = "MUSTER_COMMAND_KEY";
/// `MUSTER_TRUSTED_KEYS`: the agents' trusted command keys.
pub const AGENT_ENV: &str = "MUSTER_TRUSTED_KEYS";

/// A fresh command key written to a test directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandKey {
    /// The seed file (`<dir>/command.nk`).
    pub seed_file: PathBuf,
    /// The public key (`N…`) agents trust.
    pub public: String,
}

impl CommandKey {
    /// Generates a key and writes its seed to `<dir>/command.nk`, readable by the owner only.
    pub fn create_in(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let signer = CommandSigner::generate();
        let seed_file = dir.join("command.nk");
        std::fs::write(&seed_file, format!("{}\n", signer.seed()))?;
        std::fs::set_permissions(&seed_file, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { seed_file, public: signer.public_key().to_owned() })
    }

    /// The key in `<dir>/command.nk`, created there first if there is none (processes started one by one in one
    /// directory, as the bench starts them, then share it).
    pub fn ensure_in(dir: &Path) -> anyhow::Result<Self> {
        let seed_file = dir.join("command.nk");
        if !seed_file.exists() {
            return Self::create_in(dir);
        }
        let public = CommandSigner::from_file(&seed_file)?.public_key().to_owned();
        Ok(Self { seed_file, public })
    }

    /// The server's variable: `MUSTER_COMMAND_KEY` = the seed file.
    pub fn server_env(&self) -> (String, String) {
        (SERVER_ENV.to_owned(), self.seed_file.display().to_string())
    }

    /// The agents' variable: `MUSTER_TRUSTED_KEYS` = the public key.
    pub fn agent_env(&self) -> (String, String) {
        (AGENT_ENV.to_owned(), self.public.clone())
    }

    /// The key itself, to sign as the server does.
    pub fn signer(&self) -> anyhow::Result<CommandSigner> {
        Ok(CommandSigner::from_file(&self.seed_file)?)
    }
}
