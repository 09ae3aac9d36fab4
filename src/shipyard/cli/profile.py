"""``shipyard profile``: show a version's reference profile, or make a new version with one from a file."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from shipyard.cli._output import console, handle_errors, settings_from, table
from shipyard.datafiles import read_data
from shipyard.registry import Registry


@click.command()
@click.argument("ref")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Rows of the model's inputs (CSV, Parquet, JSON Lines, NPY) to profile; makes a new version.")
@click.option("--alias", "alias_name", default=None, help="Also point this alias at the new version.")
@click.pass_context
@handle_errors
def profile(ctx: click.Context, ref: str, data_file: Path | None, alias_name: str | None) -> None:
    """Show the reference profile of REF, or give it a new one from --data.

    The reference profile (per-feature bins, categories, null rates, ranges and the
    prediction distribution) is what the server's drift monitor and `shipyard drift`
    compare traffic with. It is made at registration from the training data or the
    sample. Versions never change, so --data registers a new version with the same
    model files and the new profile (its parent is REF).

    \b
    shipyard profile fraud@champion                     # what fraud@champion is compared with
    shipyard profile fraud:3 --data train.parquet       # fraud:4, same model, profiled on train.parquet
    """
    reg = Registry.from_settings(settings_from(ctx))
    try:
        if data_file is not None:
            new = reg.reprofile(ref, read_data(data_file), alias=alias_name, actor=getpass.getuser())
            console.print(f"registered {new.ref}: {ref} with a reference profile of {data_file.name}")
            ref = new.ref
        mv = reg.get(ref)
        found = reg.profile(mv)
        if found is None:
            console.print(f"{mv.ref} has no reference profile: its drift is not monitored "
                          f"(give it one with: shipyard profile {mv.ref} --data FILE)")
            return
        rows = []
        for group, features in (("input", found.inputs), ("output", found.outputs)):
            for f in features:
                if f.kind == "numeric":
                    shown = f"{f.min:.4g} .. {f.max:.4g}, mean {f.mean:.4g}, std {f.std:.4g}, {len(f.counts)} bins"
                else:
                    shown = f"{len(f.categories)} categories + other"
                rows.append([group, f.name, f.kind, f.n, f.nulls, shown])
        table(f"reference profile of {mv.ref} ({found.rows} rows)", ["", "feature", "kind", "rows", "nulls", "values"],
              rows)
    finally:
        reg.close()
