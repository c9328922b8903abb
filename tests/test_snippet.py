"""The card's code as a gate: a new user's first minutes with a release, run for real.

The card's Python block runs verbatim in a fresh Python with standard input closed, against a converted folder
(or a Hub revision) laid out as the Hub cache the snippet's repo id and revision resolve to. Tests marked
``compat`` also run it on transformers 4.46.3 (the oldest supported), in the compatibility matrix's cached
environment; the main environment is transformers 5.x.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from release.cli import main
from release.convert.folder import convert_checkpoint
from release.convert.tokenizer import DESCRIBED_FILES
from release.errors import VerificationError
from release.verify.snippet import (
    ExpectedRun,
    card_snippet,
    check_card_snippet,
    check_card_snippet_on_hub,
    extract_python_block,
    run_card_snippet,
    snippet_targets,
    stage_hub_cache,
)

REPO = "fable-lab/aesop-tiny"
VERSION = "v1.0.0"
PROMPT = "The Fox"
MAX_NEW_TOKENS = 8
OLDEST = "4.46.3"  # the oldest supported transformers (pyproject's [tool.release.compat])

# A card's code that calls AutoTokenizer without trust_remote_code.
TODAYS_SNIPPET = f'''from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id = "{REPO}"
revision = "{VERSION}"  # pin the release: its weights, tokenizer and model code

tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
model = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, trust_remote_code=True)

inputs = tokenizer("{PROMPT}", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens={MAX_NEW_TOKENS}, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
'''


def the_cards_snippet() -> str:
    """The card's code as release.card renders it today, for the same repo, version, prompt and length."""
    from release.verify.usage import usage_snippet

    verification = {"generation": {"max_new_tokens": MAX_NEW_TOKENS, "cases": [{"prompt": PROMPT}]}}
    return extract_python_block(usage_snippet(repo_id=REPO, version=VERSION, verification=verification))


def oldest_environment():
    """The matrix's 4.46.3 environment (cached): that transformers, its dependencies and this torch only."""
    from release.compat.matrix import ensure_environment

    return ensure_environment(OLDEST)[0]


@pytest.fixture
def converted(make_checkpoint, tokenizer_dir, tmp_path):
    """(fixed folder, today's folder, expected greedy run): the folder convert writes now, and the same folder
    with the training tokenizer's config files as convert copied them before (byte for byte)."""
    import torch
    from transformers import AutoTokenizer

    ckpt = make_checkpoint()
    fixed = convert_checkpoint(ckpt.path, tmp_path / "model", tokenizer=tokenizer_dir, progress=False).out_dir
    today = tmp_path / "today"
    shutil.copytree(fixed, today)
    for name in DESCRIBED_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, today / name)
    # The verified greedy run, from the training module and the training tokenizer (not from the folder).
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(PROMPT)["input_ids"]
    eos = AutoTokenizer.from_pretrained(tokenizer_dir).eos_token_id
    with torch.no_grad():
        out = ckpt.model.generate_greedy(torch.tensor([ids]), MAX_NEW_TOKENS, eos_token_id=eos)
    expected = ExpectedRun(input_ids=list(ids), new_ids=out[0, len(ids) :].tolist())
    return fixed, today, expected


def report_for(expected: ExpectedRun) -> dict:
    case = {"prompt": PROMPT, "input_ids": expected.input_ids, "candidate_ids": expected.new_ids}
    return {"generation": {"max_new_tokens": MAX_NEW_TOKENS, "cases": [case]}}


def write_card(folder: Path, code: str) -> None:
    (folder / "README.md").write_text(
        f"# A card\n\n## How to use\n\n```python\n{code}```\n", encoding="utf-8"
    )


# --------------------------------------------------------------------------- the pieces


def test_targets_are_the_repo_and_revision_the_snippet_names():
    assert snippet_targets(the_cards_snippet()) == [(REPO, VERSION)]
    literal = (
        'from transformers import AutoTokenizer\nAutoTokenizer.from_pretrained("a/b", revision="v2.0.0")\n'
    )
    assert snippet_targets(literal) == [("a/b", "v2.0.0")]


