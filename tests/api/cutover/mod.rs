//! The move from FluxStudio's own Postgres database: flux-auth's tables in a schema of their own
//! beside FluxStudio's, which `migrate` never changes, and an install from before that schema
//! moved into it.

mod fluxstudio;
mod import;
mod import_two_factor;
mod legacy_tokens;
mod schema;
