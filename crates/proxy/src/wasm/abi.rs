//! The Proxy-Wasm ABI 0.2.1 host calls (module `env`) a plugin imports, on a wasmi
//! [`Linker`]. Pointers and sizes are 32-bit (wasm32). Data returned to the plugin is copied
//! into memory it allocates with its `proxy_on_memory_allocate` export; header maps travel in
//! the ABI's encoding ([`encode_map`]). A call the host does not implement (gRPC, queues,
//! foreign functions, WASI) is linked to a stub answering `Unimplemented`, so
//! any SDK build instantiates. Which calls are supported: docs/wasm.md.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmi::{Caller, IntoFunc, Linker, Module, Val, ValType};

use super::metrics::{Kind, Metric};
use super::shared::SetError;
use super::vm::{CallRequest, Host, LocalResponse};

/// Proxy-Wasm `WasmResult` codes.
mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `MapType`.
const REQUEST_HEADERS: i32 = 0;
const REQUEST_TRAILERS: i32 = 1;
const RESPONSE_HEADERS: i32 = 2;
const RESPONSE_TRAILERS: i32 = 3;
const CALL_RESPONSE_HEADERS: i32 = 6;
const CALL_RESPONSE_TRAILERS: i32 = 7;
/// `BufferType`.
const REQUEST_BODY: i32 = 0;
const RESPONSE_BODY: i32 = 1;
const CALL_RESPONSE_BODY: i32 = 4;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A host call's outcome: `Err` is a status for the plugin, or a trap to pass on (fuel ran
/// out inside the plugin's allocator).
enum Fail {
    Status(i32),
    Trap(wasmi::Error),
}

impl From<i32> for Fail {
    fn from(s: i32) -> Self {
        Fail::Status(s)
    }
}

/// Runs a host call's body and turns its outcome into the status the plugin reads.
fn done(body: impl FnOnce() -> Result<(), Fail>) -> Result<i32, wasmi::Error> {
    match body() {
        Ok(()) => Ok(status::OK),
        Err(Fail::Status(s)) => Ok(s),
        Err(Fail::Trap(e)) => Err(e),
    }
}

fn range(ptr: i32, len: i32) -> Result<std::ops::Range<usize>, Fail> {
    // wasm32 pointers are unsigned.
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    Ok(p..p.checked_add(l).ok_or(status::INVALID_MEMORY_ACCESS)?)
}

fn read(caller: &Caller<'_, Host>, ptr: i32, len: i32) -> Result<Vec<u8>, Fail> {
    let memory = caller.data().memory.ok_or(status::INTERNAL_FAILURE)?;
    let data = memory.data(caller);
    Ok(data
        .get(range(ptr, len)?)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .to_vec())
}

