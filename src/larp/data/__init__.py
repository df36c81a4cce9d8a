"""Everything that moves pixels between files and tensors."""
