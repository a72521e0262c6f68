//! Metadata SSH keys: local users and their `authorized_keys`, from the `ssh-keys` attributes
//! and cloud-init `user-data` (the classic mode, when OS Login is off).
//!
//! The pure part: [`keys`] turns a snapshot into the keys each user should have
//! ([`keys::desired_keys`]), [`userdata`] reads cloud-init users, [`authorized_keys`] edits the
//! agent's block in a user's file, [`entry`] splits one authorized_keys entry, [`expiry`]
//! parses `expireOn`, [`key_link`] turns a symlinked `~/.ssh` or `authorized_keys` into paths
//! to resolve beneath the home. None of these do I/O. [`plan`] decides (pure too); [`apply`] and
//! [`reconciler`] act on the machine, remembering what they did in [`state`].

pub mod apply;
pub mod authorized_keys;
pub mod entry;
pub mod expiry;
pub mod key_link;
pub mod keys;
pub mod plan;
pub mod reconciler;
pub mod state;
pub mod userdata;

#[cfg(test)]
#[path = "test_keys.rs"]
pub(crate) mod test_keys;
