"""Noise model on real micrographs: picks of a template that is not their specimen.

Searches the three real micrographs of ``shared/data`` with a 60S ribosomal subunit
(simulated from PDB 4V6X with ttsim3d), which none of them holds, and prints per
micrograph the picks above the 1-false-positive threshold and the z-score tail
against what the noise model (every correlation N(0, 1)) predicts. The model
predicts about one pick per micrograph; more means real structure (the specimen,
ice, carbon, contamination) correlates with the template, or the whitened image is
not unit-variance noise.

The micrographs are Fourier-binned to about ``--pixel-size`` A so that a coarse
full-sphere search runs in minutes on 2 cores. Their defocus is the nominal
defocus from the EPU metadata (the data README); none was fitted with CTFFIND, so
the CTF is only roughly right, which lowers true matches but leaves the noise
statistics alone. The small UCSF micrograph has no pixel size (its header's 1.0
is a placeholder); it is binned 2x and taken to be at the binned pixel size.

Usage::

    python benchmarks/real_noise.py --data ../shared/data --workdir /tmp/real_noise
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch
import yaml
from scipy import special
from ttsim3d.models import Simulator, SimulatorConfig


@dataclass(frozen=True)
class RealMicrograph:
    """One real micrograph of the shared data and what is known of its optics."""

    name: str
    file: str
    pixel_size: float | None  # None: unknown, taken to be the binned pixel size
    defocus: float  # nominal (applied) defocus, A


MICROGRAPHS = (
    RealMicrograph("falcon", "real_micrograph_epu2.9_falcon_0.667A.mrc", 0.6666, 22000),
    RealMicrograph("eftem", "real_micrograph_fei_eftem_0.854A.mrc", 0.8538, 8000),
    RealMicrograph("ucsf", "real_micrograph_small_Ucsf_stack_1142_DW.mrc", None, 15000),
)


def fourier_bin_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Downsample ``(H, W)`` by ``factor`` (>= 1) by cropping its centred DFT."""
    h, w = image.shape
    nh, nw = int(round(h / factor)) // 2 * 2, int(round(w / factor)) // 2 * 2
    dft = np.fft.fftshift(np.fft.fft2(image - image.mean()))
    top, left = h // 2 - nh // 2, w // 2 - nw // 2
    cropped = dft[top : top + nh, left : left + nw]
    return np.fft.ifft2(np.fft.ifftshift(cropped)).real.astype(np.float32)


def make_template(model: Path, pixel_size: float, box: int, path: Path) -> None:
    """Simulate the 60S map with ttsim3d straight at ``pixel_size``.

    The absolute scale does not matter to a normalised correlation, so ttsim3d runs
    at the coarse voxel size itself (in minutes and a few hundred MB).
    """
    simulator = Simulator(
        pdb_filepath=model,
        pixel_spacing=pixel_size,
        volume_shape=(box, box, box),
        simulator_config=SimulatorConfig(voltage=300.0, mtf_reference="k2_300kv"),
    )
    with torch.inference_mode():
        volume = simulator.run(device="cpu").detach().numpy().astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = pixel_size


def _config(micrograph: Path, template: Path, defocus: float, args) -> dict:
    return {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": {
            "pixel_size": args.pixel_size,
            "defocus_u": defocus,
            "defocus_v": defocus,
        },
        "defocus_search": {"enabled": False},
        "orientation_search": {
            "in_plane_step": args.step,
            "out_of_plane_step": args.step,
        },
        "output": {"directory": str(micrograph.parent / "result"), "overwrite": True},
    }


def tail_table(zscore: np.ndarray, per_pixel: float, border: int) -> pd.DataFrame:
    """Pixels above z against the noise model's ``N_pix (1 - Phi(z)^n)``."""
    inner = zscore[border:-border, border:-border] if border else zscore
    n_pix = inner.size
    rows = []
    for z in (4.0, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0):
        single = 0.5 * special.erfc(z / math.sqrt(2.0))
        expected = n_pix * -math.expm1(per_pixel * math.log1p(-single))
        rows.append(
            {"z": z, "observed": int((inner > z).sum()), "expected": float(expected)}
        )
    return pd.DataFrame(rows)


def run_one(item: RealMicrograph, data: Path, template: Path, args) -> dict:
    work = args.workdir / item.name
    work.mkdir(parents=True, exist_ok=True)
    with mrcfile.open(data / item.file, permissive=True) as mrc:
        image = np.asarray(mrc.data, dtype=np.float32)
    factor = (args.pixel_size / item.pixel_size) if item.pixel_size else 2.0
    binned = fourier_bin_image(image, factor) if factor > 1 else image
    micrograph = work / "micrograph.mrc"
    with mrcfile.new(micrograph, overwrite=True) as mrc:
        mrc.set_data(binned)
        mrc.voxel_size = args.pixel_size
    config = work / "match.yaml"
    config.write_text(yaml.safe_dump(_config(micrograph, template, item.defocus, args)))
    start = time.perf_counter()
    subprocess.run(["twodtm", "match", str(config), "--no-report"], check=True)
    subprocess.run(["twodtm", "peaks", str(work / "result")], check=True)
    seconds = time.perf_counter() - start
    result = json.loads((work / "result" / "result.json").read_text())
    per_pixel = float(
        result.get("correlations_per_pixel") or result["search_space"]["size"]
    )
    with mrcfile.open(work / "result" / "zscore.mrc") as mrc:
        zscore = np.asarray(mrc.data, dtype=np.float64)
    picks = pd.read_csv(work / "result" / "particles.csv")
    n_trials = zscore.size * per_pixel
    threshold = math.sqrt(2.0) * float(special.erfcinv(2.0 / n_trials))
    tail = tail_table(zscore, per_pixel, args.template_box // 2)
    return {
        "micrograph": item.name,
        "shape": "x".join(map(str, binned.shape)),
        "binning": round(factor, 3),
        "correlations_per_pixel": int(per_pixel),
        "threshold": round(threshold, 2),
        "picks": len(picks),
        "max_z": round(float(zscore.max()), 2),
        "seconds": round(seconds, 1),
        "tail": tail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--workdir", type=Path, default=Path("real-noise"))
    parser.add_argument("--pixel-size", type=float, default=5.0)
    parser.add_argument("--template-box", type=int, default=84)
    parser.add_argument("--step", type=float, default=12.0, help="grid step, deg")
    parser.add_argument("--only", nargs="*", default=None, help="micrograph names")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    template = args.workdir / "template_60S.mrc"
    if not template.exists():
        make_template(
            args.data / "4v6x_60S.cif", args.pixel_size, args.template_box, template
        )
    rows = []
    for item in MICROGRAPHS:
        if args.only and item.name not in args.only:
            continue
        row = run_one(item, args.data, template, args)
        print(f"\n{item.name}: z-score tail (pixels above z; noise model expects)")
        print(row.pop("tail").to_string(index=False))
        rows.append(row)
    print("\n" + pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
