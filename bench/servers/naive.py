"""The naive reference: verify the bearer token with PyJWT (RS256) on every Check.

No cache, no policy engine: a valid token is allowed, a bad one is denied with
401, no token with 403 (the answers our server gives for the bench policy).
Our server should beat this wherever tokens repeat and stay close where they
do not.

Run: python bench/servers/naive.py --grpc-address 127.0.0.1:9001 \
        --public-key key.pub.pem --issuer https://bench.example
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
import jwt
from bare import serve
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from google.rpc import status_pb2

from authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

PERMISSION_DENIED = 7


def denied(http_status: int, body: str) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=PERMISSION_DENIED))
    response.denied_response.status.code = http_status  # type: ignore[assignment]
    response.denied_response.body = body
    return response


OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse())
UNAUTHENTICATED = denied(401, "Jwt verification fails")
FORBIDDEN = denied(403, "RBAC: access denied")


class Naive(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, key: Any, issuer: str) -> None:
        self.key = key
        self.issuer = issuer

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> external_auth_pb2.CheckResponse:
        header = request.attributes.request.http.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return FORBIDDEN
        try:
            jwt.decode(header[7:], self.key, algorithms=["RS256"], issuer=self.issuer,
                       options={"verify_aud": False})
        except jwt.PyJWTError:
            return UNAUTHENTICATED
        return OK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-address", default="127.0.0.1:9001")
    parser.add_argument("--public-key", required=True, type=Path, help="PEM public key")
    parser.add_argument("--issuer", required=True)
    args = parser.parse_args()
    key = load_pem_public_key(args.public_key.read_bytes())
    asyncio.run(serve(args.grpc_address, Naive(key, args.issuer)))


if __name__ == "__main__":
    main()
