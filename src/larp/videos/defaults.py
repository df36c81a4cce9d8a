"""Defaults shared by the whole-video functions (`larp.videos`) and their commands, so that the Python API
and the command line behave alike. Free of torch, so that building the command-line parser stays light."""

SPATIAL_MODES = ("crop", "cover", "tile")
DEFAULT_SPATIAL = "cover"  # the shorter side resized to the model's size, tiles over the longer one
DEFAULT_BATCH = 8  # clips (windows x tiles) per forward pass
