"""`tqsim serve`: a built-in workload behind a third-party serving stack, in the foreground, for the HTTP driver."""

from __future__ import annotations

from typing import Annotated

import typer

from tqsim.cli.common import app, Debug
from tqsim.units import parse_duration


@app.command()
def serve(
    stack: Annotated[str, typer.Option("--stack", help="Serving stack: litserve.")],
    workload: Annotated[str, typer.Option("--workload", help="Workload to serve, e.g. digits-cnn.")],
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the stack forms.")] = 1,
    max_wait: Annotated[str, typer.Option("--max-wait", help="How long a batch may wait to fill, e.g. 2ms.")] = "0",
    replicas: Annotated[int, typer.Option("--replicas", help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option("--threads", help="Torch threads per worker.")] = 1,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    debug: Debug = False,
) -> None:
    """Serve a workload with a third-party stack's own batching until Ctrl-C; drive it with
    `tqsim calibrate --serving target=URL`."""
    import signal

    from tqsim.serve import require_stack

    require_stack(stack)
    max_wait_s = parse_duration(max_wait, "max-wait")
    from tqsim.serve.litserve_app import serve_litserve

    # Ctrl-C is the normal way to stop a server: the stack shuts down on KeyboardInterrupt, and the command ends
    # with exit 0 rather than the CLI's "interrupted" exit 130.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serve_litserve(workload, max_batch, max_wait_s, replicas, threads, host, port)