fn write(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> Result<(), Fail> {
    let memory = caller.data().memory.ok_or(status::INTERNAL_FAILURE)?;
    let data = memory.data_mut(caller);
    let len = i32::try_from(bytes.len()).map_err(|_| status::BAD_ARGUMENT)?;
    data.get_mut(range(ptr, len)?)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Copies `bytes` into plugin memory it allocates and stores the pointer and size at
/// `ret_ptr` / `ret_len`.
fn give(
    caller: &mut Caller<'_, Host>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), Fail> {
    let malloc = caller.data().malloc.ok_or(status::INTERNAL_FAILURE)?;
    let len = i32::try_from(bytes.len()).map_err(|_| status::BAD_ARGUMENT)?;
    let ptr = if len == 0 {
        0
    } else {
        let ptr = malloc.call(&mut *caller, len).map_err(Fail::Trap)?;
        if ptr == 0 {
            return Err(status::INTERNAL_FAILURE.into());
        }
        write(caller, ptr, bytes)?;
        ptr
    };
    write(caller, ret_ptr, &ptr.to_le_bytes())?;
    write(caller, ret_len, &len.to_le_bytes())
}

/// The ABI's map encoding: count, then (key size, value size) pairs, then each key and value
/// followed by a NUL.
pub fn encode_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`encode_map`]; `None` for a malformed map.
pub fn decode_map(bytes: &[u8]) -> Option<Pairs> {
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let n = word(0)?;
    // Each pair takes at least 10 bytes: a bound before allocating.
    if n > bytes.len() / 10 + 1 {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?.to_vec();
        at += k + 1;
        let value = bytes.get(at..at.checked_add(v)?)?.to_vec();
        at += v + 1;
        out.push((key, value));
    }
    Some(out)
}

fn map<'a>(caller: &'a mut Caller<'_, Host>, map_type: i32) -> Result<&'a mut Pairs, Fail> {
    let stream = &mut caller.data_mut().stream;
    match map_type {
        REQUEST_HEADERS => {
            stream.request_dirty = true;
            Ok(&mut stream.request_headers)
        }
        RESPONSE_HEADERS => {
            stream.response_dirty = true;
            Ok(&mut stream.response_headers)
        }
        // Trailers are written back after their callback, whatever it did.
        REQUEST_TRAILERS => Ok(&mut stream.request_trailers),
        RESPONSE_TRAILERS => Ok(&mut stream.response_trailers),
        // gRPC metadata is not exposed, and a call's answer is read-only.
        _ => Err(status::NOT_FOUND.into()),
    }
}

fn map_ref<'a>(caller: &'a Caller<'_, Host>, map_type: i32) -> Result<&'a Pairs, Fail> {
    let stream = &caller.data().stream;
    match map_type {
        REQUEST_HEADERS => Ok(&stream.request_headers),
        RESPONSE_HEADERS => Ok(&stream.response_headers),
        REQUEST_TRAILERS => Ok(&stream.request_trailers),
        RESPONSE_TRAILERS => Ok(&stream.response_trailers),
        CALL_RESPONSE_HEADERS => Ok(&stream
            .call_response
            .as_ref()
            .ok_or(status::NOT_FOUND)?
            .headers),
        CALL_RESPONSE_TRAILERS => Ok(&stream
            .call_response
            .as_ref()
            .ok_or(status::NOT_FOUND)?
            .trailers),
        _ => Err(status::NOT_FOUND.into()),
    }
}

/// Header names are matched case-insensitively and stored lower-case, as in HTTP/2.
fn lower(mut key: Vec<u8>) -> Vec<u8> {
    key.make_ascii_lowercase();
    key
}

fn header_of(pairs: &Pairs, name: &[u8]) -> Option<Vec<u8>> {
    pairs
        .iter()
        .find(|(k, _)| k.as_slice() == name)
        .map(|(_, v)| v.clone())
}

/// A header name the plugin passes: read from its memory, lower-cased.
fn read_key(caller: &Caller<'_, Host>, ptr: i32, len: i32) -> Result<Vec<u8>, Fail> {
    Ok(lower(read(caller, ptr, len)?))
}

/// A header (name and value) the plugin passes.
fn read_header(
    caller: &Caller<'_, Host>,
    [kptr, klen, vptr, vlen]: [i32; 4],
) -> Result<(Vec<u8>, Vec<u8>), Fail> {
    Ok((read_key(caller, kptr, klen)?, read(caller, vptr, vlen)?))
}

/// A header map the plugin passes in the ABI's encoding, names lower-cased.
fn read_headers(caller: &Caller<'_, Host>, ptr: i32, len: i32) -> Result<Pairs, Fail> {
    let pairs = decode_map(&read(caller, ptr, len)?).ok_or(status::SERIALIZATION_FAILURE)?;
    Ok(pairs.into_iter().map(|(k, v)| (lower(k), v)).collect())
}

/// The calling plugin's metric `id`.
fn metric(caller: &Caller<'_, Host>, id: i32) -> Result<Arc<Metric>, Fail> {
    let plugin = &caller.data().plugin;
    // Ids are the u32 the plugin was given, passed back as i32.
    plugin
        .metrics
        .get(&plugin.name, id as u32)
        .ok_or(Fail::Status(status::NOT_FOUND))
}

/// `proxy_get_property`: a path of NUL-separated segments. Numbers are 8-byte little-endian,
/// as Envoy encodes them.
fn property(host: &Host, path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&[u8]> = path.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
    let stream = &host.stream;
    let req = |name: &[u8]| header_of(&stream.request_headers, name);
    let number = |n: u64| n.to_le_bytes().to_vec();
    Some(match segments.as_slice() {
        [b"request", b"path"] => req(b":path")?,
        [b"request", b"url_path"] => {
            let p = req(b":path")?;
            p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()
        }
        [b"request", b"method"] => req(b":method")?,
        [b"request", b"host"] => req(b":authority")?,
        [b"request", b"scheme"] => req(b":scheme")?,
        [b"request", b"headers", name] => req(name)?,
        [b"response", b"code"] => number(u64::from(stream.response_code?)),
        [b"source", b"address"] => stream.source?.to_string().into_bytes(),
        [b"source", b"port"] => number(u64::from(stream.source?.port())),
        [b"destination", b"port"] => number(u64::from(stream.destination_port)),
        [b"plugin_name"] | [b"plugin_root_id"] => host.plugin.name.clone().into_bytes(),
        _ => return None,
    })
}

/// Calls one callback may dispatch before the host refuses more.
const MAX_CALLS: usize = 8;

fn resume(caller: &mut Caller<'_, Host>) -> i32 {
    caller.data_mut().stream.resumed = true;
    status::OK
}

/// `proxy_set_buffer_bytes`: replaces `size` bytes at `start` with `value`, clamped to the
/// buffer (so `0, len` replaces it all and `len, 0` appends).
fn splice(body: &mut Vec<u8>, start: usize, size: usize, value: &[u8]) {
    let start = start.min(body.len());
    let end = start.saturating_add(size).min(body.len());
    body.splice(start..end, value.iter().copied());
}

/// A [`Linker`] that remembers which `env` calls it defined, so the rest can be stubbed (the
/// linker cannot list its host functions back).
struct EnvLinker {
    l: Linker<Host>,
    linked: Vec<&'static str>,
}

impl EnvLinker {
    fn func<Params, Results>(
        &mut self,
        name: &'static str,
        f: impl IntoFunc<Host, Params, Results>,
    ) -> Result<(), wasmi::Error> {
        self.l.func_wrap("env", name, f)?;
        self.linked.push(name);
        Ok(())
    }
}

/// Links every supported host call, and an `Unimplemented` stub for any other function the
/// module imports.
pub fn linker(engine: &wasmi::Engine, module: &Module) -> Result<Linker<Host>, wasmi::Error> {
    type R = Result<i32, wasmi::Error>;
    let mut l = EnvLinker {
        l: Linker::<Host>::new(engine),
        linked: Vec::new(),
    };
    l.func(
        "proxy_log",
        |caller: Caller<'_, Host>, level: i32, ptr: i32, len: i32| -> R {
            done(|| {
                let msg = read(&caller, ptr, len)?;
                let msg = String::from_utf8_lossy(&msg);
                let plugin = caller.data().plugin.name.as_str();
                match level {
                    0 | 1 => tracing::debug!(plugin, "{msg}"),
                    2 => tracing::info!(plugin, "{msg}"),
                    3 => tracing::warn!(plugin, "{msg}"),
                    _ => tracing::error!(plugin, "{msg}"),
                }
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_get_log_level",
        |mut caller: Caller<'_, Host>, ret: i32| -> R {
            let level: i32 = if tracing::enabled!(tracing::Level::DEBUG) {
                1
            } else {
                2
            };
            done(|| write(&mut caller, ret, &level.to_le_bytes()))
        },
    )?;
    l.func(
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, Host>, ret: i32| -> R {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            done(|| write(&mut caller, ret, &now.to_le_bytes()))
        },
    )?;
    l.func(
        "proxy_set_tick_period_milliseconds",
        |caller: Caller<'_, Host>, period: i32| -> i32 {
            caller
                .data()
                .plugin
                .tick_ms
                .store(period as u32, std::sync::atomic::Ordering::Relaxed);
            status::OK
        },
    )?;
    l.func(
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, Host>,
         buffer: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> R {
            done(|| {
                let host = caller.data();
                let stream = &host.stream;
                let data: &[u8] = match buffer {
                    PLUGIN_CONFIGURATION => &host.plugin.config,
                    VM_CONFIGURATION => &[],
                    // Outside a body callback these are empty: what was buffered so far.
                    REQUEST_BODY => &stream.request_body,
                    RESPONSE_BODY => &stream.response_body,
                    CALL_RESPONSE_BODY => {
                        &stream.call_response.as_ref().ok_or(status::NOT_FOUND)?.body
                    }
                    _ => return Err(status::NOT_FOUND.into()),
                };
                let start = (start as u32 as usize).min(data.len());
                let end = start.saturating_add(max as u32 as usize).min(data.len());
                let slice = data[start..end].to_vec();
                give(&mut caller, &slice, ret_ptr, ret_len)
            })
        },
    )?;
    l.func(
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, Host>,
         buffer: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32|
         -> R {
            done(|| {
                let value = read(&caller, ptr, len)?;
                let stream = &mut caller.data_mut().stream;
                let body = match buffer {
                    REQUEST_BODY => &mut stream.request_body,
                    RESPONSE_BODY => &mut stream.response_body,
                    _ => return Err(status::NOT_FOUND.into()),
                };
                splice(body, start as u32 as usize, size as u32 as usize, &value);
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_http_call",
        |mut caller: Caller<'_, Host>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> R {
            done(|| {
                let upstream = String::from_utf8(read(&caller, uptr, ulen)?)
                    .map_err(|_| status::BAD_ARGUMENT)?;
                let headers = read_headers(&caller, hptr, hlen)?;
                let body = read(&caller, bptr, blen)?;
                // Trailers on a call are read (so a bad map is refused) but not sent.
                read_headers(&caller, tptr, tlen)?;
                // As Envoy: a call needs its method, path and authority.
                for required in [&b":method"[..], b":path", b":authority"] {
                    if header_of(&headers, required).is_none() {
                        return Err(status::BAD_ARGUMENT.into());
                    }
                }
                if upstream.is_empty() || caller.data().stream.calls.len() >= MAX_CALLS {
                    return Err(status::BAD_ARGUMENT.into());
                }
                let host = caller.data_mut();
                host.last_token = host.last_token.wrapping_add(1).max(1);
                let token = host.last_token;
                host.stream.calls.push(CallRequest {
                    token,
                    upstream,
                    headers,
                    body,
                    timeout: std::time::Duration::from_millis(u64::from(timeout_ms as u32)),
                });
                write(&mut caller, ret_token, &token.to_le_bytes())
            })
        },
    )?;
    l.func(
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, Host>, map_type: i32, ret_ptr: i32, ret_len: i32| -> R {
            done(|| {
                let bytes = encode_map(map_ref(&caller, map_type)?);
                give(&mut caller, &bytes, ret_ptr, ret_len)
            })
        },
    )?;
    l.func(
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, Host>, map_type: i32, ptr: i32, len: i32| -> R {
            done(|| {
                let pairs = read_headers(&caller, ptr, len)?;
                *map(&mut caller, map_type)? = pairs;
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, Host>,
         map_type: i32,
         kptr: i32,
         klen: i32,
         rptr: i32,
         rlen: i32|
         -> R {
            done(|| {
                let key = read_key(&caller, kptr, klen)?;
                let value =
                    header_of(map_ref(&caller, map_type)?, &key).ok_or(status::NOT_FOUND)?;
                give(&mut caller, &value, rptr, rlen)
            })
        },
    )?;
    l.func(
        "proxy_replace_header_map_value",
        |mut caller: Caller<'_, Host>,
         map_type: i32,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vlen: i32|
         -> R {
            done(|| {
                let (key, value) = read_header(&caller, [kptr, klen, vptr, vlen])?;
                let pairs = map(&mut caller, map_type)?;
                pairs.retain(|(k, _)| *k != key);
                pairs.push((key, value));
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_add_header_map_value",
        |mut caller: Caller<'_, Host>,
         map_type: i32,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vlen: i32|
         -> R {
            done(|| {
                let header = read_header(&caller, [kptr, klen, vptr, vlen])?;
                map(&mut caller, map_type)?.push(header);
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, Host>, map_type: i32, kptr: i32, klen: i32| -> R {
            done(|| {
                let key = read_key(&caller, kptr, klen)?;
                map(&mut caller, map_type)?.retain(|(k, _)| *k != key);
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_get_property",
        |mut caller: Caller<'_, Host>, ptr: i32, len: i32, ret_ptr: i32, ret_len: i32| -> R {
            done(|| {
                let path = read(&caller, ptr, len)?;
                let value = property(caller.data(), &path).ok_or(status::NOT_FOUND)?;
                give(&mut caller, &value, ret_ptr, ret_len)
            })
        },
    )?;
    l.func(
        "proxy_set_property",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32, _: i32| -> i32 { status::UNIMPLEMENTED },
    )?;
    l.func(
        "proxy_get_shared_data",
        |mut caller: Caller<'_, Host>,
         kptr: i32,
         klen: i32,
         rptr: i32,
         rlen: i32,
         rcas: i32|
         -> R {
            done(|| {
                let key = read(&caller, kptr, klen)?;
                let shared = &caller.data().plugin.shared_data;
                let (value, cas) = shared.get(&key).ok_or(status::NOT_FOUND)?;
                give(&mut caller, &value, rptr, rlen)?;
                write(&mut caller, rcas, &cas.to_le_bytes())
            })
        },
    )?;
    l.func(
        "proxy_set_shared_data",
        |caller: Caller<'_, Host>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> R {
            done(|| {
                let key = read(&caller, kptr, klen)?;
                let value = read(&caller, vptr, vlen)?;
                let shared = &caller.data().plugin.shared_data;
                shared.set(key, value, cas as u32).map_err(|e| match e {
                    SetError::CasMismatch => Fail::Status(status::CAS_MISMATCH),
                    SetError::TooBig => Fail::Status(status::BAD_ARGUMENT),
                })
            })
        },
    )?;
    // A paused request (waiting on an HTTP call) goes on when its plugin resumes it; the
    // request path reads the flag after the callback.
    l.func(
        "proxy_continue_stream",
        |mut caller: Caller<'_, Host>, _: i32| -> i32 { resume(&mut caller) },
    )?;
    l.func("proxy_close_stream", |_: Caller<'_, Host>, _: i32| -> i32 {
        status::OK
    })?;
    l.func(
        "proxy_continue_request",
        |mut caller: Caller<'_, Host>| -> i32 { resume(&mut caller) },
    )?;
    l.func(
        "proxy_continue_response",
        |mut caller: Caller<'_, Host>| -> i32 { resume(&mut caller) },
    )?;
    l.func(
        "proxy_send_local_response",
        |mut caller: Caller<'_, Host>,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         _grpc: i32|
         -> R {
            done(|| {
                let status = u16::try_from(code)
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .ok_or(status::BAD_ARGUMENT)?;
                let details = String::from_utf8_lossy(&read(&caller, dptr, dlen)?).into_owned();
                let body = read(&caller, bptr, blen)?;
                let headers = read_headers(&caller, hptr, hlen)?;
                caller.data_mut().stream.local_response = Some(LocalResponse {
                    status,
                    details,
                    headers,
                    body,
                });
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_define_metric",
        |mut caller: Caller<'_, Host>, kind: i32, nptr: i32, nlen: i32, ret: i32| -> R {
            done(|| {
                let kind = Kind::from_abi(kind).ok_or(status::BAD_ARGUMENT)?;
                let name = read(&caller, nptr, nlen)?;
                let plugin = &caller.data().plugin;
                let id = plugin
                    .metrics
                    .define(&plugin.name, kind, &String::from_utf8_lossy(&name))
                    .ok_or(status::BAD_ARGUMENT)?;
                write(&mut caller, ret, &id.to_le_bytes())
            })
        },
    )?;
    l.func(
        "proxy_increment_metric",
        |caller: Caller<'_, Host>, id: i32, offset: i64| -> R {
            done(|| {
                let m = metric(&caller, id)?;
                if m.kind() == Kind::Histogram {
                    return Err(status::BAD_ARGUMENT.into());
                }
                m.increment(offset);
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_record_metric",
        |caller: Caller<'_, Host>, id: i32, value: i64| -> R {
            done(|| {
                metric(&caller, id)?.record(value);
                Ok(())
            })
        },
    )?;
    l.func(
        "proxy_get_metric",
        |mut caller: Caller<'_, Host>, id: i32, ret: i32| -> R {
            done(|| {
                let value = metric(&caller, id)?.get();
                write(&mut caller, ret, &value.to_le_bytes())
            })
        },
    )?;
    l.func("proxy_done", |_: Caller<'_, Host>| -> i32 { status::OK })?;
    l.func(
        "proxy_set_effective_context",
        |_: Caller<'_, Host>, _: i32| -> i32 { status::OK },
    )?;
    stub_the_rest(&mut l, module)?;
    Ok(l.l)
}

/// Links every other imported function to a stub returning `Unimplemented` (or nothing).
fn stub_the_rest(l: &mut EnvLinker, module: &Module) -> Result<(), wasmi::Error> {
    let missing: Vec<(String, String, wasmi::FuncType)> = module
        .imports()
        .filter_map(|i| {
            let ty = i.ty().func()?.clone();
            Some((i.module().to_string(), i.name().to_string(), ty))
        })
        .collect();
    for (module_name, name, ty) in missing {
        if module_name == "env" && l.linked.contains(&name.as_str()) {
            continue;
        }
        let results: Vec<ValType> = ty.results().to_vec();
        let stub_name = format!("{module_name}.{name}");
        l.l.func_new(
            &module_name,
            &name,
            ty,
            move |_caller, _params, out: &mut [Val]| {
                tracing::debug!(call = %stub_name, "unimplemented Proxy-Wasm host call");
                for (slot, ty) in out.iter_mut().zip(&results) {
                    *slot = match ty {
                        ValType::I32 => Val::I32(status::UNIMPLEMENTED),
                        ValType::I64 => Val::I64(i64::from(status::UNIMPLEMENTED)),
                        other => Val::default_for_ty(*other),
                    };
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wasm_map_encoding_round_trips() {
        let pairs = vec![
            (b":path".to_vec(), b"/a?b".to_vec()),
            (b"x-empty".to_vec(), Vec::new()),
        ];
        let bytes = encode_map(&pairs);
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(decode_map(&bytes).unwrap(), pairs);
        assert!(decode_map(&bytes[..bytes.len() - 3]).is_none());
        assert!(decode_map(&[0xff, 0xff, 0xff, 0x7f]).is_none());
    }

    #[test]
    fn wasm_set_buffer_bytes_splices_within_the_buffer() {
        let mut body = b"hello world".to_vec();
        splice(&mut body, 0, 5, b"HELLO");
        assert_eq!(body, b"HELLO world");
        splice(&mut body, 0, usize::MAX, b"all");
        assert_eq!(body, b"all");
        splice(&mut body, 3, 0, b"+end");
        assert_eq!(body, b"all+end");
        splice(&mut body, 100, 5, b"!");
        assert_eq!(body, b"all+end!");
    }
}
