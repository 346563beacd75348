"""One module per `vla` subcommand.

Each module defines `register(subparsers)`, which adds its parser and sets `func=run`. Modules import
torch and friends inside `run`, so `vla --help` stays fast.
"""
