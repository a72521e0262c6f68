//! Real public keys (made with ssh-keygen) for the tests of this module.

pub(crate) const A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIUvyv55GaFRh2a9rn19u4TqmVNNHS08ZgMvrYU7LGH";
pub(crate) const B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFON3XpUsfFbc+MX8N5ztBJbNogqZdlLwTORXx18s8k8";
pub(crate) const C: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMbyQ1b60+k1kWrmnuF53og8vuzivx5bjxcFzVkW0fsK";
pub(crate) const R: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDc2pw6y3Hx5dCnU9vOCIoQG2wjCNC4ZhunjIRabCTNaPgMhhmv3u7nMR3miHSEsVSYgfDvo9x/z4LsQRa5HjdxtRSP/jeHKqx7qeQVSMmva/4zBhrMkZ3ye0vrYmg0QWX6aCNbadVazFloIrnbSUT7jZbNj9VOwW6/akX0jhwKf2oHEZXSZ2LWTPKv/q+WVt0WWoKZCW5YOYOwLyuhHpBdC6EU86hqqtDYbEP7Kq/0T3swhEUdcgki/WqOSiK+TWxawO3myg/6B08Ih6O/Kzc24uRZeYsT94wJ2HJ05s7+S5VeISYGY9+vjunoQTtxxUbE+2WjOWzJ3PyZ09V9hyT3";
pub(crate) const E256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFVo7lHtQGLPqyZRE8ZzqtGKf7AFY4VtlG3iACz3WK18X+y10qD0le8VA7K/AJ7SdXa0KHfoZBn2fGs1v5Ox6ng=";
pub(crate) const E384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBAOonja+KVyPBd4jXTJi93vsU3kKYyVmfNKimUukp8jCj7lHvb0dQlsykGz2FSeEzfUEGj7QlMDFVUyblc8wJCKTOFhUDmVmWvL8FxmIsKFcs6FC2akXdUaTn+SusTpggg==";
pub(crate) const E521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBABdNp3Hb3VqpHcMClcfh93O1ViQBwOtrvkhFKBQViE+wFd2fPx1zk226VaYBgw5jR7Yw2io8jX7kB77EaYXqTeb+ACwQKmWwm1znID/eXscrjv16RXxTydRajVECom0x6p5TXWgOxhoYVK5jufR+a4QmidviV/c8aJkJgXikOjmOdcBAg==";
pub(crate) const A_FP: &str = "SHA256:p+0MSwU5xOannldHRlToDmA1CANotTdPzwXsSqb5DNg";
pub(crate) const B_FP: &str = "SHA256:LfMLdcSXozWNRhuBJl+zKUNtQ3ImU1OGR/qBqscTqbM";
pub(crate) const R_FP: &str = "SHA256:B+8V0l87uaY8tefSaMiiheA7xmIt7GdCKCsGwTAeP2I";
/// An ed25519 certificate (signed by a throwaway CA) for principal alice.
pub(crate) const A_CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIIQARdB9tw5NppQzC1/GJOMGe3U8tCVoHsTEpYy3u1pIAAAAIBIUvyv55GaFRh2a9rn19u4TqmVNNHS08ZgMvrYU7LGHAAAAAAAAAAAAAAABAAAABHRlc3QAAAAJAAAABWFsaWNlAAAAAAAAAAD//////////wAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIDMsSbzyns1c84Pmpt/UNC8gFx8McaMEQbIZI4SaTwe0AAAAUwAAAAtzc2gtZWQyNTUxOQAAAEB0/vOYARLOZw7nBwecof2VSSjG48kQFizyW3eQ6TGzRPPBcfwxRWKEB0y8uaN5QEqDQLfWSpg3znoXfVtVQoUK";
