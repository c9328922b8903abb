"""The ``release`` command: a thin click layer over the library.

Each command resolves its options, calls one library function and prints the result. Heavy libraries
(torch, transformers, huggingface_hub) are imported inside the commands, never at module import time,
so ``release --help`` answers at once.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import click

from release.errors import ReleaseError, UsageError, VerificationError, causes, explain
from release.settings import DTYPES, STEPS


class ReportingCommand(click.Command):
    """A command that turns a ReleaseError into one line on stderr and its exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (KeyboardInterrupt, Exception) as exc:
            # A Ctrl-C, or an error it caused: one that strikes while a class is created (an import) reaches
            # us wrapped in a RuntimeError.
            if any(isinstance(e, KeyboardInterrupt) for e in causes(exc)):
                click.echo("Error: interrupted; nothing was left behind", err=True)
                # CPython marks an interrupt that struck inside exec() of source text (dataclasses build their
                # methods so) as unhandled even once caught, and then ends the process by SIGINT instead of
                # this exit code. Running source text again clears the mark; no API does.
                exec("")  # noqa: S102
                sys.exit(130)
            if ctx.find_root().params.get("debug"):
                raise
            from release.auth import redact  # every message, whichever step raised it

            error = exc if isinstance(exc, ReleaseError) else explain(exc)
            for line in getattr(error, "failures", None) or []:
                click.echo(f"FAILED: {redact(line)}", err=True)
            click.echo(f"Error: {redact(str(error))}", err=True)
            # HubUnavailableError: the Hub, not the release, failed
            if rerun := getattr(error, "rerun", None):
                click.echo(f"Re-run to complete the release: {redact(rerun)}", err=True)
            sys.exit(error.exit_code)


