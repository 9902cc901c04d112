"""TLS, mutual TLS and bearer-token roles, against a real server with generated certificates."""

from __future__ import annotations

import grpc
import pytest

from services.core.client import bearer, channel
from services.core.security import current_principal
from services.core.server import GrpcService, start_server
from services.core.settings import GrpcServerSettings

SERVICE = "test.v1.Guarded"


def _service() -> GrpcService:
    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        p = current_principal()
        return f"{p.name}:{p.role}".encode()

    def add(_servicer: object, server: grpc.Server) -> None:
        ident = lambda b: b  # noqa: E731 - identity serializer for a raw-bytes test method
        handlers = {m: grpc.unary_unary_rpc_method_handler(whoami, ident, ident) for m in ("Read", "Admin")}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    return GrpcService(name="guarded", full_name=SERVICE, servicer=None, add_to_server=add,
                       admin_methods=frozenset({"Admin"}))


def _call(ch: grpc.Channel, method: str, metadata=()) -> bytes:
    return ch.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=5, metadata=metadata)


def test_mutual_tls_accepts_trusted_client_and_refuses_others(pki):
    settings = GrpcServerSettings(host="localhost", port=0, metrics_port=-1, tls_cert_file=pki / "server.pem",
                               tls_key_file=pki / "server.key", tls_client_ca_file=pki / "ca.pem")
    srv = start_server(settings, _service())
    try:
        with channel(srv.address, root_ca=pki / "ca.pem", client_cert=pki / "client.pem",
                     client_key=pki / "client.key") as ok:
            assert _call(ok, "Read") == b"anonymous:reader"
        for cert, key in ((None, None), (pki / "rogue.pem", pki / "rogue.key")):
            with channel(srv.address, root_ca=pki / "ca.pem", client_cert=cert, client_key=key) as bad:
                with pytest.raises(grpc.RpcError) as err:
                    _call(bad, "Read")
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with channel(srv.address) as plaintext:
            with pytest.raises(grpc.RpcError):
                _call(plaintext, "Read")
    finally:
        srv.stop(0)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    tokens = d / "tokens"
    tokens.write_text("# token role name\nr-secret reader alice\na-secret admin ops\n")
    srv = start_server(GrpcServerSettings(port=0, metrics_port=-1, auth_tokens_file=tokens,
                                       allow_anonymous_reads=False), _service())
    yield srv
    srv.stop(0)


@pytest.mark.parametrize(
    "method,metadata,expected",
    [
        ("Read", bearer("r-secret"), b"alice:reader"),
        ("Read", bearer("a-secret"), b"ops:admin"),
        ("Admin", bearer("a-secret"), b"ops:admin"),
        ("Read", (), grpc.StatusCode.UNAUTHENTICATED),
        ("Admin", (), grpc.StatusCode.UNAUTHENTICATED),
        ("Admin", bearer("r-secret"), grpc.StatusCode.PERMISSION_DENIED),
        ("Read", bearer("wrong"), grpc.StatusCode.UNAUTHENTICATED),
        ("Read", (("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_bearer_roles(guarded, method, metadata, expected):
    with channel(guarded.address) as ch:
        if isinstance(expected, bytes):
            assert _call(ch, method, metadata) == expected
        else:
            with pytest.raises(grpc.RpcError) as err:
                _call(ch, method, metadata)
            assert err.value.code() == expected
            assert "secret" not in err.value.details()
