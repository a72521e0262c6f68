//! OS Login: access follows the cloud's identity and roles.

pub mod authorize;
pub mod certificate;
pub mod decision;
pub mod directory;
mod effects;
pub mod login;
mod maintain;
pub mod profile;
pub mod reconciler;
pub mod service;
pub mod sessions;
pub mod sync;
pub mod trusted_ca;
pub mod two_factor;