# Options that several commands share, declared once so their names and types read the same everywhere.
repo_id_option = functools.partial(
    click.option, "--repo-id", help="Model repo OWNER/NAME (default: the settings' repo_id)."
)
version_option = functools.partial(click.option, "--version")
tokenizer_option = functools.partial(
    click.option, "--tokenizer", help="Tokenizer folder or Hub id (default: from settings, else gpt2)."
)
dtype_option = functools.partial(click.option, "--dtype", type=click.Choice(DTYPES))
progress_option = click.option(
    "--progress/--no-progress", default=None, help="Progress on stderr (default: only on a TTY)."
)
existing_file_option = functools.partial(
    click.option, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
expect_digest_option = click.option(
    "--expect-digest",
    metavar="SHA256",
    help="Refuse unless the release digest (sha256 of FOLDER/SHA256SUMS) is this: the build job's digest.",
)
cache_dir_option = functools.partial(
    click.option, "--cache-dir", type=click.Path(path_type=Path, file_okay=False)
)
private_option = functools.partial(click.option, "--private/--public", "private", default=None)
file_option = functools.partial(click.option, type=click.Path(path_type=Path, dir_okay=False))
device_option = click.option(
    "--device",
    metavar="auto|cpu|cuda|cuda:N",
    help="Where verify (and compat) run the models (default: settings, cpu); accelerate spreads one too large "
    "for a GPU in verify.",
)


def _repo_id_or_settings(repo_id: str | None) -> str:
    """``--repo-id``, else the settings' ``repo_id``; a usage error when neither is set."""
    if repo_id:
        return repo_id
    from release.settings import load_settings

    repo_id = load_settings().repo_id
    if not repo_id:
        raise UsageError("no repo id: pass --repo-id or set [tool.release] repo_id / RELEASE_REPO_ID")
    return repo_id


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


main.command_class = ReportingCommand  # every command reports its errors the same way


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output model folder.")
@tokenizer_option()
@dtype_option(default="float32", show_default=True)
@click.option("--max-shard-size", default="5GB", show_default=True, help="e.g. 500MB, 2GB, or bytes.")
@click.option("--force", is_flag=True, help="Replace an existing non-empty output folder.")
@progress_option
def convert(checkpoint, out, tokenizer, dtype, max_shard_size, force, progress):
    """Convert a training CHECKPOINT to a transformers model folder.

    \b
    Example:
        release convert ckpt.pt --out dist/v1.0.0/model --tokenizer ./tokenizer
    """
    from release.convert.folder import convert_checkpoint, parse_size

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
@click.option("--sha256", required=True, help="Expected SHA-256 of the file (64 hex digits).")
@file_option("--out", required=True, help="File to write.")
@cache_dir_option(
    help="Artifact cache (default: $RELEASE_CACHE_DIR, else ~/.cache/custom-transformer-release/artifacts)."
)
@progress_option
def fetch(uri, sha256, out, cache_dir, progress):
    """Fetch the checkpoint at URI to --out and check its SHA-256.

    URI is a local path, file://, http(s)://, hf://OWNER/REPO/PATH[@REV] (token: $HF_TOKEN),
    s3:// or gs:// (needs the 'cloud' extra). Prints the path and where it came from
    (download, local, cache or existing). An interrupted HTTP download resumes from <out>.part.

    \b
    Example:
        release fetch https://example.com/ckpt.pt --sha256 9f86d0...0a08 --out dist/ckpt.pt
    """
    from release.fetch.artifact import fetch_artifact

    result = fetch_artifact(uri, sha256=sha256, out=out, cache_dir=cache_dir, progress=progress)
    click.echo(f"{result.path} ({result.source})")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@repo_id_option(help="Model repo OWNER/NAME (created if missing); default: the settings' repo_id.")
@version_option(required=True, help="vX.Y.Z, or vX.Y.Z-rc.N etc. for a prerelease.")
@private_option(
    help="Set the repo's visibility, after the tag is in place (default: leave it; a new repo gets the Hub's default)."
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan and change nothing (no token needed; works offline)."
)
@click.option("--commit-message", help="Summary of the release commit (default: 'Release <tag>').")
@file_option(
    "--verification",
    help="The verification report the folder must match (default: FOLDER/../verification.json).",
)
@file_option("--json", "json_out", help="Also write the result here.")
@expect_digest_option
def publish(
    folder, repo_id, version, private, dry_run, commit_message, verification, json_out, expect_digest
):
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
    from release.auth import redact
    from release.github import append_summary, check_release_ref, report_publish, report_review
    from release.publish.publisher import publish_release
    from release.sign.checksums import CHECKSUMS_FILE, check_release_digest, release_digest

    check_release_ref(version, dry_run=dry_run)
    if expect_digest is not None:
        check_release_digest(folder, expect_digest)
    result = publish_release(
        folder,
        repo_id=_repo_id_or_settings(repo_id),
        version=version,
        private=private,
        dry_run=dry_run,
        commit_message=commit_message,
        verification=verification,
        echo=lambda line: click.echo(line, err=True),
    )
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
    report_publish(result.to_dict())
    for warning in result.warnings:
        click.echo(f"Warning: {redact(warning)}", err=True)
        append_summary(f"> [!WARNING]\n> {redact(warning)}\n")
    if dry_run and (folder / CHECKSUMS_FILE).is_file():
        report_review(
            version=result.tag, plan_lines=result.plan.format_lines(), digest=release_digest(folder)
        )


@main.command()
@click.argument("model_dir", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@version_option(required=True, help="vX.Y.Z[-prerelease]; the card's code pins revision=VERSION.")
@file_option(
    "--metrics",
    multiple=True,
    help="A metrics file: a JSON object of name -> number, or lm-evaluation-harness results. Repeatable.",
)
@file_option(
    "--template",
    help="Your own card template (default: [tool.release.card] template, else the built-in one).",
)
@file_option(
    "--verification",
    help="verification.json (default: DIR/../verification.json when it exists; without one, no verification section).",
)
@click.option(
    "--diff-against",
    metavar="REPO_ID[@REV]|FILE",
    help="Print a diff against the published card and write a PR comment.",
)
@file_option(
    "--pr-comment",
    help="Where --diff-against writes the PR comment (default: DIR/../pr_comment.md).",
)
@repo_id_option(help="Override the repo id (OWNER/NAME).")
@click.option("--model-name", help="Override the card's model name.")
@click.option("--license", "license_", help="Override the license (a Hub license id).")
def card(
    model_dir,
    version,
    metrics,
    template,
    verification,
    diff_against,
    pr_comment,
    repo_id,
    model_name,
    license_,
):
    """Render the model card DIR/README.md (and .eval_results/*.yaml) for a converted model folder.

    Card settings come from [tool.release.card] in pyproject.toml. Prints the files written; with
    --diff-against, prints the diff to stdout (the file list then goes to stderr) and writes the PR comment.

    \b
    Example:
        release card dist/v1.2.0/model --version v1.2.0 --metrics lm_eval.json --diff-against me/tiny-gpt
    """
    from release.card.model_card import card_release, review_card, write_pr_comment

    settings = _card_settings(repo_id, model_name=model_name, license=license_)
    carded = card_release(
        model_dir,
        version=version,
        settings=settings,
        verification=_verification_for(model_dir, verification),
        metrics_files=metrics,
        template=template,
    )
    for path in carded.written:
        click.echo(f"Wrote {path}", err=diff_against is not None)
    if diff_against is not None:
        review = review_card(carded.rendered.text, diff_against, version=version, repo_id=settings.repo_id)
        pr_comment = write_pr_comment(pr_comment or model_dir.parent / "pr_comment.md", review.comment)
        click.echo(f"Compared with {review.old_description}", err=True)
        click.echo(review.diff or "No changes.", nl=not review.diff)
        click.echo(f"Wrote {pr_comment}", err=True)


def _card_settings(repo_id: str | None, **overrides):
    """The card settings from the effective release settings, with the options over them."""
    from release.card.model_card import card_settings_from
    from release.settings import find_pyproject, load_settings

    pyproject = find_pyproject()
    return card_settings_from(
        load_settings(overrides={"repo_id": repo_id}, pyproject=pyproject),
        overrides=overrides,
        base_dir=pyproject.parent if pyproject else None,
    )


def _verification_for(model_dir: Path, path: Path | None):
    """``--verification``, else the report beside ``model_dir`` when there is one (None: no report)."""
    from release.verify.report import read_report, report_path

    if path is None and report_path(model_dir).is_file():
        path = report_path(model_dir)
    return read_report(path) if path is not None else None


@main.command("notes")
@click.argument("model_dir", metavar="DIR", type=click.Path(path_type=Path, file_okay=False, exists=True))
@existing_file_option("--published", required=True, help="The JSON written by `release publish --json FILE`.")
@file_option("--out", required=True, help="Notes file.")
def notes(model_dir, published, out):
    """Render GitHub Release notes for a published release (links the Hub revision).

    \b
    Example:
        release notes dist/v1.2.0/model --published publish.json --out notes.md
    """
    from release._io import write_text_atomic
    from release.card.model_card import render_model_card, render_release_notes
    from release.github import run_url
    from release.sign.checksums import CHECKSUMS_FILE, check_checksums, release_digest

    try:
        result = json.loads(published.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{published} is not JSON ({exc}); pass the file written by `release publish --json`"
        ) from None
    if result.get("dry_run") or not result.get("commit") or not result.get("revision_url"):
        raise UsageError(f"{published} describes a dry run or an unpublished release; publish first")
    rendered = render_model_card(
        model_dir,
        version=result["tag"],
        settings=_card_settings(result["repo_id"]),
        verification=_verification_for(model_dir, None),
    )
    digests = check_checksums(model_dir) if (model_dir / CHECKSUMS_FILE).is_file() else {}
    text = render_release_notes(
        rendered,
        revision_url=result["revision_url"],
        hub_commit=result["commit"],
        run_url=run_url(),
        digests=digests,
        release_digest=release_digest(model_dir) if digests else None,
    )
    write_text_atomic(out, text)
    click.echo(f"Wrote {out}")


@main.command("run")
@version_option(help="vX.Y.Z[-pre]; default: the tag on a GitHub tag push.")
@click.option("--dry-run", is_flag=True, help="Run every step; publishing only prints its plan.")
@click.option("--checkpoint", help="Checkpoint URI (path, file://, http(s)://, hf://, s3://, gs://).")
@click.option("--sha256", "checkpoint_sha256", help="The checkpoint's SHA-256.")
@repo_id_option(help="Model repo OWNER/NAME.")
@tokenizer_option(help="Tokenizer folder or Hub id.")
@dtype_option(help="Weights dtype of the release.")
@click.option("--max-shard-size", help="e.g. 2GB.")
@click.option("--dist-dir", help="Where dist/<version>/ goes (default: dist).")
@click.option(
    "--compat/--no-compat", "run_compat", default=None, help="Also run the transformers compatibility matrix."
)
@private_option(help="Visibility of a newly created repo.")
@device_option
@click.option(
    "--stop-after",
    type=click.Choice(STEPS[:-1]),
    help="Stop after this step (the CI build job stops after card and publishes in another job).",
)
def run(version, dry_run, stop_after, **options):
    """Release end to end: fetch -> convert -> verify -> card -> publish, into dist/<version>/.

    Settings come from [tool.release] in pyproject.toml, overridden by RELEASE_* environment
    variables, overridden by these options. With no checkpoint configured, releases the built-in
    demo model (offline).

    \b
    Examples:
        release run --dry-run                       # the demo, nothing pushed
        release run --version v1.2.0                # a real release
    """
    from release.github import check_release_ref, version_from_ref
    from release.pipeline import run_release
    from release.settings import find_pyproject, load_settings

    version = version or version_from_ref() or ("v0.0.0-dryrun" if dry_run else None)
    if not version:
        raise UsageError("--version is required (or run on a tag push, where GITHUB_REF_NAME gives it)")
    check_release_ref(version, dry_run=dry_run)
    pyproject = find_pyproject()
    settings = load_settings(overrides=options, pyproject=pyproject)
    result = run_release(
        settings,
        version=version,
        dry_run=dry_run,
        stop_after=stop_after,
        echo=lambda line: click.echo(line, err=True),
        pyproject_dir=pyproject.parent if pyproject else None,
    )
    click.echo(f"dist folder:  {result.out_dir}")
    if result.card_path:
        click.echo(f"model card:   {result.card_path}")
    click.echo(f"verification: {result.report_path.with_suffix('.md')}")
    if result.published is not None and not dry_run:
        click.echo(f"published:    {result.published.revision_url}")


@main.command()
@click.argument(
    "model_dir", metavar="[DIR]", required=False, type=click.Path(path_type=Path, file_okay=False)
)
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="The training checkpoint (reference).",
)
@repo_id_option(help="Verify a Hub repo instead of DIR (downloaded to a temporary cache).")
@click.option("--revision", help="Branch, tag or commit of --repo-id (default: main).")
@tokenizer_option(
    help="The tokenizer the model was trained with (default: the one release.json records, else settings, else gpt2)."
)
@file_option(
    "--report",
    "report_path",
    help="verification.json to write (default: DIR/../verification.json, or ./ for --repo-id); .md beside it.",
)
@click.option(
    "--prompt",
    "--prompts",
    "prompts",
    multiple=True,
    help="A generation prompt; repeat it (default: from settings).",
)
@file_option(
    "--eval-text",
    help="Text for the perplexity gate (default: from settings, else the shipped public-domain text).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Per prompt (default: settings, 32).")
@click.option(
    "--perplexity-tokens",
    type=click.IntRange(min=1),
    help="Tokens of the text each model scores (default: 2048; all of a shorter text).",
)
@click.option(
    "--gate",
    "gate_overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a threshold of the dtype's defaults, e.g. max_abs_diff=2e-4 or max_kl_divergence=off.",
)
@device_option
def verify(
    model_dir,
    checkpoint,
    repo_id,
    revision,
    tokenizer,
    report_path,
    prompts,
    eval_text,
    max_new_tokens,
    perplexity_tokens,
    gate_overrides,
    device,
):
    """Check that a converted model DIR (or --repo-id at --revision) behaves like the training CHECKPOINT.

    Loads the model the way users do (trust_remote_code, fresh remote-code cache) and checks logits parity,
    perplexity, greedy and sampled generation, pipeline() and the remote code's imports. Writes
    verification.json and verification.md, prints the summary (and appends it to $GITHUB_STEP_SUMMARY).
    Exits 1 naming each failed gate on its own line.

    \b
    Examples:
        release verify dist/v1.2.0/model --checkpoint ckpt.pt --tokenizer ./tokenizer
        release verify --repo-id me/tiny-gpt --revision v1.2.0 --checkpoint ckpt.pt
    """
    from release.github import append_summary
    from release.settings import load_settings
    from release.verify.runner import default_report_path, verify_model

    if (model_dir is None) == (repo_id is None):
        raise UsageError("give either DIR or --repo-id")
    if revision is not None and repo_id is None:
        raise UsageError("--revision needs --repo-id")
    overrides = {}
    for item in gate_overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--gate")
        overrides[name.strip()] = value.strip()
    settings = load_settings(
        overrides={
            "tokenizer": tokenizer,
            "prompts": list(prompts) or None,
            "eval_text": str(eval_text) if eval_text else None,
            "max_new_tokens": max_new_tokens,
            "device": device,
        }
    )
    model = repo_id if repo_id is not None else model_dir
    report_path = report_path or default_report_path(model)
    report = verify_model(
        model,
        checkpoint=checkpoint,
        revision=revision,
        prompts=settings.prompts,
        eval_text=Path(settings.eval_text) if settings.eval_text else None,
        gates=overrides or None,
        max_new_tokens=settings.max_new_tokens,
        report_path=report_path,
        tokenizer=tokenizer,
        settings_tokenizer=settings.tokenizer,
        device=settings.device,
        **({"perplexity_tokens": perplexity_tokens} if perplexity_tokens is not None else {}),
    )
    summary = report.markdown()
    click.echo(summary)
    append_summary(summary)
    if not report.passed:
        raise VerificationError(
            f"verification failed: {len(report.failures)} of {len(report.gates)} gates; report: {report_path}",
            report.failures,
        )
    click.echo(f"Verification passed: {report_path}")


@main.command()
@click.argument("model")
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--revision", help="Branch, tag or commit when MODEL is a Hub repo id.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 = greedy."
)
@click.option("--top-k", type=click.IntRange(min=1), help="Sample from the K likeliest tokens.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
def generate(model, prompt, revision, max_new_tokens, temperature, top_k, seed):
    """Continue --prompt with MODEL (a folder or a Hub repo id), loaded the way users load it.

    \b
    Examples:
        release generate dist/v1.2.0/model --prompt "The Fox"
        release generate me/tiny-gpt --revision v1.2.0 --prompt "Once upon a time" --temperature 0.8 --top-k 40
    """
    from release.verify.runner import generate_text

    click.echo(
        generate_text(
            model,
            prompt=prompt,
            revision=revision,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
        )
    )


@main.command()
@click.argument("model", metavar="DIR|REPO_ID")
@click.option(
    "--revision",
    help="With a Hub REPO_ID: the tag or commit to check; 'latest' (the default): the newest release tag.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, exists=True),
    help="The training checkpoint DIR was converted from: adds its logits; needed only without a report.",
)
@click.option(
    "--versions",
    envvar="RELEASE_COMPAT_VERSIONS",
    help="Comma-separated transformers versions (default: [tool.release.compat] in pyproject.toml).",
)
@click.option(
    "--all-minors",
    is_flag=True,
    help="The newest patch of every transformers minor in the supported range, from the package index.",
)
@click.option(
    "--newest", is_flag=True, help="The newest transformers release and its latest pre-release (the canary)."
)
@file_option(
    "--report",
    help="The verification.json whose recorded tokens are the reference (default: DIR/../verification.json); "
    "the results are merged into it under 'compat'.",
)
@file_option("--out", help="Write the results here instead (default for a Hub revision: ./compat.json).")
@cache_dir_option(
    help="Environment cache (default: $RELEASE_CACHE_DIR/compat, else ~/.cache/custom-transformer-release/compat)."
)
@device_option
def compat(model, revision, checkpoint, versions, all_minors, newest, report, out, cache_dir, device):
    """Check the converted folder DIR (or a Hub revision) on each transformers version of the matrix.

    Each version runs in its own cached environment (reusing this torch) and must load the model with
    trust_remote_code, give verification.json's recorded greedy tokens teacher-forced and by generate(),
    alone and in a left-padded batch (and, with --checkpoint, the training module's logits within the
    float32 gates). Exits 1 naming each failing version and stage.

    \b
    Examples:
        release compat dist/v1.0.0/model --versions 4.46.3,5.24.0
        release compat dist/v1.0.0/model --all-minors
        release compat me/tiny-gpt --revision latest --report verification.json --newest
    """
    from release.compat.matrix import parse_versions
    from release.compat.run import run_compat
    from release.settings import load_settings

    outcome = run_compat(
        model,
        revision=revision,
        checkpoint=checkpoint,
        report=report,
        out=out,
        versions=parse_versions(versions) if versions else None,
        all_minors=all_minors,
        newest=newest,
        cache_dir=cache_dir,
        on_result=lambda r: click.echo(r.summary_line(), err=True),
        device=load_settings(overrides={"device": device}).device,
    )
    result, path = outcome.report, outcome.written
    where = f"{model}@{outcome.revision}: " if outcome.revision else ""
    if not result.passed:
        failed = len([r for r in result.results if not r.passed])
        raise VerificationError(
            f"{where}{failed} of {len(result.results)} transformers versions failed (see {path})",
            result.failures,
        )
    click.echo(f"{where}{result.statement} (supported: {result.range}); {path}")


@main.command("compat-versions")
@click.option("--all-minors", is_flag=True, help="The newest patch of every minor in the supported range.")
@click.option("--newest", is_flag=True, help="The newest release and its latest pre-release.")
def compat_versions(all_minors, newest):
    """Print the transformers versions `release compat` would test, as a JSON list (for a CI matrix).

    \b
    Examples:
        release compat-versions                 # [tool.release.compat] in pyproject.toml
        release compat-versions --all-minors    # from the package index
    """
    from release.compat.matrix import default_versions
    from release.compat.run import select_versions

    chosen, _ = select_versions(all_minors=all_minors, newest=newest)
    click.echo(json.dumps(chosen if chosen is not None else default_versions()))


@main.command("compat-tag")
@repo_id_option()
def compat_tag(repo_id):
    """Print the newest published release tag of the model repo (what the compatibility canary checks).

    \b
    Example:
        release compat-tag --repo-id me/tiny-gpt
    """
    from release.compat.canary import newest_release_tag

    click.echo(newest_release_tag(_repo_id_or_settings(repo_id)))


@main.command("compat-issue")
@click.argument("results", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--run-url", help="Link to the workflow run (default: this Actions run, if any).")
def compat_issue(results, run_url):
    """Open, update or close the ONE compatibility canary issue from RESULTS (`release compat --out`).

    A failure opens the issue labelled compat-canary, or updates the open one; a pass closes it. Needs
    GITHUB_REPOSITORY and GH_TOKEN (the workflow's token with `issues: write`).

    \b
    Example:
        release compat-issue compat.json
    """
    from release.compat.canary import GitHubIssues, sync_canary_issue
    from release.github import run_url as actions_run_url

    outcome = sync_canary_issue(
        GitHubIssues.from_environment(), results=results, run_url=run_url or actions_run_url()
    )
    click.echo(f"canary issue: {outcome.action}" + (f" #{outcome.number}" if outcome.number else ""))


@main.command("compat-floors")
@click.option(
    "--lowest",
    multiple=True,
    required=True,
    help="A dependency to install at its declared floor (repeatable), e.g. huggingface_hub or torch.",
)
@cache_dir_option(help="Environment cache (default: the compat cache).")
@click.option("--show", is_flag=True, help="Only print NAME==FLOOR for each --lowest (e.g. to install it).")
def compat_floors(lowest, cache_dir, show):
    """Prove the declared floors: install them and run the pipeline on the demo (fetch..card, dry run).

    torch is never installed here: for --lowest torch, run this with torch==<floor> installed.

    \b
    Example:
        release compat-floors --lowest huggingface_hub
    """
    from release.compat.floors import check_floors, floor_pins

    if show:
        click.echo("\n".join(floor_pins(lowest)))
        return
    result = check_floors(lowest, cache_dir=cache_dir)
    if not result.passed:
        raise VerificationError("the declared dependency floors do not hold", [result.summary_line()])
    click.echo(result.summary_line())


@main.command("settings")
@click.option("--get", "name", help="Print only this setting's value (empty if unset).")
@click.option("--json", "as_json", is_flag=True, help="Print all effective settings as JSON.")
def settings_(name, as_json):
    """Show the effective settings (option > RELEASE_* environment > [tool.release] > default).

    \b
    Examples:
        release settings
        release settings --get checkpoint_sha256     # e.g. for a cache key in a workflow
    """
    from release.settings import load_settings

    settings = load_settings()
    if name is not None:
        click.echo(settings.value_text(name))
    elif as_json:
        click.echo(json.dumps(settings.values(), indent=2, sort_keys=True, default=str))
    else:
        click.echo("\n".join(settings.describe()))


@main.command("sign")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@existing_file_option("--key", "private_key", help="Also sign with this elliptic-curve private key (PEM).")
@click.option(
    "--sigstore",
    "keyless",
    is_flag=True,
    help="Also sign keyless with Sigstore, as this GitHub Actions job (needs `id-token: write`).",
)
@expect_digest_option
def sign(folder, private_key, keyless, expect_digest):
    """Write FOLDER/SHA256SUMS (sha256sum format, every file but itself and model.sig) and, with --key or
    --sigstore, sign the folder into FOLDER/model.sig (OpenSSF model-signing). With --expect-digest the
    build's SHA256SUMS is kept and must have that digest.

    \b
    Examples:
        release sign dist/v1.2.0/model                          # SHA256SUMS only
        release sign dist/v1.2.0/model --key signing-key.pem    # and model.sig
    """
    from release.sign import check_release_digest, release_digest, sign_folder, write_checksums

    if expect_digest is not None:  # the build's SHA256SUMS, kept: it is what the digest names
        check_release_digest(folder, expect_digest)
    else:
        click.echo(f"Wrote {write_checksums(folder)}")
    if private_key is not None or keyless:
        click.echo(f"Wrote {sign_folder(folder, private_key=private_key, keyless=keyless)}")
    click.echo(f"release digest: {release_digest(folder)}")


@main.command("verify-signature")
@click.argument("target", metavar="REPO@TAG|DIR")
@existing_file_option("--public-key", help="The signer's public key (PEM), for a release signed with --key.")
@click.option(
    "--identity",
    help="The Sigstore identity, e.g. https://github.com/OWNER/REPO/.github/workflows/release.yml@refs/tags/v1.2.0.",
)
@click.option("--issuer", help="The identity's OIDC issuer (default: GitHub Actions').")
def verify_signature(target, public_key, identity, issuer):
    """Check a release's model.sig and SHA256SUMS: a Hub revision REPO@TAG (downloaded to a temporary
    folder) or a local DIR. Exits 1 naming the first difference.

    \b
    Examples:
        release verify-signature me/tiny-gpt@v1.2.0 \\
            --identity https://github.com/me/tiny-gpt-release/.github/workflows/release.yml@refs/tags/v1.2.0
        release verify-signature ./downloaded --public-key signing-key.pub
    """
    from release.sign import GITHUB_OIDC_ISSUER, verify_folder, verify_revision

    keys = {"public_key": public_key, "identity": identity, "issuer": issuer or GITHUB_OIDC_ISSUER}
    if Path(target).is_dir():
        check = verify_folder(target, **keys)
    else:
        repo_id, sep, revision = target.rpartition("@")
        if not sep or not repo_id or not revision:
            raise UsageError(f"{target!r} is neither a folder nor REPO@TAG (e.g. me/tiny-gpt@v1.2.0)")
        with tempfile.TemporaryDirectory(prefix="release-verify-signature-") as tmp:
            check = verify_revision(repo_id, revision, download_dir=tmp, **keys)
    click.echo(
        f"Signature OK: {target}, {check.files} files as SHA256SUMS lists them, signed by {check.signer}"
    )
