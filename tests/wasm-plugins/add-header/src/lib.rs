//! Adds one request header (default `x-wasm-added: hello`) and one response header
//! (`x-wasm-plugin: add-header`). pluginConfig: `{"name": "...", "value": "..."}`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { name: "x-wasm-added".into(), value: "hello".into() })
    });
}}

struct Root {
    name: String,
    value: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            return true;
        };
        let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            proxy_wasm::hostcalls::log(LogLevel::Error, "add-header: pluginConfig is not JSON").ok();
            return false;
        };
        if let Some(n) = cfg.get("name").and_then(|v| v.as_str()) {
            self.name = n.to_string();
        }
        if let Some(v) = cfg.get("value").and_then(|v| v.as_str()) {
            self.value = v.to_string();
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader { name: self.name.clone(), value: self.value.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader {
    name: String,
    value: String,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        self.set_http_request_header(&self.name, Some(&self.value));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end: bool) -> Action {
        self.add_http_response_header("x-wasm-plugin", "add-header");
        Action::Continue
    }
}
