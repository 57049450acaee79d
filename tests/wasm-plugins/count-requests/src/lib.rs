//! Counts requests in a custom counter (default `wasm_requests_seen`), incremented on each
//! request's headers, and records the last response status in a gauge. pluginConfig:
//! `{"metric": "..."}`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { counter: 0, gauge: 0 })
    });
}}

struct Root {
    counter: u32,
    gauge: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let mut name = String::from("wasm_requests_seen");
        if let Some(bytes) = self.get_plugin_configuration() {
            if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(m) = cfg.get("metric").and_then(|v| v.as_str()) {
                    name = m.to_string();
                }
            }
        }
        match hostcalls::define_metric(MetricType::Counter, &name) {
            Ok(id) => self.counter = id,
            Err(_) => return false,
        }
        if let Ok(id) = hostcalls::define_metric(MetricType::Gauge, "wasm_last_status") {
            self.gauge = id;
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Count { counter: self.counter, gauge: self.gauge }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Count {
    counter: u32,
    gauge: u32,
}

impl Context for Count {}

impl HttpContext for Count {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        hostcalls::increment_metric(self.counter, 1).ok();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end: bool) -> Action {
        if let Some(status) = self.get_http_response_header(":status") {
            if let Ok(s) = status.parse::<u64>() {
                hostcalls::record_metric(self.gauge, s).ok();
            }
        }
        Action::Continue
    }
}
