"""What the ``unfragile graph`` commands share: the target option, and where reads and writes go."""

from __future__ import annotations

import typer

DEFAULT_TARGET = "127.0.0.1:50053"
TargetOpt = typer.Option(DEFAULT_TARGET, "--target", help="MatchGraph host:port, or a comma-separated list: reads "
                         "go to the healthy ones (round robin, retried once on another), writes to the leader")


def reads(target: str):
    """Reads: spread over every healthy process in ``target`` (one, or a comma-separated list)."""
    from services.matchgraph.routing import read_stub

    return read_stub(target)


def write(target: str, call):  # type: ignore[no-untyped-def]
    """``call(stub)`` on ``target``, or on the leader among a comma-separated list of writer-capable processes
    (retried on the new leader after a takeover)."""
    from services.core.client import channel
    from services.matchgraph.routing import LeaderClient
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    if "," not in target:
        with channel(target) as ch:
            return call(pb_grpc.MatchGraphStub(ch))
    client = LeaderClient(target)
    try:
        return client.call(call)
    finally:
        client.close()


def fail(exc: Exception) -> None:
    import grpc

    if isinstance(exc, grpc.RpcError):
        typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)  # type: ignore[attr-defined]
        raise typer.Exit(1)
    if isinstance(exc, TimeoutError):  # no leader among the writers given
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    raise exc
