"""The ``release`` command: a thin click layer over the library.

Each command resolves its options, calls one library function and prints the result. Heavy libraries
(torch, transformers, huggingface_hub) are imported inside the commands, never at module import time,
so ``release --help`` answers at once.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from release.errors import ReleaseError

DTYPES = ("float32", "bfloat16", "float16")


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def reports_errors(func):
    """Turn a ReleaseError into one line on stderr and its exit code; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except ReleaseError as exc:
            if debug:
                raise
            failures = getattr(exc, "failures", None) or []
            for line in failures:
                click.echo(f"FAILED: {line}", err=True)
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was left behind", 130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="custom-transformer-release")
def main(debug: bool) -> None:
    """Release a custom transformer checkpoint to the Hugging Face Hub.

    \b
    Steps:  fetch -> convert -> verify -> card -> publish   (all at once: release run)
    Example (offline demo, nothing is pushed):
        release run --dry-run
    """


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output model folder.")
@click.option("--tokenizer", default=None, help="Tokenizer folder or Hub id (default: from settings, else gpt2).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--max-shard-size", default="5GB", show_default=True, help="e.g. 500MB, 2GB, or bytes.")
@click.option("--force", is_flag=True, help="Replace an existing non-empty output folder.")
@click.option("--progress/--no-progress", default=None, help="Progress on stderr (default: only on a TTY).")
@reports_errors
def convert(checkpoint, out, tokenizer, dtype, max_shard_size, force, progress):
    """Convert a training CHECKPOINT to a transformers model folder.

    \b
    Example:
        release convert ckpt.pt --out dist/v1.0.0/model --tokenizer ./tokenizer
    """
    from release.convert import convert_checkpoint, parse_size

    result = convert_checkpoint(
        checkpoint,
        out,
        tokenizer=tokenizer,
        dtype=dtype,
        max_shard_size=parse_size(max_shard_size),
        force=force,
        progress=progress,
    )
    click.echo(f"Converted {checkpoint} -> {result.out_dir} ({len(result.files)} files)")
