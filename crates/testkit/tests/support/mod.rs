//! Fixtures shared by more than one test file of this crate; each file takes the modules it
//! needs with `mod support;`.

pub mod egress;
