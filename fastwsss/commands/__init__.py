"""Plain functions behind the CLI commands (fastwsss/cli.py wires them to typer)."""
