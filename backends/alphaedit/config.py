"""AlphaEdit's settings (torch-free, so `editspec check` validates them without loading torch)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from editspec.families.locate.target_settings import LayerList, RoundSettings
from editspec.build.backend import Capabilities


# Edits only: canonical and forget blocks get a warning at their line.
CAPABILITIES = Capabilities(white_box=True, batch=True, sequential=True, reversible=True)


class AlphaEditConfig(RoundSettings):
    """AlphaEdit settings.  Defaults are chosen for SmolLM2-135M.

    Why each default: docs/methods/alphaedit.md#settings-and-why-the-defaults.
    """

    layers: LayerList = Field((4, 5, 6, 7, 8), description="Edited layers (their MLP value projections).")
    nullspace_threshold: float = Field(
        2e-2, gt=0, description="Eigenvalues of C below this count as null directions (see `threshold_mode`).")
    threshold_mode: Literal["absolute", "relative"] = Field(
        "absolute", description="`absolute`: compare eigenvalues with the threshold (the reference); "
        "`relative`: with threshold × the largest eigenvalue, robust to the statistics' scale.")
    l2: float = Field(10.0, ge=0, description="α: ridge on the projected solve (keeps it well posed).")
    tail_kl: float = Field(
        0.0, ge=0, description="Weight of a KL term at the position right after each row's whole answer, against what "
        "the unedited model says there (rome and memit default to 0.3); 0: off, alphaedit's default: with one round "
        "(`passes 1`) 0.3 cost chat efficacy on 76 zsRE edits, with `passes 2` it raised it "
        "(docs/methods/alphaedit.md#settings-and-why-the-defaults).")
    passes: int = Field(
        1, ge=1, description="Rounds of targets and solve (as memit's `passes`): each later round optimises every fact's "
        "δ again on the model the earlier rounds edited, under the same null-space projector; 1 is the paper's single "
        "round (docs/methods/alphaedit.md#settings-and-why-the-defaults).")
