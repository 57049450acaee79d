#!/usr/bin/env python3
"""A gRPC echo server and client on raw bytes (generic handlers, no generated code), for the
Trellis proxy tests: a real grpcio stack on both ends, the proxies in between.

  grpc_echo.py serve --port 0 --ready-file F     serve echo.Echo on 127.0.0.1 (or --host)
  grpc_echo.py call --target ADDR CASE           run one client case, print JSON, exit 0

Service echo.Echo:
  Unary(bytes) -> the same bytes, with trailing metadata x-echo-trailer: done
  Stream(bytes "N:payload") -> N messages "i:payload", then trailer x-echo-count: N
  Fail(bytes) -> status NOT_FOUND, details "no such thing", trailer x-echo-why: asked
"""
import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "echo.Echo"
TIMEOUT_S = 10


def unary(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "done"),))
    return request


def stream(request, context):
    count, _, payload = request.partition(b":")
    n = int(count)
    for i in range(n):
        yield b"%d:%s" % (i, payload)
    context.set_trailing_metadata((("x-echo-count", str(n)),))


def fail(request, context):
    context.set_trailing_metadata((("x-echo-why", "asked"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(args):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("%s:%d" % (args.host, args.port))
    server.start()
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "addr": "%s:%d" % (args.host, port)}, f)
        os.rename(tmp, args.ready_file)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    # Waits for a signal; the test harness always sends one (SIGTERM, then SIGKILL).
    while not done.wait(1):
        pass
    server.stop(1).wait(5)


def metadata_dict(md):
    return {k: v for k, v in (md or ())}


def call(args):
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        method = "/%s/%s" % (SERVICE, {"unary": "Unary", "stream": "Stream", "fail": "Fail"}[args.case])
        out = {"case": args.case}
        try:
            if args.case == "stream":
                rpc = channel.unary_stream(method)
                call = rpc(b"%d:hello" % args.count, timeout=TIMEOUT_S)
                out["messages"] = [m.decode() for m in call]
            else:
                rpc = channel.unary_unary(method)
                payload = os.urandom(args.size) if args.size else b"hello grpc"
                reply, call = rpc.with_call(payload, timeout=TIMEOUT_S)
                out["echo_ok"] = reply == payload
                out["len"] = len(reply)
            out["code"] = call.code().name
            out["details"] = call.details()
            out["trailers"] = metadata_dict(call.trailing_metadata())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
            out["trailers"] = metadata_dict(e.trailing_metadata())
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--ready-file")
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--authority")
    c.add_argument("--count", type=int, default=5)
    c.add_argument("--size", type=int, default=0)
    c.add_argument("case", choices=["unary", "stream", "fail"])
    args = p.parse_args()
    serve(args) if args.cmd == "serve" else call(args)


if __name__ == "__main__":
    sys.exit(main())
