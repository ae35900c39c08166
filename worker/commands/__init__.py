"""The `rfm-worker` commands, one module each: `add_parser` declares its arguments and sets
its handler, which runs it (worker/cli.py builds the parser from them)."""
