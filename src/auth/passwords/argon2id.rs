//! argon2id hashes in PHC form: computing one, and checking a password against a stored one
//! (any argon2 variant, or a legacy bcrypt hash).

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use subtle::ConstantTimeEq;

use super::legacy::{
    ARGON2ID_PREFIX, LEGACY_ARGON2ID_PREFIX, legacy_transform, verify_legacy_bcrypt,
};
use super::memory::{HashMemory, MemoryPool};
use super::{HashError, OUTPUT_BYTES, SALT_BYTES, Verification};

pub(super) fn hash_with(
    params: &Params,
    password: &str,
    memory: &mut Option<HashMemory>,
    pool: &MemoryPool,
) -> Result<String, HashError> {
    let salt: [u8; SALT_BYTES] = crate::auth::os_random();
    let mut out = [0u8; OUTPUT_BYTES];
    let blocks = pool.fit(memory, params.block_count())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(phc(params, &salt, &out))
}

/// The PHC string form of an argon2id hash.
pub(super) fn phc(params: &Params, salt: &[u8], digest: &[u8]) -> String {
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        B64.encode(salt),
        B64.encode(digest)
    )
}

pub(super) fn verify_with(
    current: &Params,
    password: &str,
    stored: &str,
    memory: &mut Option<HashMemory>,
    pool: &MemoryPool,
) -> Result<Verification, HashError> {
    if stored.starts_with("$2") {
        return Ok(verify_legacy_bcrypt(password, stored));
    }
    let transformed;
    let (password, stored) = match stored.strip_prefix(LEGACY_ARGON2ID_PREFIX) {
        Some(rest) => {
            transformed = (
                legacy_transform(password),
                format!("{ARGON2ID_PREFIX}{rest}"),
            );
            (transformed.0.as_str(), transformed.1.as_str())
        }
        None => (password, stored),
    };
    let Ok(phc) = PasswordHash::new(stored) else {
        return Ok(Verification::Invalid);
    };
    let algorithm = match phc.algorithm.as_str() {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return Ok(Verification::Invalid),
    };
    let Ok(params) = Params::try_from(&phc) else {
        return Ok(Verification::Invalid);
    };
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return Ok(Verification::Invalid);
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return Ok(Verification::Invalid);
    };
    let blocks = pool.fit(memory, params.block_count())?;
    let mut out = vec![0u8; expected.len()];
    let version = phc
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    if Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_err()
    {
        return Ok(Verification::Invalid);
    }
    if !bool::from(out.as_slice().ct_eq(expected.as_bytes())) {
        return Ok(Verification::Invalid);
    }
    let weaker = algorithm != Algorithm::Argon2id
        || params.m_cost() < current.m_cost()
        || params.t_cost() < current.t_cost()
        || params.p_cost() != current.p_cost();
    Ok(if weaker {
        Verification::ValidNeedsRehash
    } else {
        Verification::Valid
    })
}
