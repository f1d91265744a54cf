"""Builds the optional C extension; all other metadata lives in pyproject.toml."""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

NO_EXTENSIONS = bool(os.environ.get("PROXY_NO_EXTENSIONS")) or sys.implementation.name != "cpython"
REQUIRE_EXTENSIONS = bool(os.environ.get("PROXY_REQUIRE_EXTENSIONS"))
CYTHON_TRACE = bool(os.environ.get("PROXY_CYTHON_TRACE"))
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, PlatformError, FileNotFoundError)


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python twin unless extensions are required."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self.skipped: list[str] = []

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            if REQUIRE_EXTENSIONS:
                raise
            self.skipped.append(ext.name)
            print(f"*** {ext.name} not built ({exc}); using the pure-Python twin", file=sys.stderr)

    def copy_extensions_to_source(self) -> None:  # --inplace / editable: skip what failed
        self.extensions = [e for e in self.extensions if e.name not in self.skipped]
        super().copy_extensions_to_source()


def ext_modules() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize  # noqa: PLC0415 - build-time only

    directives: dict[str, object] = {"language_level": "3", "embedsignature": True}
    macros: list[tuple[str, str | None]] = []
    if CYTHON_TRACE:  # line coverage of the .pyx through Cython.Coverage
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    extension = Extension(
        "proxy._fastpath",
        ["proxy/_fastpath.pyx"],
        include_dirs=["proxy"],  # the generated .c does #include "_fastpath_scan.h"
        depends=["proxy/_fastpath_scan.h", "proxy/_fastpath_scan.pxd"],  # edits rebuild
        define_macros=macros,
    )
    return cythonize([extension], compiler_directives=directives)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
