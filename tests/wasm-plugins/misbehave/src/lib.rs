//! Misbehaves on purpose, for the host's isolation tests. pluginConfig `{"mode": ...}`:
//! `"trap"` hits `unreachable` on every request's headers, `"loop"` spins forever there,
//! `"grow"` allocates until memory runs out; the path `/ok` is left alone in every mode.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { mode: String::from("trap") })
    });
}}

struct Root {
    mode: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(m) = cfg.get("mode").and_then(|v| v.as_str()) {
                    self.mode = m.to_string();
                }
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Misbehave { mode: self.mode.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Misbehave {
    mode: String,
}

impl Context for Misbehave {}

impl HttpContext for Misbehave {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        if self.get_http_request_header(":path").as_deref() == Some("/ok") {
            return Action::Continue;
        }
        match self.mode.as_str() {
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(core::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            _ => Action::Continue,
        }
    }
}
