"""The ``unfragile`` command: serve one service, run the stack, build models, client calls.

Each service adds its own client commands through ``services/<svc>/cli.py: register``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from services.stack import GATEWAY, OPENAI, SERVICES, Stack, member, settings_class

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

MCP = "mcp"  # the MCP server: on stdio here; over HTTP it is part of the gateway (/mcp)
app = typer.Typer(help="unfragile: gRPC model serving (Kosmos-2, Stable Diffusion) and a search match graph.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Build or inspect the offline models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects field=value, got {pair!r}")
        out[key.strip()] = value
    return out


@app.command()
def serve(
    service: str = typer.Argument(..., help="visionlanguage | diffusion | matchgraph | gateway | openai | mcp"),
    host: str | None = typer.Option(None, help="bind address"),
    port: int | None = typer.Option(None, help="gRPC port (0 = any free port)"),
    metrics_port: int | None = typer.Option(None, help="Prometheus port (-1 = off)"),
    model: str | None = typer.Option(None, help="model folder or hub id (model services)"),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    dtype: str | None = typer.Option(None, help="auto | float32 | float16 | bfloat16"),
    quantize: str | None = typer.Option(None, help='visionlanguage: "int8" (dynamic int8 on CPU)'),
    set_: list[str] = typer.Option([], "--set", help="any other settings field, as field=value"),
    help_settings: bool = typer.Option(False, "--help-settings", help="list every setting with its default and exit"),
    stdio: bool = typer.Option(False, "--stdio", help="mcp: serve one MCP session on stdin/stdout (desktop agents)"),
) -> None:
    """Serve one service until SIGTERM/Ctrl-C, then drain and exit 0 (mcp --stdio: until the client leaves)."""
    _check_service(service, stdio, help_settings)
    settings_cls = settings_class(service)
    if help_settings:
        _print_settings(service, settings_cls)
        return
    overrides: dict[str, Any] = {k: v for k, v in dict(host=host, port=port, metrics_port=metrics_port,
                                                          model=model, device=device, dtype=dtype,
                                                          quantize=quantize).items()
                                    if v is not None}
    overrides.update(_parse_sets(set_))
    unknown = sorted(set(overrides) - set(settings_cls.model_fields))
    if unknown:
        raise typer.BadParameter(f"{service} has no setting {', '.join(unknown)}; "
                                 f"`unfragile serve {service} --help-settings` lists them")
    settings = settings_cls(**overrides)
    logging.basicConfig(level=settings.log_level, format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    if service in (GATEWAY, MCP):
        _serve_http_or_stdio(settings)
        return
    if service == OPENAI:
        from services.openai.server import run as run_openai
        from services.openai.settings import Settings as OpenAISettings

        assert isinstance(settings, OpenAISettings)
        run_openai(settings)
        return
    from services.core.server import start_server
    from services.core.settings import GrpcServerSettings

    assert isinstance(settings, GrpcServerSettings)
    module = importlib.import_module(f"services.{service}.app")
    running = start_server(settings, module.build_service(settings))
    running.install_signal_handlers()
    running.wait()
    # Drained and released: exit now rather than wait seconds for torch/diffusers
    # interpreter teardown (or a stray non-daemon thread) to finish.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _check_service(service: str, stdio: bool, help_settings: bool) -> None:
    """Refuse an unknown service, and --stdio anywhere but MCP (which has no HTTP server of its own)."""
    if service not in (*SERVICES, GATEWAY, OPENAI, MCP):
        raise typer.BadParameter(f"unknown service {service!r}; choose one of "
                                 f"{', '.join([*SERVICES, GATEWAY, OPENAI, MCP])}")
    if stdio and service != MCP:
        raise typer.BadParameter("--stdio is for `unfragile serve mcp`")
    if service == MCP and not (stdio or help_settings):
        raise typer.BadParameter("MCP over streamable HTTP is served by the gateway at /mcp (`unfragile serve "
                                 "gateway`, `unfragile up`); pass --stdio to serve it on stdin/stdout")


def _serve_http_or_stdio(settings: BaseSettings) -> None:
    """The gateway (with the MCP endpoint when the mcp package is installed), or MCP on stdio."""
    from services.gateway.settings import Settings as GatewaySettings

    if not isinstance(settings, GatewaySettings):
        from services.mcp.server import run_stdio
        from services.mcp.settings import Settings as McpSettings

        assert isinstance(settings, McpSettings)
        run_stdio(settings)
        return
    from services.gateway.app import create_app
    from services.gateway.server import run

    try:
        from services.mcp.http import gateway_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "mcp":
            raise
        if settings.mcp_path:
            logging.getLogger(__name__).warning("no MCP endpoint at %s: the mcp package is not installed "
                                                "(pip install 'unfragile[mcp]')", settings.mcp_path)
        run(settings, create_app)
        return
    run(settings, gateway_app)


def _print_settings(service: str, settings_cls: type[BaseSettings]) -> None:
    """Every field of ``settings_cls``: name, type, default, description and environment variable."""
    from services.core.settings import describe

    prefix = settings_cls.model_config.get("env_prefix", "")
    typer.echo(f"{service} settings (--set field=value, or the environment variable):\n")
    for name, kind, default, doc in describe(settings_cls):
        typer.echo(f"  {name}: {kind} = {default}    [{prefix}{name.upper()}]")
        typer.echo(f"      {doc}")


@app.command()
def up(
    models_dir: Path = typer.Option(Path(".models"), help="where the tiny models live (built if missing)"),
    data_dir: Path = typer.Option(Path("var"), help="databases and fine-tuned adapters"),
    host: str = typer.Option("127.0.0.1"),
    graph_db_url: str = typer.Option("", help="MatchGraph database ('' = an SQLite file in --data-dir), "
                                     "e.g. postgresql://user@host:5432/matchgraph"),
    graph_readers: int = typer.Option(0, min=0, help="run the MatchGraph as one writer plus this many readers "
                                      "(needs a --graph-db-url every process can open: PostgreSQL)"),
    graph_writers: int = typer.Option(1, min=1, help="writer-capable MatchGraphs (PostgreSQL: one leads, the "
                                      "others stand by serving reads and take over when it dies)"),
) -> None:
    """Start all three services, the web gateway and the OpenAI-compatible API on localhost (each its own
    process, restarted when it dies) until Ctrl-C."""
    if graph_writers > 1 and not graph_db_url.startswith(("postgresql://", "postgres://")):
        raise typer.BadParameter("--graph-writers above 1 needs --graph-db-url postgresql://... (the writers elect "
                                 "their leader on PostgreSQL)")
    stack = Stack(host=host, models_dir=models_dir, data_dir=data_dir, graph_db_url=graph_db_url,
                  graph_readers=graph_readers, graph_writers=graph_writers)
    build_tiny(models_dir)
    _run_stack(stack, lambda: None)


def _run_stack(stack: Stack, after_start: Callable[[], None]) -> None:
    """Start ``stack``, run ``after_start``, then keep it running (a child that dies is restarted) until
    Ctrl-C/SIGTERM."""
    import threading

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    stop = threading.Event()
    supervising = threading.Thread(target=stack.supervise, args=(stop,), name="supervisor", daemon=True)
    try:
        stack.start()
        supervising.start()
        for p in stack.procs:
            where = stack.url(p.name) if member(p.name).http_ready else f"grpc {p.target}"
            if p.name == OPENAI:
                where = f"{stack.openai_url}/v1 (OpenAI-compatible API)"
            typer.echo(f"{p.name:21s} {where}   metrics {p.metrics_url}")
        if importlib.util.find_spec("mcp") is not None:
            typer.echo(f"{'mcp':21s} {stack.gateway_url}/mcp   (streamable HTTP; desktop agents: unfragile serve "
                       f"mcp --stdio)")
        after_start()
        typer.echo("stack is up; Ctrl-C to stop")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        typer.echo("stopping")
    except (RuntimeError, TimeoutError) as exc:  # a service could not start: say which and why, stop the rest
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        stop.set()
        if supervising.is_alive():
            supervising.join(timeout=10)
        codes = stack.stop()
        typer.echo(f"stopped: {codes}")


@app.command()
def demo(
    models_dir: Path = typer.Option(Path(".models"), help="where the tiny models live (built if missing)"),
    data_dir: Path = typer.Option(Path("var"), help="databases and fine-tuned adapters"),
    out_dir: Path = typer.Option(Path("out"), help="where the demo writes its PNG"),
    free_ports: bool = typer.Option(False, help="pick free ports instead of the defaults (tests)"),
) -> None:
    """``make run``: start the stack, seed the graph, show a caption, an image and a comparison page."""
    from services.demo import run_demo

    stack = Stack(models_dir=models_dir, data_dir=data_dir)
    if free_ports:
        stack.ports = Stack.free_ports()
    typer.echo(f"building tiny models in {models_dir} (first run only)")
    build_tiny(models_dir)
    _run_stack(stack, lambda: run_demo(stack, out_dir))


def build_tiny(out: Path, preset: str = "tiny", families: tuple[str, ...] = ("sd",)) -> dict[str, Path]:
    """Build the tiny Kosmos-2, CLIP judge and Stable Diffusion folders (one per family) under ``out`` unless present.

    A folder without the test-model marker (built before it existed) is rebuilt: same bytes plus
    the marker, so ModelInfo and the pages it feeds say the model has random weights.
    """
    from functools import partial

    from services.core.loading import is_marked_test_model
    from services.diffusion.settings import TINY_FOLDERS
    from services.diffusion.tiny import build_tiny as build_tiny_diffusion
    from services.visionlanguage.judge_tiny import build_tiny_clip
    from services.visionlanguage.tiny import build_tiny_kosmos2

    builders: list[tuple[str, Callable[..., object]]] = [("tiny-kosmos2", build_tiny_kosmos2),
                                                         ("tiny-clip", build_tiny_clip)]
    builders += [(TINY_FOLDERS[f], partial(build_tiny_diffusion, f)) for f in families]
    built = {}
    for name, fn in builders:
        folder = out / name if preset == "tiny" else out / f"{name}-{preset}"
        if not is_marked_test_model(folder):
            fn(folder, preset=preset)
        built[name] = folder
    return built


@models_app.command("build-tiny")
def build_tiny_cmd(
    out: Path = typer.Option(Path(".models"), help="output folder"),
    preset: str = typer.Option("tiny", help="tiny (tests) or bench (~25M params, for benchmarks)"),
    family: list[str] = typer.Option(["sd"], "--family", help="diffusion families to build: sd, sdxl, sd3, flux "
                                                              "(FLUX.1 [dev]), flux-schnell"),
    single_file: bool = typer.Option(False, help="also export each Stable Diffusion folder as one .safetensors "
                                                 "file (<folder>.safetensors) with its configs (<folder>-config)"),
    controls: bool = typer.Option(False, help="also build tiny control models for the families (ControlNets, "
                                              "T2I-Adapters, IP-Adapters, a depth model) under <out>/controls"),
) -> None:
    """Write tiny, randomly initialised Kosmos-2, CLIP (the quality judge) and Stable Diffusion folders in HF format."""
    from services.diffusion.settings import TINY_FOLDERS

    unknown = sorted(set(family) - set(TINY_FOLDERS))
    if unknown:
        raise typer.BadParameter(f"unknown family {', '.join(unknown)}; choose from {', '.join(TINY_FOLDERS)}")
    built = build_tiny(out, preset, tuple(dict.fromkeys(family)))
    if controls:
        from services.diffusion.tinycontrol import build_tiny_controls

        folders = {f: built[TINY_FOLDERS[f]] for f in dict.fromkeys(family)}
        made = build_tiny_controls(folders, out / "controls")
        typer.echo("controls: serve with " + " ".join(f"--set {k}={v}" for k, v in made.items()))
    for name, folder in built.items():
        typer.echo(f"{name}: {folder}")
        if single_file and name.startswith("tiny-flux"):
            typer.echo("  no single file: diffusers converts only the released FLUX.1 widths from one")
        elif single_file and name not in ("tiny-kosmos2", "tiny-clip"):
            from services.diffusion.singlefile import copy_configs, export_single_file

            file = export_single_file(folder, folder.with_name(f"{folder.name}.safetensors"))
            configs = copy_configs(folder, folder.with_name(f"{folder.name}-config"))
            typer.echo(f"  single file: {file} (--set single_file_config={configs})")


def _register_service_clis() -> None:
    for name in SERVICES:
        try:
            mod = importlib.import_module(f"services.{name}.cli")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("services."):
                continue
            raise
        mod.register(app)


_register_service_clis()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
