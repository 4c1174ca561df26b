"""The configuration of ``twodtm simulate``."""

from __future__ import annotations

from pydantic import Field, model_validator

from twodtm.config._base import _Strict
from twodtm.config.match import OpticsConfig


class SimulateConfig(_Strict):
    """Input of ``twodtm simulate`` (lengths in A unless stated, dose in e/A^2)."""

    template: str = Field(description="atomic model (PDB/mmCIF) or cubic MRC map")
    output: str = "twodtm-simulation"
    optics: OpticsConfig
    image_size: tuple[int, int] = Field((1024, 1024), description="(height, width), px")
    n_particles: int | None = Field(None, ge=0)
    density: float | None = Field(None, ge=0, description="particles per square um")
    dose: float = Field(30.0, gt=0)
    defocus_spread: float = Field(
        100.0, ge=0, description="per-particle defocus std, A"
    )
    gaussian_noise: float = Field(0.0, ge=0, description="extra noise std, counts/px")
    min_separation: float | None = Field(None, gt=0, description="px")
    seed: int = 0
    box_size: int | None = Field(None, ge=8, description="box of a model's map, px")
    simulation_b_factor: float = Field(
        0.0, ge=0, description="extra atom B of the model"
    )
    template_b_factor: float = Field(0.0, ge=0, description="extra B of template.mrc")
    template_resolution: float | None = Field(None, gt=0, description="low-pass, A")

    @model_validator(mode="after")
    def _one_count(self) -> SimulateConfig:
        if (self.n_particles is None) == (self.density is None):
            raise ValueError("give exactly one of n_particles (--particles) or density")
        if min(self.image_size) < 16:
            raise ValueError(f"image_size {self.image_size} is too small (>= 16 px)")
        return self

    def particle_count(self) -> int:
        """Return the particle count, given or from the density per um^2."""
        if self.n_particles is not None:
            return self.n_particles
        area_um2 = (
            self.image_size[0] * self.image_size[1] * self.optics.pixel_size**2 / 1e8
        )
        return int(round(float(self.density or 0.0) * area_um2))


__all__ = ["SimulateConfig"]
