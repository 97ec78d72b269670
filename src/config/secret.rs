//! The signing secret: the configured one, or a development one kept in `DATA_DIR`; and
//! `gen-secret`'s random secrets.

use std::path::Path;

use secrecy::SecretString;

use super::problems::secret_problem;
use super::{ConfigError, Settings};

/// Returns the signing secret: the configured one, or in development one generated on first
/// start and kept in `DATA_DIR/.jwt-secret` (mode 0600) so restarts keep sessions valid.
pub fn resolve_jwt_secret(settings: &Settings) -> Result<SecretString, ConfigError> {
    if let Some(secret) = &settings.jwt_secret {
        return Ok(secret.clone());
    }
    if settings.is_production() {
        return Err(ConfigError::Problems(vec![
            "JWT_SECRET is required when NODE_ENV=production.".into(),
        ]));
    }
    let path = settings.data_dir.join(".jwt-secret");
    let read_err = |source| ConfigError::Read {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = SecretString::from(text.trim().to_owned());
            if let Some(problem) = secret_problem(&path.display().to_string(), &secret) {
                return Err(ConfigError::Problems(vec![problem]));
            }
            return Ok(secret);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(e)),
    }
    std::fs::create_dir_all(&settings.data_dir).map_err(read_err)?;
    let secret = generate_secret();
    write_private_file(&path, secret.as_bytes()).map_err(read_err)?;
    tracing::warn!(
        path = %path.display(),
        "JWT_SECRET is not set: generated a random development secret and saved it; set JWT_SECRET in production"
    );
    Ok(SecretString::from(secret))
}

/// 48 random bytes from the OS, base64url: 64 characters, 384 bits.
pub fn generate_secret() -> String {
    use base64::Engine;
    use rand::{RngCore, TryRngCore};
    let mut bytes = [0u8; 48];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        rand::rng().fill_bytes(&mut bytes);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
