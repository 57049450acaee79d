use std::fmt;

/// Which resource an error or status is about, as precisely as the document allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRef {
    /// 0-based index of the YAML document in its file.
    pub document: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => {
                write!(f, "{kind} ")?;
                if let Some(ns) = &self.namespace {
                    write!(f, "{ns}/")?;
                }
                write!(f, "{name}")
            }
            (Some(kind), None) => write!(f, "{kind} (document {})", self.document + 1),
            (None, _) => write!(f, "document {}", self.document + 1),
        }
    }
}

/// A document that could not be read or failed validation. Displays as
/// `bookinfo.yaml: Service default/reviews: spec.ports[0].port: must be 1-65535, got 0`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {resource}: {}{message}", field_prefix(.field.as_deref()))]
pub struct ConfigError {
    pub file: String,
    pub resource: ResourceRef,
    /// The field path inside the resource (`spec.ports[0].port`), when one field is at fault.
    pub field: Option<String>,
    pub message: String,
}

fn field_prefix(field: Option<&str>) -> String {
    field.map(|f| format!("{f}: ")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_resource_and_field() {
        let err = ConfigError {
            file: "bookinfo.yaml".into(),
            resource: ResourceRef {
                document: 0,
                kind: Some("Service".into()),
                namespace: Some("default".into()),
                name: Some("reviews".into()),
            },
            field: Some("spec.ports[0].port".into()),
            message: "must be 1-65535, got 0".into(),
        };
        assert_eq!(
            err.to_string(),
            "bookinfo.yaml: Service default/reviews: spec.ports[0].port: must be 1-65535, got 0"
        );
    }

    #[test]
    fn display_without_name_uses_document_number() {
        let err = ConfigError {
            file: "x.yaml".into(),
            resource: ResourceRef {
                document: 2,
                kind: None,
                namespace: None,
                name: None,
            },
            field: None,
            message: "invalid YAML".into(),
        };
        assert_eq!(err.to_string(), "x.yaml: document 3: invalid YAML");
    }
}
