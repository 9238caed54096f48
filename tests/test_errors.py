"""One exception hierarchy: everything authz raises on purpose is an ``AuthzError``.

The command line maps an ``AuthzError`` to one line and its exit code
(tests/test_cli_errors.py), so an exception class outside the hierarchy would end
in a traceback. Each class's docstring says what a user can do about it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import authz
from authz.errors import AuthzError, MissingExtraError, UsageError

# Classes that were ValueErrors before the hierarchy: callers catching ValueError
# keep working.
STILL_VALUE_ERRORS = {"ScopeError", "ConfigError", "PolicyError", "PolicyErrors", "JwtError",
                      "JwkError", "CheckError"}


def exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(authz.__path__, "authz."):
        if info.name.startswith("authz._proto"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_exception_class_is_an_authz_error_that_says_what_to_do() -> None:
    classes = exception_classes()
    names = {cls.__name__ for cls in classes}
    assert STILL_VALUE_ERRORS | {"FetchError", "ToolError", "AuthzError"} <= names
    for cls in classes:
        assert issubclass(cls, AuthzError), f"{cls.__module__}.{cls.__name__}"
        assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} has no docstring"
        assert cls.exit_code in (1, 2)
        if cls.__name__ in STILL_VALUE_ERRORS:
            assert issubclass(cls, ValueError), cls.__name__


def test_usage_errors_exit_2_and_the_rest_exit_1_unless_they_say_so() -> None:
    from authz.config import ConfigError
    from authz.policy.errors import PolicyErrors
    from authz.request.scope import ScopeError
    from authz.tools.keys import ToolError

    assert AuthzError.exit_code == 1 and ToolError.exit_code == 1
    assert UsageError.exit_code == 2
    assert ConfigError.exit_code == ScopeError.exit_code == PolicyErrors.exit_code == 2


def test_a_missing_extra_says_how_to_install_it() -> None:
    exc = MissingExtraError("otel", "--otel-endpoint", "opentelemetry.sdk")
    assert str(exc) == ("--otel-endpoint needs the optional 'otel' extra (module "
                        "opentelemetry.sdk is missing): pip install 'authz[otel]'")
    assert isinstance(exc, ImportError) and exc.name == "opentelemetry.sdk"
