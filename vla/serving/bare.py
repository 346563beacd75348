"""The bare-transport baseline for `vla bench serve`: grpcio answering a fixed reply, nothing parsed, nothing checked.

    python -m vla.serving.bare --port 0 --ready-file p --reply-hex 0a0c...

It registers the PolicyService method paths (Predict, StreamPredict) with a generic handler whose request and
response (de)serialisers are identity functions, so the bytes the benchmark's clients send are received and a
fixed, valid PredictResponse goes back. The same load generator drives it in the same run as the real server:
our serving overhead is then a ratio against grpcio itself on the same machine at the same moment.
It is NOT a server to deploy (no validation, no auth, no limits beyond grpcio's defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import grpc

SERVICE = "vla.v1.PolicyService"


def handlers(reply: bytes) -> grpc.GenericRpcHandler:
    """Predict -> `reply`; StreamPredict -> `reply` per request. Raw bytes in and out (no protobuf at all)."""

    async def predict(request: bytes, context) -> bytes:
        return reply

    async def stream(request_iterator, context):
        async for _ in request_iterator:
            yield reply

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Predict": grpc.unary_unary_rpc_method_handler(predict),
        "StreamPredict": grpc.stream_stream_rpc_method_handler(stream),
    })


async def serve(reply: bytes, port: int, ready_file: str | None, max_message_mb: float = 64.0,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set)."""
    limit = int(max_message_mb * 2**20)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handlers(reply),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if ready_file:
        tmp = f"{ready_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{bound}\n")
        os.replace(tmp, ready_file)
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vla.serving.bare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file")
    p.add_argument("--reply-hex", default="", help="the serialized PredictResponse to answer, hex-encoded")
    args = p.parse_args(argv)
    asyncio.run(serve(bytes.fromhex(args.reply_hex), args.port, args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
