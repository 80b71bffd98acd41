"""The native part of tokenagent: the agent's get socket (tokenagent/daemon/_getserver.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
agent serves every request, get included, on its Python socket (docs/agent.md). It needs
OpenSSL's headers and libcrypto (Debian: libssl-dev).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tokenagent.daemon._getserver",
            ["tokenagent/daemon/_getserver.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
            libraries=["crypto", "pthread"],  # SHA-256, HMAC and HKDF from OpenSSL's libcrypto
            optional=True,
        )
    ]
)
