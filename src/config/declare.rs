//! `settings!`: each setting declared once (doc, name, type, default), from which come the
//! `Settings` struct, its `Default` and [`KEYS`], the names env sets and how each is read.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use secrecy::SecretString;

use super::values::{Durability, Environment, FingerprintPolicy, LogFormat, StorageKind, Switch};

/// How an environment value is read into the settings table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken as written.
    Text,
    /// Taken as written, or from the file `<NAME>_FILE` names.
    Secret,
    /// A whole number.
    Number,
    /// A number with a fraction (`0.25`).
    Decimal,
    /// true/false, 1/0, yes/no, on/off.
    Flag,
    /// Comma-separated; an empty value is an empty list.
    List,
}

/// The kind of env value a setting's type is read from.
pub trait FromEnv {
    const KIND: Kind;
}

macro_rules! read_as {
    ($kind:ident: $($ty:ty),+) => {
        $(impl FromEnv for $ty {
            const KIND: Kind = Kind::$kind;
        })+
    };
}

read_as!(Text: String, IpAddr, SocketAddr, PathBuf);
read_as!(Text: Environment, StorageKind, FingerprintPolicy, Durability, LogFormat, Switch);
read_as!(Number: u16, u32, u64, usize);
read_as!(Decimal: f64);
read_as!(Flag: bool);
read_as!(Secret: SecretString);

/// An optional setting is read as its value would be.
impl<T: FromEnv> FromEnv for Option<T> {
    const KIND: Kind = T::KIND;
}

impl<T> FromEnv for Vec<T> {
    const KIND: Kind = Kind::List;
}

/// Declares the settings: `/// doc` then `name: Type = default,` for each. The env name is the
/// name in upper case, the TOML key the name itself.
macro_rules! settings {
    ($($(#[$meta:meta])* $name:ident: $ty:ty = $default:expr,)+) => {
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $($(#[$meta])* pub $name: $ty,)+
        }

        impl Default for Settings {
            fn default() -> Self {
                Self {
                    $($name: $default,)+
                }
            }
        }

        /// Every setting, by field name, with the kind of value env gives it.
        const KEYS: &[(&str, $crate::config::declare::Kind)] = &[
            $((
                stringify!($name),
                <$ty as $crate::config::declare::FromEnv>::KIND,
            ),)+
        ];
    };
}

pub(super) use settings;
