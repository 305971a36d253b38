"""The ``frx_lightning`` entry point: the hooks this adapter implements (it adds ``frx demo``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from frx_plugin.hookspecs import hookimpl

DEMO_HELP = "train a small backbone on the synthetic face world with frx attached"


@hookimpl
def frx_register_commands(register: Callable[..., None]) -> None:
    register("demo", demo_command, description=DEMO_HELP)


def demo_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``frx demo``'s options (a ``None`` default takes :data:`frx_lightning.demo.DEMO_DEFAULTS`); returns its run."""
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 12)")
    parser.add_argument("--identities", type=int, default=None, help="training identities (default 500)")
    parser.add_argument("--images-per-identity", type=int, default=None, help="training images per identity (default 20)")
    parser.add_argument("--probe-identities", type=int, default=None, help="held-out probe identities (default 400)")
    parser.add_argument("--probe-images-per-identity", type=int, default=None, help="probe images per identity (default 4)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels, divisible by 32 (default 64)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the world and the training (default 0)")
    parser.add_argument("--out", default=None, help="output folder (default ./frx-demo)")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="replace an earlier run's history, backbone, figures and report in --out (only once the new run is complete: "
                             "an interrupted or failed run leaves the earlier one whole)")
    parser.add_argument("--devices", type=int, default=None, help="CPU processes; more than 1 trains with DDP (default 1)")
    parser.add_argument("--every-n-epochs", type=int, default=None, help="analysis pass every N epochs (default 1)")
    parser.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap replicates for the intervals (default 200)")
    parser.add_argument("--two-stage", action="store_true", default=None,
                        help="also run the paper's two stages (decode embeddings into faces, read their attributes; "
                             "writes decoded.png and recovery.png) every --decode-every-n-epochs epochs")
    parser.add_argument("--decode-every-n-epochs", type=int, default=None, help="two-stage pass every N epochs (default 6)")
    parser.add_argument("--decoder-steps", type=int, default=None, help="training steps of each decoder per two-stage pass (default 200)")
    return run_demo_command


def run_demo_command(args: argparse.Namespace) -> int:
    from frx_lightning.demo import run_demo

    return run_demo(vars(args))
