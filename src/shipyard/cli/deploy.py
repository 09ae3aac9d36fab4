"""``shipyard deploy docker|compose|k8s``: files that run a registered model in containers, Compose or Kubernetes.

Each command resolves the model in the registry (its flavor picks the image's extras), loads it once to
measure the cold start (``--cold-start`` skips that), writes the files and prints the commands that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shipyard.cli._output import console, err_console, handle_errors
from shipyard.cli.serve import config_option, load_settings
from shipyard.config import Settings


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.argument("model"),
        click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
                     help="Folder the files are written to (created if missing)."),
        config_option,
        click.option("--image", default="", help="Image reference. Default: shipyard-NAME:SHIPYARD_VERSION."),
        click.option("--name", default="", help="Name of the objects and services. Default: from the model name."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
                     help="REST port inside the container."),
        click.option("--grpc-port", type=click.IntRange(1, 65535), default=None,
                     help="Also serve gRPC on this port (adds the grpc extra). Default: no gRPC."),
        click.option("--insecure", is_flag=True,
                     help="Serve without credentials (security.insecure). Default: security.auth on, so "
                          "requests need an API key (shipyard keys create) or a JWT."),
        click.option("--cold-start", "cold_start", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     help="Time a new replica takes to load the model. Default: measured by loading it here."),
        click.option("--package", default="", metavar="REQUIREMENT",
                     help="pip requirement installing shipyard in the image. Default: shipyard[EXTRAS]==VERSION "
                          "(the extras the model's flavor and the settings need)."),
        click.option("--base-image", default="", help="Base image of both stages. Default: a pinned python slim."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _measure(settings: Settings, model: str, cold_start: float | None, throughput: bool = False,
             replicated: str = "") -> Any:
    """Flavor and version from the registry; cold start (and throughput) measured unless given.

    ``replicated`` names what runs several replicas: the settings are checked first, before any loading.
    """
    from shipyard.deploy import check_replicable, measure

    if replicated:
        check_replicable(settings, replicated)
    measured = measure(settings, model, cold_start=cold_start, throughput=throughput)
    if cold_start is not None:
        return measured
    err_console.print(f"{model} is version {measured.version} ({measured.flavor}); it loaded in "
                      f"{measured.cold_start_seconds:.2f} s here")
    return measured


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v not in ("", None)}


def _report(generated: Any) -> None:
    console.print(f"wrote {len(generated.files)} files to {generated.out}")
    for path in generated.files:
        console.print(f"  {path}")
    if generated.commands:
        console.print("then run:")
        for command in generated.commands:
            console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
    for note in generated.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)


@click.group()
def deploy() -> None:
    """Files that run a registered model elsewhere: an image, a Compose project, Kubernetes manifests.

    \b
    shipyard deploy docker fraud@champion --out deploy/docker
    shipyard deploy compose fraud@champion --out deploy/compose --with postgres,prometheus
    shipyard deploy k8s fraud@champion --out deploy/k8s --replicas 3 --image registry.example/fraud:1

    The registry URL never goes into a file: containers read SHIPYARD_REGISTRY_URL from their
    environment (Kubernetes: from a Secret). Kubernetes, and Compose with --replicas above 1,
    refuse the embedded defaults that keep state on one machine (SQLite registry, local artifact
    folder, the local:// broker), naming the setting to change.
    """


@deploy.command(short_help="A multi-stage Dockerfile, .dockerignore and the build and run commands.")
@_common
@click.pass_context
@handle_errors
def docker(ctx: click.Context, /, model: str, out: Path, config_file: Path | None, cold_start: float | None,
           **options: Any) -> None:
    """Write a Dockerfile for `shipyard serve MODEL` to OUT.

    Two stages on one pinned base: the first installs shipyard with the extras the model needs into a
    virtual environment, the second copies it, runs as an unprivileged user, checks /v2/health/ready
    (HEALTHCHECK) and stops on SIGTERM after draining for graceful_shutdown_seconds; the run command
    gives docker a longer stop timeout. The model is read from the production registry at start.
    """
    from shipyard.deploy import build_spec, write_docker

    settings = load_settings(ctx, config_file)
    measured = _measure(settings, model, cold_start)
    _report(write_docker(build_spec(settings, model, measured, target="", replicated=False, **_given(options)), out))


@deploy.command(short_help="A Compose project: the server, optional PostgreSQL, Redis or Kafka, Prometheus.")
@_common
@click.option("--with", "services", multiple=True, metavar="SERVICE",
              help="Add postgres, redis, kafka or prometheus (repeat, or comma-separate).")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server containers; above 1 the embedded registry, artifact folder and broker are refused.")
@click.pass_context
@handle_errors
def compose(ctx: click.Context, /, model: str, out: Path, config_file: Path | None, cold_start: float | None,
            services: tuple[str, ...], replicas: int, **options: Any) -> None:
    """Write compose.yaml (with the Dockerfile it builds) for `shipyard serve MODEL` to OUT.

    --with postgres makes PostgreSQL the registry (POSTGRES_PASSWORD comes from the environment);
    redis or kafka takes asynchronous requests; prometheus scrapes every server replica.
    """
    from shipyard.deploy import build_spec, check_replicable, write_compose

    chosen = tuple(s.strip() for part in services for s in part.split(",") if s.strip())
    settings = load_settings(ctx, config_file)
    # the project's own services stand in for the settings they replace, in the check and in shipyard.yaml
    overrides: dict[str, Any] = {}
    if "postgres" in chosen:
        overrides["registry_url"] = "postgresql+psycopg://shipyard@postgres:5432/shipyard"
    for broker, port in (("redis", 6379), ("kafka", 9092)):
        if broker in chosen:
            overrides["async_broker"] = f"{broker}://{broker}:{port}/shipyard"
    target = f"{replicas} compose replicas"
    if replicas > 1:
        check_replicable(settings.replace(**overrides), target)
    measured = _measure(settings, model, cold_start)
    spec = build_spec(settings.replace(**overrides), model, measured, target=target,
                      replicated=replicas > 1, replicas=replicas, max_replicas=replicas, **_given(options))
    _report(write_compose(spec, out, chosen))


@deploy.command("k8s", short_help="Kubernetes objects, one per file, with kustomization.yaml.")
@_common
@click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True,
              help="Replicas at least (the autoscaler's minimum); above 1 adds a PodDisruptionBudget.")
@click.option("--max-replicas", type=click.IntRange(min=1), default=6, show_default=True,
              help="The autoscaler's maximum (a stream job's is also capped by --partitions).")
@click.option("--namespace", default="", help="Namespace set in kustomization.yaml. Default: none (kubectl's).")
@click.option("--target-cpu", "target_cpu_percent", type=click.IntRange(1, 100), default=70, show_default=True,
              help="CPU utilization (percent of the request) the autoscaler aims at.")
@click.option("--target-in-flight", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests in flight per pod the autoscaler aims at (shipyard_requests_in_flight).")
@click.option("--cpu", "cpu_request", default="500m", show_default=True, help="CPU request per pod.")
@click.option("--cpu-limit", default="2", show_default=True, help="CPU limit per pod.")
@click.option("--memory", "memory_request", default="512Mi", show_default=True, help="Memory request per pod.")
@click.option("--memory-limit", default="2Gi", show_default=True, help="Memory limit per pod.")
@click.option("--server/--no-server", default=True, show_default=True,
              help="Include the online server (off: only the stream or batch job).")
@click.option("--stream-source", default=None, metavar="kafka://HOST:PORT/TOPIC",
              help="Add a `shipyard stream` Deployment on this topic, scaled by a KEDA ScaledObject on its lag.")
@click.option("--stream-sink", default=None, metavar="URL", help="Where the stream job's results go.")
@click.option("--group", default=None, help="The stream job's consumer group. Default: shipyard-MODEL.")
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions of the source topic: the ScaledObject never runs more replicas.")
@click.option("--throughput", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MSG_PER_S",
              help="Messages per second one stream replica handles. Default: measured by predicting the "
                   "registration sample here (an upper bound: the broker's round trips are not counted).")
@click.option("--catch-up", type=click.FloatRange(min=1), default=30.0, show_default=True, metavar="SECONDS",
              help="A stream replica should clear its share of the lag within this: lag threshold = "
                   "throughput x catch-up.")
@click.option("--batch-input", default=None, metavar="PATH_OR_GLOB", help="Add a `shipyard batch` CronJob on this.")
@click.option("--batch-output", default=None, metavar="PATH", help="Where the batch job writes predictions.")
@click.option("--schedule", default=None, metavar="CRON", help="The batch job's schedule, e.g. '0 2 * * *'.")
@click.pass_context
@handle_errors
def k8s(ctx: click.Context, /, model: str, out: Path, config_file: Path | None, cold_start: float | None,
        server: bool, stream_source: str | None, stream_sink: str | None, group: str | None,
        partitions: int | None, throughput: float | None, catch_up: float, batch_input: str | None,
        batch_output: str | None, schedule: str | None, **options: Any) -> None:
    """Write Kubernetes manifests for MODEL to OUT: one object per file plus kustomization.yaml.

    \b
    Server: Deployment (startup/readiness probe /v2/health/ready, liveness /v2/health/live,
      non-root, read-only root file system, no capabilities, seccomp RuntimeDefault), Service
      (http, grpc), HorizontalPodAutoscaler v2 on CPU and requests in flight, PodDisruptionBudget
      (replicas > 1), ConfigMap with shipyard.yaml, ServiceMonitor, NetworkPolicy, ServiceAccount.
    Stream job (--stream-source/--stream-sink/--partitions): Deployment + KEDA ScaledObject.
    Batch job (--batch-input/--batch-output/--schedule): CronJob.
    The registry URL comes from Secret NAME-secrets (key registry-url); the command to create it is printed.
    """
    from shipyard.deploy import BatchJob, StreamJob, build_spec, write_kubernetes
    from shipyard.errors import ConfigError
    from shipyard.streams.naming import default_group

    if (stream_source is None) != (stream_sink is None) or (stream_source and partitions is None):
        raise ConfigError("a stream job needs --stream-source, --stream-sink and --partitions together")
    if len({batch_input is None, batch_output is None, schedule is None}) != 1:
        raise ConfigError("a batch job needs --batch-input, --batch-output and --schedule together")
    if not server and stream_source is None and batch_input is None:
        raise ConfigError("--no-server leaves nothing to deploy: add a stream job or a batch job")
    settings = load_settings(ctx, config_file)
    measured = _measure(settings, model, cold_start, throughput=stream_source is not None and throughput is None,
                        replicated="Kubernetes manifests")
    stream = None
    if stream_source is not None and stream_sink is not None and partitions is not None:
        rate = throughput if throughput is not None else measured.rows_per_second
        if rate is None:
            raise ConfigError("--throughput is needed: the model has no registration sample to measure it on")
        if throughput is None:
            err_console.print(f"one replica predicts about {rate:.0f} rows/s here (registration sample)")
        stream = StreamJob(stream_source, stream_sink, group or default_group(model), partitions, rate, catch_up)
    batch = BatchJob(batch_input, batch_output, schedule) if batch_input and batch_output and schedule else None
    spec = build_spec(settings, model, measured, target="Kubernetes manifests", replicated=True, stream=stream,
                      batch=batch, **_given(options))
    _report(write_kubernetes(spec, out, server=server))
