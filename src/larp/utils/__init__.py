"""Small helpers shared by the whole package: atomic files and JSON, device and precision, user errors,
typed configs. Nothing here imports from the rest of larp."""
