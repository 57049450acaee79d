//! Asks an auth service whether a request may pass: `GET /check` to the cluster of
//! pluginConfig `{"cluster": "host:port or name.namespace:port"}` with the request's
//! `x-user`, pausing the request until the answer. 200 lets it through (with the answer's
//! `x-auth-user` added); any other status is a 403 carrying the service's body. When the call
//! gets no answer at all, the plugin leaves the request paused: the proxy's failStrategy
//! decides.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { cluster: String::new() })
    });
}}

struct Root {
    cluster: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(c) = cfg.get("cluster").and_then(|v| v.as_str()) {
                    self.cluster = c.to_string();
                }
            }
        }
        !self.cluster.is_empty()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Auth { cluster: self.cluster.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Auth {
    cluster: String,
}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        match self.dispatch_http_call(
            &self.cluster,
            vec![(":method", "GET"), (":path", "/check"), (":authority", "auth"), ("x-user", &user)],
            None,
            vec![],
            Duration::from_secs(2),
        ) {
            Ok(_) => Action::Pause,
            Err(_) => {
                self.send_http_response(500, vec![], Some(b"auth call not dispatched\n"));
                Action::Pause
            }
        }
    }
}

impl Context for Auth {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        match self.get_http_call_response_header(":status").as_deref() {
            Some("200") => {
                if let Some(who) = self.get_http_call_response_header("x-auth-user") {
                    self.set_http_request_header("x-auth-user", Some(&who));
                }
                self.resume_http_request();
            }
            Some(_) => {
                let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
                self.send_http_response(403, vec![("x-wasm-denied", "auth")], Some(&body));
            }
            // No answer: leave it paused; the proxy applies the plugin's failStrategy.
            None => {}
        }
    }
}
