"""Build of the optional C accelerator; everything else is in pyproject.toml.

``optional=True``: where no C compiler or Python headers exist the build only warns and
pgmigrator runs on its pure-Python decoder.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pgmigrator.protocol._speedups",
            [
                "src/pgmigrator/protocol/_speedups.c",
                "src/pgmigrator/protocol/_speedups_pump.c",
                "src/pgmigrator/protocol/_speedups_runs.c",
            ],
            depends=["src/pgmigrator/protocol/_speedups.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "pgmigrator.pipeline._copypump",
            ["src/pgmigrator/pipeline/_copypump.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
