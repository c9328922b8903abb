"""Run a model card's snippet verbatim and record what happened: the child of ``release.verify.snippet``.

Usage: ``python -E -P release/verify/without_repo.py release/verify/snippet_child.py SNIPPET.py RESULT.json``.
Started by path in the interpreter under test, where this project may not be installed: standard library only.
Standard input is closed; ``input()`` is replaced by one that records what was asked and raises ``EOFError``, as
closed standard input does. Warnings (``logging`` of transformers, ``warnings``) are recorded with the snippet's
line. The result JSON holds the error (type and first line) and its snippet line, the prompts, the warnings,
and the prompt's ids and the new token ids read from the snippet's ``inputs`` and ``output``.
"""

import builtins
import json
import logging
import runpy
import sys
import traceback
import warnings


class Recorder:
    """What the snippet did, keyed by the line of the snippet (``path``) it happened on."""

    def __init__(self, path):
        self.path = path
        self.result = {
            "error": None,
            "error_line": None,
            "prompts": [],
            "warnings": [],
            "input_ids": None,
            "new_ids": None,
        }

    def snippet_line(self, frames):
        lines = [f.lineno for f in frames if f.filename == self.path]
        return lines[-1] if lines else None

    def closed_input(self, prompt=""):
        self.result["prompts"].append(
            {"text": str(prompt), "line": self.snippet_line(traceback.extract_stack())}
        )
        sys.stdout.write(str(prompt))
        sys.stdout.flush()
        raise EOFError("EOF when reading a line (standard input is closed)")

    def warning(self, text, source):
        line = self.snippet_line(traceback.extract_stack())
        self.result["warnings"].append({"text": text, "line": line, "source": source})


class _LogRecord(logging.Handler):
    def __init__(self, recorder):
        super().__init__(logging.WARNING)
        self.recorder = recorder

    def emit(self, record):
        self.recorder.warning(record.getMessage(), record.name)


def main(snippet, result_path):
    recorder = Recorder(snippet)
    builtins.input = recorder.closed_input
    logging.getLogger("transformers").addHandler(_LogRecord(recorder))
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        recorder.warning(f"{category.__name__}: {message}", "warnings")
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    namespace = {}
    try:
        namespace = runpy.run_path(snippet, run_name="__main__")
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from the card's code are findings too
        text = str(exc).strip().splitlines()
        recorder.result["error"] = type(exc).__name__ + (": " + text[0] if text else "")
        recorder.result["error_line"] = recorder.snippet_line(traceback.extract_tb(exc.__traceback__))
    try:
        inputs, output = namespace.get("inputs"), namespace.get("output")
        if inputs is not None and output is not None:
            prompt = [int(t) for t in inputs["input_ids"][0].tolist()]
            recorder.result["input_ids"] = prompt
            recorder.result["new_ids"] = [int(t) for t in output[0].tolist()][len(prompt) :]
    except Exception as exc:
        recorder.result["read_error"] = f"{type(exc).__name__}: {exc}"
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(recorder.result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
