//! The control loop across processes: proxies keep serving their last config when the control
//! plane dies, and resync (re-register, re-subscribe) when it comes back.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trellis_testkit::mesh::{ControlPlane, service_yaml};
use trellis_testkit::tools::http_get;
use trellis_testkit::{HttpEcho, MeshBuilder, wait};

const CONVERGE: Duration = Duration::from_secs(30);

#[test]
fn traffic_survives_the_control_plane_and_proxies_resync_after_restart() {
    let echo = HttpEcho::start().unwrap();
    let mut mesh = MeshBuilder::new()
        .service("echo", 8080, echo.addr)
        .client_target("late.default:8080")
        .start();
    mesh.wait_http_route("echo", CONVERGE);
    let echo_port = mesh.client_port("echo");
    let late_port = mesh.client.outbound_port("late.default:8080");

    // `late` is not configured yet, so it cannot route (whatever error the proxy chooses).
    let before = http_get(late_port, "/late");
    assert!(
        !matches!(before, Ok((200, _))),
        "late routed before it was configured: {before:?}"
    );

    // A crash, not a graceful stop: the proxies get no goodbye.
    let discovery = mesh.control.ready.discovery;
    mesh.control.process().kill();
    for i in 0..20 {
        match http_get(echo_port, &format!("/headless/{i}")) {
            Ok((200, _)) => {}
            other => panic!("request {i} without a control plane failed: {other:?}"),
        }
    }

    // Back where the proxies expect it, now with a Service `late` selecting the same workload.
    std::fs::write(
        mesh.config.path().join("late.yaml"),
        service_yaml("late", "default", 8080, echo.addr.port(), "echo"),
    )
    .unwrap();
    mesh.control = ControlPlane::start_at(mesh.config.path(), discovery).unwrap();

    // Only a client proxy that re-subscribed, and a control plane that relearned the server
    // proxy's registration, can route `late`.
    wait::until(CONVERGE, || match http_get(late_port, "/late") {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("the proxies did not resync with the restarted control plane: {e}"));
    assert_eq!(http_get(echo_port, "/after").unwrap().0, 200);
}

#[test]
fn a_config_change_reaches_running_proxies() {
    let echo = HttpEcho::start().unwrap();
    let mesh = MeshBuilder::new()
        .service("echo", 8080, echo.addr)
        .client_target("added.default:8080")
        .start();
    mesh.wait_http_route("echo", CONVERGE);
    let added_port = mesh.client.outbound_port("added.default:8080");
    assert!(!matches!(http_get(added_port, "/"), Ok((200, _))));

    // Written atomically (rename) so the watcher never reads half a file.
    let tmp = mesh.config.path().join(".added.yaml.tmp");
    std::fs::write(
        &tmp,
        service_yaml("added", "default", 8080, echo.addr.port(), "echo"),
    )
    .unwrap();
    std::fs::rename(&tmp, mesh.config.path().join("added.yaml")).unwrap();

    wait::until(CONVERGE, || match http_get(added_port, "/added") {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("a Service added to the config dir never reached the proxies: {e}"));
}
