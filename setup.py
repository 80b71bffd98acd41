"""The native part of tokenagent: the agent's get socket (tokenagent/daemon/_getserver.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
agent serves every request, get included, on its Python socket (docs/agent.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tokenagent.daemon._getserver",
            ["tokenagent/daemon/_getserver.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
            libraries=["pthread"],
            optional=True,
        )
    ]
)
