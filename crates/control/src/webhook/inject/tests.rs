#![allow(clippy::unwrap_used)]

use super::*;

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reviews-1", "namespace": "shop", "annotations": annotations},
        "spec": {
            "serviceAccountName": "reviews",
            "containers": [{"name": "app", "image": "reviews:1", "ports": [{"containerPort": 9080}]}],
        },
    })
}

fn injected(pod: &Value, config: &InjectConfig) -> Value {
    let ops = patch(pod, "shop", config, "").unwrap();
    let mut out = pod.clone();
    apply_patch(&mut out, &ops).unwrap();
    out
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn decision_pod_annotation_wins_over_namespace_label() {
    let enabled_ns = BTreeMap::from([(INJECT_KEY.to_string(), "enabled".to_string())]);
    let none = BTreeMap::new();
    assert_eq!(decide(&pod(json!({})), &enabled_ns), Decision::Inject);
    assert!(matches!(decide(&pod(json!({})), &none), Decision::Skip(_)));
    assert_eq!(
        decide(&pod(json!({INJECT_KEY: "enabled"})), &none),
        Decision::Inject
    );
    assert!(matches!(
        decide(&pod(json!({INJECT_KEY: "disabled"})), &enabled_ns),
        Decision::Skip("pod annotation disabled")
    ));
    let done = injected(&pod(json!({})), &InjectConfig::default());
    assert_eq!(
        decide(&done, &enabled_ns),
        Decision::Skip("already injected")
    );
    let mut host = pod(json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(
        decide(&host, &enabled_ns),
        Decision::Skip("hostNetwork pod")
    );
}

#[test]
fn classic_shape_proxy_first_with_post_start_hold() {
    let out = injected(&pod(json!({})), &InjectConfig::default());
    assert_eq!(names(&out, "initContainers"), ["trellis-init"]);
    assert_eq!(names(&out, "containers"), ["trellis-proxy", "app"]);
    let proxy = &out["spec"]["containers"][0];
    assert!(proxy.get("restartPolicy").is_none());
    assert!(proxy["lifecycle"]["postStart"]["exec"]["command"].is_array());
    assert_eq!(proxy["securityContext"]["runAsUser"], json!(1337));
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], json!("/ready"));
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |f: &str| args[args.iter().position(|a| *a == f).unwrap() + 1];
    assert_eq!(flag("--namespace"), "shop");
    assert_eq!(flag("--service-account"), "reviews");
    assert_eq!(
        flag("--control"),
        "http://trellis-control.trellis-system.svc:15010"
    );
    assert_eq!(flag("--inbound"), "0.0.0.0:15006");
    assert_eq!(flag("--admin"), "0.0.0.0:15020");
    let init = &out["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], json!("init"));
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(
        out["metadata"]["annotations"][STATUS_ANNOTATION],
        json!("enabled")
    );
}

#[test]
fn native_shape_is_second_init_container_with_restart_always() {
    let config = InjectConfig {
        native_sidecar: true,
        ..InjectConfig::default()
    };
    let mut p = pod(json!({}));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "db:1"}]);
    let out = injected(&p, &config);
    assert_eq!(
        names(&out, "initContainers"),
        ["trellis-init", "trellis-proxy", "migrate"]
    );
    assert_eq!(names(&out, "containers"), ["app"]);
    let proxy = &out["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], json!("Always"));
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], json!("/ready"));
    assert!(proxy.get("lifecycle").is_none());
}

#[test]
fn annotations_set_resources_log_level_and_ports() {
    let out = injected(
        &pod(json!({
            annotation::CPU_REQUEST: "50m",
            annotation::MEMORY_LIMIT: "1Gi",
            annotation::LOG_LEVEL: "debug",
            annotation::SKIP_INBOUND_PORTS: "8080, 9090",
            annotation::SKIP_OUTBOUND_PORTS: "5432",
            annotation::OPAQUE_PORTS: "3306",
        })),
        &InjectConfig::default(),
    );
    let proxy = &out["spec"]["containers"][0];
    assert_eq!(proxy["resources"]["requests"]["cpu"], json!("50m"));
    assert_eq!(proxy["resources"]["limits"]["memory"], json!("1Gi"));
    let args = proxy["args"].to_string();
    assert!(args.contains(r#""--log-level","debug""#), "{args}");
    assert!(args.contains(r#""--opaque-ports","3306""#), "{args}");
    let init = out["spec"]["initContainers"][0]["args"].to_string();
    assert!(
        init.contains(r#""--exclude-inbound-ports","8080,9090""#),
        "{init}"
    );
    assert!(
        init.contains(r#""--exclude-outbound-ports","5432""#),
        "{init}"
    );
}

#[test]
fn bad_annotations_are_refused_with_the_annotation_named() {
    let err = patch(
        &pod(json!({annotation::OPAQUE_PORTS: "3306,http"})),
        "shop",
        &InjectConfig::default(),
        "",
    )
    .unwrap_err();
    assert_eq!(err.annotation, annotation::OPAQUE_PORTS);
    let err = patch(
        &pod(json!({annotation::CPU_LIMIT: "lots"})),
        "shop",
        &InjectConfig::default(),
        "",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("annotation trellis.io/proxy-cpu-limit:"),
        "{err}"
    );
}

#[test]
fn pod_without_annotations_or_init_containers_gets_whole_lists() {
    let mut p = pod(json!({}));
    p["metadata"].as_object_mut().unwrap().remove("annotations");
    let ops = patch(&p, "shop", &InjectConfig::default(), "").unwrap();
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/spec/volumes",
            "/spec/initContainers",
            "/spec/containers/0",
            "/metadata/annotations"
        ]
    );
}

#[test]
fn template_prefix_and_uninject_round_trip() {
    let template = pod(json!({"keep": "me"}));
    let deployment =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": template}});
    let ops = patch(
        &deployment["spec"]["template"],
        "shop",
        &InjectConfig::default(),
        "/spec/template",
    )
    .unwrap();
    let mut out = deployment.clone();
    apply_patch(&mut out, &ops).unwrap();
    assert_eq!(
        names(&out["spec"]["template"], "containers"),
        ["trellis-proxy", "app"]
    );
    assert!(uninject(&mut out["spec"]["template"]));
    assert_eq!(out, deployment);
    assert!(!uninject(&mut out["spec"]["template"]));
}

#[test]
fn versions() {
    assert!(!supports_native_sidecars("1", "20"));
    assert!(!supports_native_sidecars("1", "28"));
    assert!(supports_native_sidecars("1", "29"));
    assert!(supports_native_sidecars("1", "30+"));
    assert!(!supports_native_sidecars("x", "y"));
}

#[test]
fn proxy_gets_a_projected_token_for_the_mesh_audience() {
    let mut p = pod(json!({"keep": "me"}));
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let out = injected(&p, &InjectConfig::default());
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["name"], "data", "the app's volumes stay first");
    let token = &volumes[1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(volumes[1]["name"], "trellis-token");
    assert_eq!(token["audience"], "trellis");
    assert_eq!(token["path"], "trellis-token");
    let proxy = &out["spec"]["containers"][0];
    assert_eq!(
        proxy["volumeMounts"],
        json!([{"name": "trellis-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true}])
    );
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--identity-token-file")
        .unwrap();
    assert_eq!(args[at + 1], "/var/run/secrets/tokens/trellis-token");
    // Uninject takes the volume away again and leaves the app's.
    let mut back = out.clone();
    assert!(uninject(&mut back));
    assert_eq!(back, p);
}
