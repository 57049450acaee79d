//! The pod shape `inject` needs before it patches: the pod (template) a mapping, its `spec` a
//! mapping, `spec.containers` a non-empty list of mappings, and the lists it adds to
//! (`initContainers`, `volumes`) lists when present. A document that breaks this is refused
//! with the field named (`spec.template.spec.containers: ...`), instead of a patch error.

use serde_json::Value;

/// `pointer` (`""`, `/spec/template`) as the dotted prefix of a field: `""`, `spec.template.`.
fn prefix(pointer: &str) -> String {
    pointer
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| format!("{p}."))
        .collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Checks the pod at `pointer` in `doc`; the error names the field and what is wrong with it.
pub fn check(doc: &Value, pointer: &str) -> Result<(), String> {
    let at = prefix(pointer);
    let pod = doc.pointer(pointer).unwrap_or(&Value::Null);
    let field = |name: &str| format!("{at}{name}");
    if !pod.is_object() {
        let name = at.trim_end_matches('.');
        return Err(format!(
            "{}: must be a mapping (the pod template), got {}",
            if name.is_empty() { "(document)" } else { name },
            kind_of(pod)
        ));
    }
    let spec = &pod["spec"];
    if !spec.is_object() {
        return Err(format!(
            "{}: must be a mapping (the pod spec), got {}",
            field("spec"),
            kind_of(spec)
        ));
    }
    match &spec["containers"] {
        Value::Array(items) if items.is_empty() => {
            return Err(format!(
                "{}: is empty (a pod needs at least one container)",
                field("spec.containers")
            ));
        }
        Value::Array(items) => {
            if let Some(i) = items.iter().position(|c| !c.is_object()) {
                return Err(format!(
                    "{}[{i}]: must be a mapping (a container), got {}",
                    field("spec.containers"),
                    kind_of(&items[i])
                ));
            }
        }
        Value::Null => {
            return Err(format!(
                "{}: missing (a pod needs at least one container)",
                field("spec.containers")
            ));
        }
        other => {
            return Err(format!(
                "{}: must be a list of containers, got {}",
                field("spec.containers"),
                kind_of(other)
            ));
        }
    }
    for list in ["initContainers", "volumes"] {
        let v = &spec[list];
        if !v.is_null() && !v.is_array() {
            return Err(format!(
                "{}: must be a list, got {}",
                field(&format!("spec.{list}")),
                kind_of(v)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_field_is_named() {
        let ok = json!({"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}});
        assert_eq!(check(&ok, "/spec/template"), Ok(()));
        let cases = [
            (
                json!({"spec": {}}),
                "spec.template: must be a mapping (the pod template), got empty",
            ),
            (
                json!({"spec": {"template": {"spec": 3}}}),
                "spec.template.spec: must be a mapping (the pod spec), got a number",
            ),
            (
                json!({"spec": {"template": {"spec": {}}}}),
                "spec.template.spec.containers: missing (a pod needs at least one container)",
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": "app"}}}}),
                "spec.template.spec.containers: must be a list of containers, got a string",
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": [{}, "x"]}}}}),
                "spec.template.spec.containers[1]: must be a mapping (a container), got a string",
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": [{}], "volumes": {}}}}}),
                "spec.template.spec.volumes: must be a list, got a mapping",
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(check(&doc, "/spec/template").unwrap_err(), want);
        }
        assert_eq!(
            check(&json!({"spec": {"containers": []}}), "").unwrap_err(),
            "spec.containers: is empty (a pod needs at least one container)"
        );
    }
}
