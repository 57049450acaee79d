//! Kubernetes core kinds, as the API server would accept them.

pub mod service;

/// The namespace of a namespaced resource whose document names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A validation failure inside one resource, before the file and resource are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// A field set to something Trellis does not implement yet ("<what> is not supported yet"), so
/// every kind words the refusal the same way.
pub(crate) fn not_yet(field: impl Into<String>, what: &str) -> FieldError {
    FieldError::new(field, format!("{what} is not supported yet"))
}

/// RFC 1123 label (namespaces, most names): lowercase alphanumerics and '-', at most 63.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1035 label (Service names): an RFC 1123 label that starts with a letter.
pub(crate) fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// IANA service name (named ports): 1-15 of lowercase alphanumerics and '-', with a letter,
/// no '-' at either end and no "--".
pub(crate) fn is_iana_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}
