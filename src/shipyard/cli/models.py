"""``shipyard models``: list models, show a version, list versions."""

from __future__ import annotations

from typing import Any

import click

from shipyard.cli._output import console, handle_errors, print_json, settings_from, table
from shipyard.registry import Registry


def _registry(ctx: click.Context) -> Registry:
    return Registry.from_settings(settings_from(ctx))


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List registered models, or inspect one (list | show | versions)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_models)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def list_models(ctx: click.Context, as_json: bool = False) -> None:
    """Every model with its newest version and aliases."""
    reg = _registry(ctx)
    try:
        rows = reg.models()
    finally:
        reg.close()
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no models registered yet; try: shipyard quickstart")
        return
    table(None, ["name", "latest", "versions", "aliases", "created"],
          [[r["name"], r["latest"], r["versions"],
            ", ".join(f"{a}→{v}" for a, v in sorted(r["aliases"].items())), r["created_at"][:19]] for r in rows])


@models.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@click.pass_context
@handle_errors
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """One version: signature, lineage, files. REF is name, name@alias or name:VERSION."""
    reg = _registry(ctx)
    try:
        mv = reg.get(ref)
        aliases = [a for a, v in reg.aliases(mv.name).items() if v == mv.version]
    finally:
        reg.close()
    if as_json:
        print_json(dict(mv.to_dict(), aliases=aliases))
        return
    console.print(f"[bold]{mv.ref}[/]  flavor={mv.flavor}  created={mv.created_at[:19]}"
                  + (f"  aliases={', '.join(aliases)}" if aliases else ""))
    console.print(f"sha256 {mv.digest}")
    if mv.description:
        console.print(mv.description)
    sig = mv.signature
    table(f"inputs ({sig.format}; extra fields: {sig.extra_fields})", ["name", "datatype", "shape", "nan allowed"],
          [[s.name, s.datatype, list(s.shape), "yes" if s.allow_nan else "no"] for s in sig.inputs])
    table("outputs", ["name", "datatype", "shape"], [[s.name, s.datatype, list(s.shape)] for s in sig.outputs])
    meta: list[tuple[str, dict[str, Any]]] = [
        ("tags", mv.tags), ("metrics", mv.metrics), ("lineage", mv.lineage), ("packages", mv.packages),
        ("check set", mv.check_set),
    ]
    table(None, ["", ""], [[k, ", ".join(f"{a}={b}" for a, b in v.items())] for k, v in meta if v])
    table("files", ["path", "sha256"], [[p, h[:16]] for p, h in sorted(mv.files.items())])


@models.command("versions")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def versions(ctx: click.Context, name: str, as_json: bool) -> None:
    """Every version of NAME, oldest first."""
    reg = _registry(ctx)
    try:
        vs = reg.versions(name)
        aliases = reg.aliases(name)
    finally:
        reg.close()
    by_version: dict[int, list[str]] = {}
    for a, v in aliases.items():
        by_version.setdefault(v, []).append(a)
    if as_json:
        print_json([dict(v.to_dict(), aliases=by_version.get(v.version, [])) for v in vs])
        return
    table(name, ["version", "flavor", "created", "aliases", "sha256", "description"],
          [[v.version, v.flavor, v.created_at[:19], ", ".join(sorted(by_version.get(v.version, []))),
            v.digest[:12], v.description[:40]] for v in vs])
