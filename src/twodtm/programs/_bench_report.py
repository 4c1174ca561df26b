"""The lines ``twodtm bench`` prints for a ``benchmark.time_engine`` record."""

from __future__ import annotations

from typing import Any

from twodtm.search.clock import STAGES

__all__ = ["format_report"]


def format_report(record: dict[str, Any]) -> str:
    """Human-readable lines for a ``time_engine`` record."""
    h, w = record["image_shape"]
    stages = record["stage_ms_per_correlation"]
    lines = [
        f"device {record['device']} ({record['threads']} threads), image {h}x{w} "
        f"(searched {record['padded_shape'][0]}x{record['padded_shape'][1]}), "
        f"template {record['template_size']}, {record['orientations']} orientations x "
        f"{record['defocus_values']} defocus x {record['pixel_sizes']} pixel sizes, "
        f"batch {record['batch_size']}, template padding "
        f"{record['template_padding']:g} (slices at {record['slice_size']} px), "
        f"{record['precision']}, "
        f"{'fused' if record['fused'] else 'eager'} statistics",
        f"cross-correlations per second: {record['correlations_per_second']:.2f} "
        f"({record['correlations']} in {record['seconds']:.2f} s; "
        f"warm-up {record['warmup_seconds']:.1f} s)",
        f"FFT-only floor: {record['fft_floor_per_second']:.2f} inverse real FFTs/s; "
        f"engine is {record['floor_ratio']:.2f}x slower than the floor",
        f"paired floor: {record['paired_fft_floor_per_second']:.2f} maps/s from "
        "complex inverse FFTs of two maps each; engine is "
        f"{record['transform_floor_ratio']:.2f}x slower than the faster floor "
        f"({'paired' if record['paired_transforms'] else 'real'} transforms used)",
        "time per correlation by stage (ms): "
        + ", ".join(f"{name} {stages[name]:.2f}" for name in STAGES)
        + f"; sum {sum(stages.values()):.2f}",
        f"peak memory: {record['peak_memory_bytes'] / 2**30:.2f} GiB "
        f"({record['peak_memory_kind']})",
    ]
    return "\n".join(lines)
