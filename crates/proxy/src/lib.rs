//! The Trellis data plane. (Module map is filled in by the data-path work.)

pub mod discovery;
pub mod init;
