"""`vla serve`: serve a policy (and optionally CLIP classification/embeddings) over gRPC.

    vla serve                                          # the committed default model (+ its CLIP), 127.0.0.1:50051
    vla serve --checkpoint out/policy                  # your checkpoint
    vla serve --policy noop --port 0 --ready-file p    # zero chunks: measures the serving layer alone
    VLA_TOKEN=secret vla serve --checkpoint DIR --host 0.0.0.0 --tls-cert c.pem --tls-key k.pem

The token is read from --token or the VLA_TOKEN environment variable (keeps it out of `ps`). Anything that binds
beyond loopback should use both a token and TLS.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a policy over gRPC", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to serve")
    what.add_argument("--checkpoint", metavar="DIR", help="policy checkpoint directory (VLAPolicy.load)")
    what.add_argument("--policy", choices=("noop", "tiny"),
                      help="noop: zero chunks of the right shape; tiny: randomly initialised tiny policy (tests)")
    what.add_argument("--noop-cameras", default="corner", help="noop: comma-separated camera names")
    what.add_argument("--noop-image-size", type=int, default=128, help="noop: image side reported (px)")
    what.add_argument("--noop-chunk-len", type=int, default=4, help="noop: chunk length")
    what.add_argument("--clip", metavar="MODEL", help="also serve VisionService with this CLIP (e.g. vla-tiny)")
    what.add_argument("--clip-weights", metavar="FILE", help="local CLIP weights (default: random init)")
    what.add_argument("--coop-context", action="append", default=[], metavar="ID=FILE",
                      help="a CoOp context classifiable by id (repeatable)")
    net = p.add_argument_group("network and limits")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=50051, help="port (0: any free port; default 50051)")
    net.add_argument("--ready-file", help="write the bound port here once serving (atomic)")
    net.add_argument("--max-batch", type=int, default=32, help="observations per forward pass (default 32)")
    net.add_argument("--max-wait-ms", type=float, default=0.0,
                     help="hold a batch open this long for more requests (default 0: batches form under load)")
    net.add_argument("--max-queue", type=int, default=256, help="queued requests before RESOURCE_EXHAUSTED")
    net.add_argument("--max-queue-per-client", type=int, default=None,
                     help="queued requests of one client (its vla-client id, else its connection) before "
                          "RESOURCE_EXHAUSTED (default: max-queue). Batches are filled round robin across clients, "
                          "and a full queue pushes out the newest request of the client holding the most")
    net.add_argument("--max-concurrent-rpcs", type=int, default=None,
                     help="RPCs open at once, streams included, before RESOURCE_EXHAUSTED (default max-queue + 64)")
    net.add_argument("--max-message-mb", type=float, default=16.0, help="largest request/response (MiB)")
    net.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM: time given to in-flight requests")
    net.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    sec = p.add_argument_group("security")
    sec.add_argument("--token", default=os.environ.get("VLA_TOKEN"),
                     help="require 'authorization: Bearer TOKEN' (default: $VLA_TOKEN)")
    sec.add_argument("--tls-cert", help="PEM certificate chain")
    sec.add_argument("--tls-key", help="PEM private key")


def use_default_model(args) -> None:
    """Nothing named: serve the committed default model (policy, its CLIP and the scene CoOp context)."""
    from vla.default_model import CONTEXT_FILE, DEFAULT_DIR, default_checkpoint, default_clip
    from vla.errors import UserError

    found = default_checkpoint()
    if found is None:
        raise UserError(f"nothing to serve: no default model is committed in {DEFAULT_DIR}; give --checkpoint DIR, "
                        "--policy noop|tiny or --clip MODEL")
    args.checkpoint = str(found)
    args.clip, args.clip_weights = default_clip()
    args.coop_context = [f"scenes={found / CONTEXT_FILE}", *args.coop_context]


def build_policy(args):
    from vla.errors import UserError

    if args.checkpoint and args.policy:
        raise UserError(f"give --checkpoint {args.checkpoint} or --policy {args.policy}, not both")
    if args.policy == "noop":
        from vla.serving.noop import NoopPolicy

        cams = tuple(c for c in args.noop_cameras.split(",") if c)
        return NoopPolicy(cameras=cams, image_size=args.noop_image_size, chunk_len=args.noop_chunk_len)
    if args.policy == "tiny" or args.checkpoint:
        try:
            from vla.policy import PolicyConfig, VLAPolicy
        except ImportError as e:
            raise UserError(f"the policy package is not available in this build ({e})") from None
        if args.policy == "tiny":
            return VLAPolicy.from_config(PolicyConfig.tiny()).eval()
        if not os.path.isdir(args.checkpoint):
            raise UserError(f"--checkpoint {args.checkpoint}: not a directory")
        return VLAPolicy.load(args.checkpoint).eval()
    return None


def build_vision(args):
    if not args.clip:
        if args.coop_context:
            from vla.errors import UserError

            raise UserError("--coop-context needs --clip MODEL")
        return None
    from vla.clip import load_clip
    from vla.errors import UserError
    from vla.prompts.coop import PromptLearner
    from vla.serving.vision_service import VisionModel

    clip = load_clip(args.clip, args.clip_weights)
    contexts = {}
    for spec in args.coop_context:
        cid, sep, path = spec.partition("=")
        if not sep or not cid or not path:
            raise UserError(f"--coop-context {spec!r}: expected ID=FILE")
        contexts[cid] = PromptLearner.load(path, clip).eval()
    return VisionModel(clip, contexts)


def run(args: argparse.Namespace) -> int:
    import logging

    from vla.errors import UserError
    from vla.serving.server import ServeConfig, serve

    log = logging.getLogger("vla.serving")
    if args.threads and (args.policy != "noop" or args.clip):  # noop alone has no torch: skip its import
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = ServeConfig(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                          max_queue=args.max_queue, max_queue_per_client=args.max_queue_per_client,
                          max_concurrent_rpcs=args.max_concurrent_rpcs,
                          max_message_mb=args.max_message_mb, grace_s=args.grace_s,
                          token=args.token or None, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ValueError as e:
        raise UserError(str(e)) from None
    for path in (args.tls_cert, args.tls_key):
        if path and not os.path.isfile(path):
            raise UserError(f"TLS file not found: {path}")
    if not (args.checkpoint or args.policy or args.clip):
        use_default_model(args)
    policy, vision = build_policy(args), build_vision(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (cfg.token and cfg.tls_cert):
        log.warning("serving on %s without %s: anyone who can reach this port can use the model", args.host,
                    " and ".join(n for n, v in (("--token", cfg.token), ("TLS", cfg.tls_cert)) if not v))

    def ready(port: int) -> None:
        if args.ready_file:
            tmp = f"{args.ready_file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"{port}\n")
            os.replace(tmp, args.ready_file)

    serve(policy, cfg, vision, ready=ready)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m vla.commands.serve`), same flags as `vla serve`."""
    import logging
    import sys

    from vla.errors import UserError

    p = argparse.ArgumentParser(prog="vla serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vla").setLevel(logging.INFO)
    try:
        return run(args)
    except UserError as e:
        print(f"vla serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