def test_the_staged_cache_resolves_the_snippets_revision_to_the_folder(converted, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    fixed, _, _ = converted
    stage_hub_cache(fixed, tmp_path / "hub", [(REPO, VERSION)])
    found = try_to_load_from_cache(REPO, "config.json", cache_dir=tmp_path / "hub", revision=VERSION)
    assert Path(found).resolve() == (fixed / "config.json").resolve()
    commit = "0123456789abcdef0123456789abcdef01234567"  # a snippet pinned to a commit: that snapshot
    stage_hub_cache(fixed, tmp_path / "pinned", [(REPO, commit)])
    found = try_to_load_from_cache(REPO, "config.json", cache_dir=tmp_path / "pinned", revision=commit)
    assert Path(found).resolve() == (fixed / "config.json").resolve()


def test_a_card_without_a_python_block_is_refused():
    with pytest.raises(VerificationError, match="no ```python block that calls from_pretrained"):
        extract_python_block("# card\n\n```bash\npip install transformers\n```\n")


def test_the_folders_card_is_preferred_to_the_template(converted):
    fixed, _, _ = converted
    assert "trust_remote_code=True)\nmodel" in card_snippet(fixed)  # no README.md yet: the template's
    write_card(fixed, TODAYS_SNIPPET)
    assert card_snippet(fixed) == TODAYS_SNIPPET


# --------------------------------------------------------------------------- today's folder fails, the fix passes


def test_todays_card_stops_at_the_remote_code_prompt_on_5x(converted):
    _, today, expected = converted
    result = run_card_snippet(TODAYS_SNIPPET, today, expected=expected)
    line = "card snippet line 6 (`tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)`)"
    assert f"{line}: asks for input: 'Do you wish to run the custom code? [y/N]'" in result.failures
    assert any(
        f.startswith(f"{line}: transformers warns: You are using a model of type `custom_transformer`")
        for f in result.failures
    ), result.failures


def test_on_5x_the_prompt_is_the_snippets_to_fix(converted):
    """Evidence for where the 5.x fix belongs: with today's tokenizer files, the card's code passes once it
    passes trust_remote_code=True to AutoTokenizer (nothing in the tokenizer files stops 5.x reading config.json)."""
    _, today, expected = converted
    result = run_card_snippet(the_cards_snippet(), today, expected=expected)
    assert result.passed, result.failures


@pytest.mark.compat
def test_todays_folder_fails_on_4_46_with_token_type_ids(converted):
    fixed, today, expected = converted
    for code in (TODAYS_SNIPPET, the_cards_snippet()):  # the snippet's fix alone does not help on 4.x
        result = run_card_snippet(code, today, expected=expected, python=oldest_environment().python)
        assert len(result.failures) == 1, result.failures
        assert result.failures[0].startswith(
            "card snippet line 10 (`output = model.generate(**inputs, max_new_tokens=8, do_sample=False)`): "
            "ValueError: The following `model_kwargs` are not used by the model: ['token_type_ids']"
        )
    # Today's card on the fixed folder: 4.x does not read config.json in AutoTokenizer, so no prompt there.
    assert run_card_snippet(
        TODAYS_SNIPPET, fixed, expected=expected, python=oldest_environment().python
    ).passed


def test_the_fixed_folder_and_card_run_silently_with_the_verified_tokens(converted):
    fixed, _, expected = converted
    result = run_card_snippet(the_cards_snippet(), fixed, expected=expected)
    assert result.passed, result.failures
    assert result.new_ids == expected.new_ids
    assert not [w for w in result.warnings if "transformers" in w.lower() or "model of type" in w]


@pytest.mark.compat
def test_the_fixed_folder_and_card_pass_on_4_46(converted):
    fixed, _, expected = converted
    result = run_card_snippet(
        the_cards_snippet(), fixed, expected=expected, python=oldest_environment().python
    )
    assert result.passed, result.failures
    assert result.new_ids == expected.new_ids


@pytest.mark.compat
def test_the_matrix_runs_the_card_per_version(converted):
    from release.compat.run import card_snippet_check

    fixed, today, expected = converted
    write_card(fixed, the_cards_snippet())
    write_card(today, the_cards_snippet())
    check = card_snippet_check(report_for(expected))
    env = oldest_environment()
    assert check(OLDEST, env, fixed) is None
    problem = check(OLDEST, env, today)
    assert problem is not None and "token_type_ids" in problem


@pytest.mark.compat
def test_the_compat_matrix_fails_todays_folder_at_the_snippet_stage(converted, tmp_path):
    from release.compat.matrix import run_compat_matrix
    from release.compat.run import card_snippet_check

    _, today, expected = converted
    write_card(today, the_cards_snippet())
    report = run_compat_matrix(
        today,
        checkpoint=tmp_path / "ckpt.pt",
        versions=[OLDEST],
        snippet_check=card_snippet_check(report_for(expected)),
    )
    (result,) = report.results
    assert not result.passed and result.stage == "snippet", result.detail
    assert len(result.failures) == 1 and result.failures[0].startswith(
        f"transformers {OLDEST}: snippet: the card's code: card snippet line 10 (`output = model.generate("
    ), result.failures
    assert "token_type_ids" in result.failures[0]


# --------------------------------------------------------------------------- failures name the snippet's line


def test_a_hand_broken_card_fails_with_one_line_naming_the_line(converted):
    fixed, _, expected = converted
    broken = the_cards_snippet().replace('inputs = tokenizer("The Fox"', 'inputs = tokenizr("The Fox"')
    write_card(fixed, broken)
    result = check_card_snippet(fixed, report=report_for(expected))
    assert result.failures == [
        'card snippet line 9 (`inputs = tokenizr("The Fox", return_tensors="pt")`): '
        "NameError: name 'tokenizr' is not defined"
    ]


def test_a_card_that_imports_this_repo_fails_even_where_it_is_installed(converted):
    """The card must run where only transformers is: this repo's packages are refused in the child."""
    fixed, _, expected = converted
    write_card(
        fixed,
        the_cards_snippet().replace(
            "from transformers import", "import modeling\nfrom transformers import", 1
        ),
    )
    result = check_card_snippet(fixed, report=report_for(expected))  # this environment: the repo is installed
    assert len(result.failures) == 1
    assert "ModuleNotFoundError: No module named 'modeling' (blocked: the release repo" in result.failures[0]


def test_a_card_with_a_syntax_error_names_the_line(converted):
    fixed, _, expected = converted
    write_card(fixed, the_cards_snippet().replace("do_sample=False)", "do_sample=False"))
    with pytest.raises(
        VerificationError, match=r"^card snippet line 10 \(`output = model.generate\("
    ) as info:
        check_card_snippet(fixed, report=report_for(expected))
    assert "\n" not in str(info.value)


def test_tokens_that_differ_from_the_verified_run_fail(converted):
    fixed, _, expected = converted
    changed = [*expected.new_ids[:3], (expected.new_ids[3] + 1) % 384, *expected.new_ids[4:]]
    wrong = ExpectedRun(expected.input_ids, changed)
    result = run_card_snippet(the_cards_snippet(), fixed, expected=wrong)
    assert result.failures == [
        f"card snippet: greedy token 3 of {MAX_NEW_TOKENS} differs from the verified run "
        f"(verified {wrong.new_ids[3]}, got {expected.new_ids[3]})"
    ]


def test_a_prompt_the_report_never_verified_is_refused(converted):
    fixed, _, expected = converted
    write_card(fixed, the_cards_snippet().replace('"The Fox"', '"A Lion"'))
    with pytest.raises(VerificationError, match="'A Lion' is not among the verified generation cases"):
        check_card_snippet(fixed, report=report_for(expected))


# --------------------------------------------------------------------------- verify, and the Hub revision


def test_verify_without_tokenizer_after_convert_with_one(converted, tmp_path, monkeypatch):
    """`release verify DIR --checkpoint CKPT`, offline: the training tokenizer is the one convert recorded,
    the output says so, and the card_snippet gate passes."""
    fixed, _, _ = converted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = tmp_path / "ckpt.pt"  # make_checkpoint's default
    assert checkpoint.is_file()
    report_path = tmp_path / "verification.json"
    result = CliRunner().invoke(
        main, ["verify", str(fixed), "--checkpoint", str(checkpoint), "--report", str(report_path)]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((fixed / "release.json").read_text())["tokenizer"]["path"]
    assert f"Training tokenizer: `{recorded}` (from release.json)" in result.output
    report = json.loads(report_path.read_text())
    assert report["settings"]["training_tokenizer_from"] == "release.json"
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["card_snippet"]["passed"], gates["card_snippet"]["detail"]


def test_post_upload_check_runs_the_card_against_the_hub_revision(converted, hub):
    """Before the tag exists: the card's revision="v1.0.0" resolves to the staged commit's files."""
    fixed, today, expected = converted
    write_card(fixed, the_cards_snippet())
    hub.create_repo(REPO)
    sha = hub.commit(REPO, {p.name: p.read_bytes() for p in fixed.iterdir() if p.is_file()})
    assert check_card_snippet_on_hub(REPO, revision=sha, report=report_for(expected)).passed
    write_card(today, TODAYS_SNIPPET)
    bad = hub.commit(REPO, {p.name: p.read_bytes() for p in today.iterdir() if p.is_file()})
    result = check_card_snippet_on_hub(REPO, revision=bad, report=report_for(expected))
    assert any("asks for input" in f for f in result.failures), result.failures


SLOW_SNIPPET = """import time
from transformers import AutoModelForCausalLM
repo = "me/slow"
time.sleep(300)
AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
"""


def test_a_started_snippet_leaves_no_child_behind(tmp_path, monkeypatch):
    """verify starts the card's code beside its candidate half: a verify that stops early, or a snippet that
    outlives its timeout, must not leave the child running."""
    import subprocess

    import release.verify.snippet as snippet

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    children = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        children.append(real_popen(*args, **kwargs))
        return children[-1]

    monkeypatch.setattr(snippet.subprocess, "Popen", popen)
    with snippet.started_card_snippet(SLOW_SNIPPET, folder):
        assert children[0].poll() is None  # running while the caller works
    assert children[0].poll() is not None  # stopped and reaped on leaving
    with snippet.started_card_snippet(SLOW_SNIPPET, folder, timeout=1) as finish:
        result = finish(None)
    assert result.failures == ["card snippet: did not finish within 1s"]
    assert children[1].poll() is not None
