"""Sampling defaults shared by `larp sample`, `larp generate` and their Python configs (no imports: the
command line reads them before torch is loaded)."""

DEFAULT_CFG_SCALE = 1.25  # the UCF-101 protocol's guidance; frame prediction has none
DEFAULT_COND_FRAMES = 5  # context frames of frame prediction, as the released model was trained
