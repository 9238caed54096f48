"""The ``authz`` command and ``python -m authz``.

gRPC's environment is set before the CLI imports grpc (``authz/grpc_env.py``),
which is why this entry point imports the CLI inside ``main``.
"""

import sys

from authz import grpc_env


def main() -> int:
    grpc_env.apply()
    from authz.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
