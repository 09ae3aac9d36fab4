"""``shipyard ui``: the dashboard of a registry, without a model server.

It runs the server's JSON API and ``/ui`` over the registry, the prediction log and the monitoring
tables that ``shipyard serve`` processes write (the same ``SHIPYARD_HOME``, or the same database and
log sink), loading no model, following no alias and stepping no rollout. The dashboard is read-only
here: it shows no action forms (run actions with ``shipyard alias``, ``rollback`` and ``rollout``, or
from the dashboard of a server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shipyard.cli._output import console, handle_errors, setup_logging
from shipyard.cli.serve import config_option, load_settings, setting


@click.command()
@config_option
@setting("--host", name="host")
@click.option("--port", type=int, default=8765, show_default=True, help="Port of the dashboard.")
@click.pass_context
@handle_errors
def ui(ctx: click.Context, /, config_file: Path | None, port: int, **options: Any) -> None:
    """Show the dashboard of the registry (read-only) at http://HOST:PORT/ui/ until interrupted.

    Settings come from -c FILE, SHIPYARD_* variables, then these flags, as for `shipyard serve`
    (authentication included: with `security.auth` on, the page asks for a key).
    """
    from shipyard.serving.server import build_server, run_uvicorn

    settings = load_settings(ctx, config_file, port=port, **options)
    settings = settings.replace(rollout_tick_seconds=0.0, async_broker="", dashboard=True,
                                workers=1)
    setup_logging(settings.log_level, settings.log_format)
    server = build_server(settings, None, load_models=False)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    console.print(f"dashboard (read-only) at http://{host}:{settings.port}/ui/")
    run_uvicorn(server, access_log=False)
