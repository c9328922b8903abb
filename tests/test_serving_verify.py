"""release.verify.serving: the static-cache and continuous-batching checks verify and compat run on a model."""

from __future__ import annotations

import pytest

from modeling import modeling_custom_transformer as modeling
from release.verify.serving import ServingFigures, _compare, check_continuous_batching, check_static_cache
from tests.test_serving import PROMPTS, build


@pytest.fixture(scope="module")
def model():
    return build()


def test_static_cache_check(model):
    figures = check_static_cache(model, PROMPTS, new_tokens=6)
    assert figures.mode == "static_cache"
    if modeling.HAS_ATTENTION_INTERFACE:
        assert figures.available and figures.prompts == len(PROMPTS)
        assert figures.passed is True and figures.failures() == []
    else:
        assert not figures.available and figures.passed is None and "static cache" in figures.reason


def test_continuous_batching_check(model):
    figures = check_continuous_batching(model, PROMPTS, new_tokens=6)
    if hasattr(model, "generate_batch"):
        assert figures.available and figures.passed is True
    else:
        assert not figures.available and figures.passed is None and "generate_batch" in figures.reason


def test_a_difference_names_the_prompt_and_the_step():
    figures = _compare("static_cache", [[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]], new_tokens=3)
    assert isinstance(figures, ServingFigures) and figures.passed is False
    assert figures.failures() == ["static_cache: prompt 1 differs from generate() from new token 1"]
    short = _compare("continuous_batching", [[1, 2, 3]], [[1, 2]], new_tokens=3)
    assert short.first_difference == [2] and short.passed is False


def test_model_code_without_the_features_is_reported_not_failed(monkeypatch):
    model = build()
    for flag in ("_supports_attention_backend", "_supports_static_cache", "_can_compile_fullgraph"):
        monkeypatch.setattr(model, flag, False)  # what the model code of earlier releases declares
    for figures in (check_static_cache(model, PROMPTS), check_continuous_batching(model, PROMPTS)):
        assert not figures.available and figures.passed is None and figures.reason
        assert figures.failures() == []
