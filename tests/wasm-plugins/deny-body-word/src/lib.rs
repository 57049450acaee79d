//! Answers 403 to a request whose body contains a word (pluginConfig `{"word": "..."}`,
//! default `forbidden`). It holds the request head until it has seen the body
//! (`Action::Pause` on the headers), so the upstream never sees a denied request; with
//! `{"hold": false}` the head goes on at once and the body streams (buffered by the plugin).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { word: "forbidden".into(), hold: true })
    });
}}

struct Root {
    word: String,
    hold: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(w) = cfg.get("word").and_then(|v| v.as_str()) {
                    self.word = w.to_string();
                }
                if let Some(h) = cfg.get("hold").and_then(|v| v.as_bool()) {
                    self.hold = h;
                }
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Deny { word: self.word.clone(), hold: self.hold }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Deny {
    word: String,
    hold: bool,
}

impl Context for Deny {}

impl HttpContext for Deny {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if end_of_stream || !self.hold {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        if String::from_utf8_lossy(&body).contains(&self.word) {
            self.send_http_response(
                403,
                vec![("x-wasm-denied", "body word")],
                Some(format!("denied by wasm plugin: the body says {}\n", self.word).as_bytes()),
            );
            return Action::Pause;
        }
        self.set_http_request_header("x-wasm-body-checked", Some(&size.to_string()));
        Action::Continue
    }
}
