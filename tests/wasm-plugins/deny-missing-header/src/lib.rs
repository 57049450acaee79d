//! Answers 403 (from the plugin, via proxy_send_local_response) to a request that lacks a
//! header (default `x-wasm-allow`). pluginConfig: `{"header": "..."}`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { header: "x-wasm-allow".into() })
    });
}}

struct Root {
    header: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(h) = cfg.get("header").and_then(|v| v.as_str()) {
                    self.header = h.to_string();
                }
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Deny { header: self.header.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Deny {
    header: String,
}

impl Context for Deny {}

impl HttpContext for Deny {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        if self.get_http_request_header(&self.header).is_some() {
            return Action::Continue;
        }
        let path = self.get_http_request_header(":path").unwrap_or_default();
        proxy_wasm::hostcalls::log(LogLevel::Info, &format!("deny-missing-header: denied {path}")).ok();
        self.send_http_response(
            403,
            vec![("x-wasm-denied", "missing header"), ("content-type", "text/plain")],
            Some(format!("denied by wasm plugin: missing {}\n", self.header).as_bytes()),
        );
        Action::Pause
    }
}
