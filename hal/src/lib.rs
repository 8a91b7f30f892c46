//! hexa-hal: drivers for the consent readers, generic over embedded-hal 1.0 and
//! embedded-io 0.7, and byte-level simulators that implement the same traits.

pub mod ctap2;
pub mod fingerprint;
pub mod iso7816;
pub mod pn532;
