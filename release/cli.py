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


@main.command()
@click.argument("uri")
@click.option("--sha256", "sha256", required=True, help="Expected SHA-256 of the file (64 hex digits).")
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="File to write."
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Artifact cache (default: $RELEASE_CACHE_DIR, else ~/.cache/custom-transformer-release/artifacts).",
)
@click.option("--progress/--no-progress", default=None, help="Progress on stderr (default: only on a TTY).")
@reports_errors
def fetch(uri, sha256, out, cache_dir, progress):
    """Fetch the checkpoint at URI to --out and check its SHA-256.

    URI is a local path, file://, http(s)://, hf://OWNER/REPO/PATH[@REV] (token: $HF_TOKEN),
    s3:// or gs:// (needs the 'cloud' extra). Prints the path and where it came from
    (download, local, cache or existing). An interrupted HTTP download resumes from <out>.part.

    \b
    Example:
        release fetch https://example.com/ckpt.pt --sha256 9f86d0...0a08 --out dist/ckpt.pt
    """
    from release.fetch import fetch_artifact

    result = fetch_artifact(uri, sha256=sha256, out=out, cache_dir=cache_dir, progress=progress)
    click.echo(f"{result.path} ({result.source})")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--repo-id", required=True, help="Model repo OWNER/NAME (created if missing).")
@click.option("--version", "version", required=True, help="vX.Y.Z, or vX.Y.Z-rc.N etc. for a prerelease.")
@click.option(
    "--private/--public",
    default=None,
    help="Set the repo's visibility, after the tag is in place (default: leave it; a new repo gets the Hub's default).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan and change nothing (no token needed; works offline)."
)
@click.option(
    "--commit-message", default=None, help="Summary of the release commit (default: 'Release <tag>')."
)
@click.option(
    "--verification",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The verification report the folder must match (default: FOLDER/../verification.json).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the result here.",
)
@reports_errors
def publish(folder, repo_id, version, private, dry_run, commit_message, verification, json_out):
    """Publish a verified model FOLDER to the Hub: one commit, checked from the Hub, then tagged.

    A stable version (v1.2.0) updates main and tags it; a prerelease (v1.2.0-rc.1) goes to its own branch
    release/<tag> and never touches main. Files not in FOLDER are deleted from the branch in the same commit
    (.gitattributes is kept). Re-running an identical release is a no-op; the same version with other content
    is refused.

    Credentials come from the environment only: HF_TOKEN, or in GitHub Actions HF_OIDC_RESOURCE=OWNER/NAME
    (trusted publishing; the job needs `permissions: id-token: write`). --dry-run needs neither.

    \b
    Example:
        release publish dist/v1.2.0/model --repo-id me/tiny-gpt --version v1.2.0 --dry-run
    """
    from release.hub import publish_release
    from release.hub_auth import redact

    try:
        result = publish_release(
            folder,
            repo_id=repo_id,
            version=version,
            private=private,
            dry_run=dry_run,
            commit_message=commit_message,
            verification=verification,
        )
    except ReleaseError as exc:  # the library redacts already; this is the last line of defence before output
        exc.args = (redact(str(exc)),)
        if getattr(exc, "failures", None):
            exc.failures = [redact(line) for line in exc.failures]
        raise
    if dry_run:
        for line in result.plan.format_lines():
            click.echo(redact(line))
        click.echo("Dry run: nothing was changed.")
    elif result.created:
        click.echo(
            f"Published {result.tag} to {result.repo_id} ({result.branch} at {result.commit}): {result.revision_url}"
        )
    else:
        click.echo(f"{result.tag} is already published at {result.commit} with this content; nothing to do.")
    if json_out is not None:
        result.write_json(json_out)
