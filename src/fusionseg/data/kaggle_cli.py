"""``fusionseg data convert-kaggle-h5`` / ``verify-kaggle-h5``: the Kaggle BraTS 2020
HDF5 slice release as BraTS-layout NIfTI cases (:mod:`fusionseg.data.kaggle_h5`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fusionseg.data.kaggle_convert import convert_kaggle_h5
from fusionseg.data.kaggle_h5 import IMAGE_CHANNELS
from fusionseg.data.kaggle_verify import verify_channel_order

_ORDER_HELP = (
    "Sequence of each H5 image channel, comma-separated (default "
    + ",".join(IMAGE_CHANNELS)
    + "; check it with `fusionseg data verify-kaggle-h5` on one case you also have as NIfTI)."
)


def convert_kaggle_h5_command(
    source: Annotated[Path, typer.Argument(help="Folder of the volume_<N>_slice_<M>.h5 files (content/data).")],
    destination: Annotated[Path, typer.Argument(help="Output folder: one BraTS-layout case folder per volume.")],
    volume: Annotated[
        Optional[list[int]], typer.Option("--volume", help="Convert only this volume number (repeatable).")
    ] = None,
    image_channels: Annotated[Optional[str], typer.Option("--image-channels", help=_ORDER_HELP)] = None,
    allow_gaps: Annotated[
        bool, typer.Option("--allow-gaps", help="Write missing slices as zeros (reported) instead of failing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite cases that already exist.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Convert the Kaggle BraTS 2020 HDF5 slice release into NIfTI case folders that
    every fusionseg command reads (slices grouped by volume, so splits are by patient;
    masks to labels 1 NCR/NET, 2 ED, 4 ET). Each case is written atomically; a rerun
    skips finished cases."""
    order = tuple(s.strip() for s in image_channels.split(",")) if image_channels else IMAGE_CHANNELS
    report = convert_kaggle_h5(
        source,
        destination,
        volumes=volume,
        overwrite=overwrite,
        allow_gaps=allow_gaps,
        image_channels=order,
        progress=progress,
    )
    console = Console(highlight=False)
    for line in report.lines():
        console.print(line, soft_wrap=True)


def verify_kaggle_h5_command(
    h5_folder: Annotated[Path, typer.Argument(help="Folder of the volume_<N>_slice_<M>.h5 files.")],
    nifti_case: Annotated[Path, typer.Argument(help="The same case as NIfTI, e.g. .../BraTS20_Training_001.")],
    volume: Annotated[
        Optional[int], typer.Option("--volume", help="H5 volume number (default: from the case folder's name).")
    ] = None,
) -> None:
    """Check the H5 image channel order against one case of the NIfTI release: the
    correlation of each H5 channel with each sequence, and the order to pass to
    convert-kaggle-h5 --image-channels when it is not the default. Exit code 1 on a
    mismatch."""
    match = verify_channel_order(h5_folder, nifti_case, volume=volume)
    console = Console(highlight=False)
    for line in match.lines():
        console.print(line, soft_wrap=True)
    if not match.matches_expected:
        raise typer.Exit(1)
