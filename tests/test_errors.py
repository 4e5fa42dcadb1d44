"""The error tree: every error has a unique code, a summary and a remedy; reports carry no secrets."""

from __future__ import annotations

import inspect

import edgecert.errors as errors_module
from edgecert.errors import ERROR_CLASSES, ConfigError, EdgecertError, FieldProblem, ThrottledError


def test_every_error_class_is_registered_with_a_unique_code() -> None:
    classes = [obj for _, obj in inspect.getmembers(errors_module, inspect.isclass) if issubclass(obj, EdgecertError)]
    assert sorted(c.__name__ for c in classes) == sorted(c.__name__ for c in ERROR_CLASSES.values())
    assert len({c.code for c in classes}) == len(classes)


def test_every_error_explains_itself() -> None:
    for code, cls in ERROR_CLASSES.items():
        assert (cls.summary and cls.summary != EdgecertError.summary) or cls is EdgecertError, code
        assert cls.default_remedy, code
        assert code == "error" or "." in code


def test_error_tree_docstring_lists_every_code() -> None:
    doc = errors_module.__doc__ or ""
    for code in ERROR_CLASSES:
        if code != "error":
            assert code in doc, f"{code} is missing from the tree in errors.py's docstring"


def test_report_shape_and_specific_remedy() -> None:
    exc = ThrottledError("Key Vault answered 429", remedy="wait", certificate="identity")
    assert exc.report() == {"code": "issue.throttled", "message": "Key Vault answered 429", "remedy": "wait"}
    assert exc.retryable
    assert str(exc) == "[identity] Key Vault answered 429"


def test_config_error_lists_each_problem() -> None:
    exc = ConfigError([FieldProblem("renewal.renewAt", "'80' is not a percentage", "write '80%'")])
    assert "renewal.renewAt: '80' is not a percentage; write '80%'" in str(exc)
    assert exc.problems[0].report() == {
        "path": "renewal.renewAt",
        "message": "'80' is not a percentage",
        "fix": "write '80%'",
    }
