//! Rewrites the response body: every `from` becomes `to` (pluginConfig
//! `{"from": "...", "to": "..."}`, default `x` -> `y`). It buffers the whole body
//! (`Action::Pause` until the end of the stream), rewrites it with `set_http_response_body`,
//! and drops `content-length` from the head since the length changes. With `{"hold": true}`
//! it pauses the response head instead, and adds `x-wasm-original-length` from the body
//! callback (the head is still held, so the change applies). On response trailers
//! it adds `x-wasm-trailer: seen <grpc-status>`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { from: "x".into(), to: "y".into(), hold: false })
    });
}}

struct Root {
    from: String,
    to: String,
    hold: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(v) = cfg.get("from").and_then(|v| v.as_str()) {
                    self.from = v.to_string();
                }
                if let Some(v) = cfg.get("to").and_then(|v| v.as_str()) {
                    self.to = v.to_string();
                }
                if let Some(v) = cfg.get("hold").and_then(|v| v.as_bool()) {
                    self.hold = v;
                }
            }
        }
        !self.from.is_empty()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rewrite { from: self.from.clone(), to: self.to.clone(), hold: self.hold }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Rewrite {
    from: String,
    to: String,
    hold: bool,
}

impl Context for Rewrite {}

impl HttpContext for Rewrite {
    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        self.set_http_response_header("x-wasm-body-rewritten", Some("true"));
        if self.hold && !end_of_stream {
            // The head waits for the body: the proxy sets the new length.
            return Action::Pause;
        }
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        // Trailers end the body: what was held passed on unchanged (no end_of_stream came).
        let status = self.get_http_response_trailer("grpc-status").unwrap_or_default();
        self.set_http_response_trailer("x-wasm-trailer", Some(&format!("seen {status}")));
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, size) {
            let text = String::from_utf8_lossy(&body).replace(&self.from, &self.to);
            self.set_http_response_body(0, size, text.as_bytes());
            if self.hold {
                self.set_http_response_header("x-wasm-original-length", Some(&size.to_string()));
            }
        }
        Action::Continue
    }
}
