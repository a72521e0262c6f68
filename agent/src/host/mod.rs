//! Host integration: files, sshd, nsswitch, sudoers, homes (being written).
